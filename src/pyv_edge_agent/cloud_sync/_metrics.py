"""One definition of each queue metric, shared by ``get_stats()`` readers: the CLI's table,
its ``--json`` output, the Prometheus text exposition of ``cloud-sync stats`` and the
service's ``/metrics``.

Every key that ``CloudSyncQueue.get_stats()`` returns has a ``Metric`` here (a test holds
that true). A key whose value is a dict becomes one labelled sample per entry; the figures
of each destination (``get_stats()["destinations"][name]``) become one family per figure,
``cloud_sync_destination_<figure>``, with one sample per destination.
"""

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence


@dataclass(frozen=True)
class Metric:
    """How one ``get_stats()`` key is named, typed, explained and shown."""

    key: str
    kind: str  # Prometheus type: "gauge" or "counter"
    help: str
    unit: str = ""  # "bytes", "timestamp" or "seconds" picks the human rendering
    label: Optional[str] = None  # for dict-valued keys: the label of each entry
    prefix: str = "cloud_sync_"
    figures: Sequence["Metric"] = ()  # for keys whose entries are dicts: the entries' keys

    @property
    def prometheus_name(self) -> str:
        """The exposed name: the prefix + key (+ ``_total`` for counters)."""
        suffix = "_total" if self.kind == "counter" and not self.key.endswith("_total") else ""
        return f"{self.prefix}{self.key}{suffix}"


def _per_destination(key: str, kind: str, meaning: str, unit: str = "") -> Metric:
    return Metric(key, kind, meaning, unit, prefix="cloud_sync_destination_")


# The figures of one destination, ``get_stats()["destinations"][name]``.
DESTINATION_METRICS: List[Metric] = [
    _per_destination("depth", "gauge", "Items this destination still has to deliver."),
    _per_destination(
        "oldest_item_timestamp",
        "gauge",
        "Creation time of the oldest item this destination still has to deliver (Unix seconds).",
        "timestamp",
    ),
    _per_destination("in_flight", "gauge", "Items of this destination leased by a flush that is uploading them."),
    _per_destination("dead_lettered", "gauge", "This destination's items in the dead-letter table."),
    _per_destination(
        "messages_sent_today", "gauge", "Items this destination delivered since the last daily counter reset."
    ),
    _per_destination("messages_sent_total", "counter", "Items this destination delivered since it was added."),
    _per_destination(
        "failed_batches", "counter", "Uploads to this destination that failed transiently or on credentials."
    ),
    _per_destination(
        "dropped_total", "counter", "Deliveries this destination gave up to stay within its backlog budget."
    ),
    _per_destination(
        "dead_lettered_total", "counter", "Items ever moved to the dead-letter table for this destination."
    ),
    _per_destination(
        "last_success_at", "gauge", "When an upload to this destination last succeeded (Unix seconds).", "timestamp"
    ),
    _per_destination(
        "last_error", "gauge", "The last upload error of this destination (text; not exported to Prometheus)."
    ),
    _per_destination(
        "last_error_at", "gauge", "When an upload to this destination last failed (Unix seconds).", "timestamp"
    ),
    _per_destination(
        "backoff_seconds",
        "gauge",
        "Seconds left of this destination's backoff, as the process reading the file sees it.",
        "seconds",
    ),
    _per_destination("link_down", "gauge", "1 while this destination backs off after an upload that got no answer."),
]
DESTINATION_BY_KEY: Dict[str, Metric] = {metric.key: metric for metric in DESTINATION_METRICS}

METRICS: List[Metric] = [
    Metric("depth", "gauge", "Items stored in the queue, whatever their TTL or retry state."),
    Metric("oldest_item_timestamp", "gauge", "Creation time of the oldest stored item (Unix seconds).", "timestamp"),
    Metric("total_retries", "gauge", "Sum of retry counts over the stored items."),
    Metric("retrying_items", "gauge", "Stored items that have failed at least once."),
    Metric("messages_sent_today", "gauge", "Items delivered since the last daily counter reset."),
    Metric("depth_by_priority", "gauge", "Items stored, by priority.", label="priority"),
    Metric("expired", "gauge", "Stored items past their TTL, never sent."),
    Metric("in_flight", "gauge", "Items leased by a flush that is uploading them."),
    Metric("dead_lettered", "gauge", "Items in the dead-letter table."),
    Metric("messages_sent_total", "counter", "Items delivered since the queue file was made."),
    Metric("failed_batches", "counter", "Uploads that failed transiently or on credentials."),
    Metric("dead_lettered_total", "counter", "Items ever moved to the dead-letter table."),
    Metric("last_success_at", "gauge", "When an upload last succeeded (Unix seconds).", "timestamp"),
    Metric("last_error", "gauge", "The last upload error (text; not exported to Prometheus)."),
    Metric(
        "unsealed_refused_total",
        "counter",
        "Items refused unsent (dead-lettered) for not being sealed in a file that holds sealed items.",
    ),
    Metric("last_error_at", "gauge", "When an upload last failed (Unix seconds).", "timestamp"),
    # Storage and durability.
    Metric("evicted_total", "counter", "Items evicted to stay within the storage limits."),
    Metric("expired_purged_total", "counter", "Expired items deleted by purges."),
    Metric("quarantined_total", "counter", "Damaged queue files moved aside (on_corrupt=quarantine)."),
    Metric("clock_jumps_total", "counter", "Forward steps of the wall clock that stored timestamps were moved with."),
    Metric("storage_bytes", "gauge", "Size of the queue file and its WAL.", "bytes"),
    # Links that come and go.
    Metric(
        "link_bytes_per_second",
        "gauge",
        "Payload bytes a second that recent uploads carried (before compression), a moving average.",
        "bytes_per_second",
    ),
    Metric("link_items_per_second", "gauge", "Items a second that recent uploads carried, a moving average."),
    Metric(
        "rekey_unfinished",
        "gauge",
        "Items not yet sealed under the key an interrupted (or running) rekey moves them to; run rekey again.",
    ),
    # A file with destinations: each one's figures, by name.
    Metric(
        "destinations",
        "gauge",
        "The figures of each destination (see DESTINATION_METRICS).",
        label="destination",
        figures=DESTINATION_METRICS,
    ),
]
BY_KEY: Dict[str, Metric] = {metric.key: metric for metric in METRICS}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def prometheus_text(stats: Mapping[str, Any], db_path: str) -> str:
    """Render ``get_stats()`` as Prometheus text (for node_exporter's textfile collector).

    Samples carry a ``db`` label so that several queues on one host stay apart; values
    that are None (an empty queue has no oldest item) are left out.
    """
    db = _escape(db_path)
    lines: List[str] = []
    for key, value in stats.items():
        metric = BY_KEY.get(key)
        if metric is None or value is None or isinstance(value, str):
            continue
        if metric.figures:
            lines += _entry_families(metric, value, db)
            continue
        lines.append(f"# HELP {metric.prometheus_name} {metric.help}")
        lines.append(f"# TYPE {metric.prometheus_name} {metric.kind}")
        if isinstance(value, Mapping):
            for label_value, sample in value.items():
                if sample is not None:
                    lines.append(
                        f'{metric.prometheus_name}{{db="{db}",{metric.label}="{_escape(str(label_value))}"}}'
                        f" {_number(sample)}"
                    )
        else:
            lines.append(f'{metric.prometheus_name}{{db="{db}"}} {_number(value)}')
    return "\n".join(lines) + "\n"


def _entry_families(metric: Metric, entries: Mapping[str, Mapping[str, Any]], db: str) -> List[str]:
    """One family per figure of ``metric``'s entries (each destination's), one sample per
    entry, labelled with its name; figures that are None or text are left out."""
    lines: List[str] = []
    for figure in metric.figures:
        samples = [
            f'{figure.prometheus_name}{{db="{db}",{metric.label}="{_escape(str(name))}"}} {_number(values[figure.key])}'
            for name, values in entries.items()
            if values.get(figure.key) is not None and not isinstance(values[figure.key], str)
        ]
        if samples:
            lines.append(f"# HELP {figure.prometheus_name} {figure.help}")
            lines.append(f"# TYPE {figure.prometheus_name} {figure.kind}")
            lines += samples
    return lines
