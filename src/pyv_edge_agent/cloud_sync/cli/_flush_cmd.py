"""``cloud-sync flush``: the uploader from the options (HTTPS or MQTT), its secrets read from
files or the environment, and the flush with a progress bar."""

import argparse
import os
import sqlite3
import time
from typing import Any, Dict, Optional

from .. import HTTPCloudUploader
from .._store.integrity import read_only_uri
from ..delivery.http.uploader import DEFAULT_GZIP_MIN_BYTES
from . import _connection
from ._common import EXIT_INCOMPLETE, EXIT_OK, UsageError, one_destination, open_queue, print_json
from ._render import Output, TrackingUploader, human_duration

COUNT_ELIGIBLE_SQL = "SELECT COUNT(*) FROM sync_queue WHERE next_retry_at <= ? AND created_at + ttl_seconds > ?"
# A destination's: the unexpired items whose route has its bit and that no delivery row of
# it holds back (a retry not due, a lease).
COUNT_ELIGIBLE_FOR_SQL = (
    "SELECT COUNT(*) FROM sync_destinations AS s JOIN sync_routes AS r ON (r.destinations >> s.id) & 1"
    " JOIN sync_queue AS q ON q.id = r.item_id WHERE s.name = ?1 AND q.created_at + q.ttl_seconds > ?2"
    " AND NOT EXISTS (SELECT 1 FROM sync_deliveries AS d"
    " WHERE d.destination = s.id AND d.item_id = q.id AND d.next_retry_at > ?2)"
)
DEFAULT_KEY_ENV = "CLOUD_SYNC_API_KEY"
DEFAULT_MQTT_PASSWORD_ENV = "CLOUD_SYNC_MQTT_PASSWORD"
ENDPOINT_ENV = "CLOUD_SYNC_ENDPOINT"


def flush_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The queue options that the flush's pacing and batch flags set (the others keep their defaults)."""
    options: Dict[str, Any] = {"critical_bypasses_pacing": not args.pace_critical}
    for name in ("max_items_per_second", "max_bytes_per_second", "pacing_burst_seconds", "max_batch_seconds"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    return options


def read_api_key(args: argparse.Namespace) -> str:
    """The key comes from a file or an environment variable, never from the command line
    (where ``ps`` and shell history would show it)."""
    if args.api_key_file:
        return _connection.read_secret_file(args.api_key_file, "--api-key-file")
    key = os.environ.get(args.api_key_env, "").strip()
    if not key:
        raise UsageError(f"set the API key in the environment variable {args.api_key_env} or use --api-key-file")
    return key


def read_endpoint(args: argparse.Namespace) -> str:
    """The ingest URL from ``--endpoint``, ``--endpoint-file`` or ``CLOUD_SYNC_ENDPOINT``:
    a URL that carries a credential (``?code=``) stays out of the command line."""
    if args.endpoint:
        return str(args.endpoint)
    if args.endpoint_file:
        return _connection.read_secret_file(args.endpoint_file, "--endpoint-file").strip()
    endpoint = os.environ.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        raise UsageError(
            f"give the ingest URL with --endpoint URL, --endpoint-file PATH or the environment variable {ENDPOINT_ENV} "
            "(or an MQTT broker with --mqtt URL)"
        )
    return endpoint


def count_eligible(path: str, destination: Optional[str] = None) -> int:
    """How many items are due and unexpired (for ``destination``, in a file with
    destinations), for the progress bar: counted by SQLite, not decoded (a backlog can
    hold millions)."""
    if not os.path.exists(path):
        raise UsageError(f"no queue database at {path!r}")
    conn = sqlite3.connect(read_only_uri(path), uri=True, timeout=30.0)
    try:
        now = time.time()
        if destination is not None:
            return int(conn.execute(COUNT_ELIGIBLE_FOR_SQL, (destination, now)).fetchone()[0])
        return int(conn.execute(COUNT_ELIGIBLE_SQL, (now, now)).fetchone()[0])
    except sqlite3.Error:
        return 0  # the flush itself reports what is wrong with the file
    finally:
        conn.close()


def read_mqtt_password(args: argparse.Namespace) -> Optional[str]:
    """Like the API key: from a file or an environment variable; None when neither is set
    (a broker that takes a client certificate alone)."""
    if args.password_file:
        return _connection.read_secret_file(args.password_file, "--password-file")
    return os.environ.get(args.password_env, "").strip() or None


def mqtt_uploader(args: argparse.Namespace) -> Any:
    """An ``MQTTUploader`` from ``--mqtt mqtts://host:8883`` (TLS) or ``mqtt://host:1883``."""
    from urllib.parse import urlsplit

    from ..delivery.mqtt.uploader import MQTTUploader

    url = urlsplit(args.mqtt)
    if url.scheme not in ("mqtt", "mqtts") or not url.hostname or url.username or url.password:
        raise UsageError(
            f"--mqtt must be mqtts://HOST[:PORT] or mqtt://HOST[:PORT] without credentials, got {args.mqtt!r}"
        )
    if not args.topic:
        raise UsageError("--mqtt needs --topic")
    password = read_mqtt_password(args)
    return MQTTUploader(
        url.hostname,
        url.port or (8883 if url.scheme == "mqtts" else 1883),
        topic=args.topic,
        client_id=args.client_id,
        username=args.username,
        password=password if args.username else None,
        tls=url.scheme == "mqtts",
        ca_certs=args.ca_certs,
        client_cert=args.client_cert,
        client_key=args.client_key,
        protocol=args.mqtt_protocol,
        qos=args.qos,
        timeout=args.timeout,
        allow_insecure=args.allow_insecure,
    )


def cmd_flush(args: argparse.Namespace, out: Output) -> int:
    """``cloud-sync flush``: send the due items over HTTPS or MQTT, with a progress bar."""
    if args.mqtt:
        try:
            uploader = mqtt_uploader(args)
        except (ValueError, TypeError, ImportError) as exc:
            raise UsageError(str(exc)) from None
    else:
        credentials = _connection.credentials(args)
        uploader = HTTPCloudUploader(
            read_endpoint(args),
            read_api_key(args) if _connection.wants_api_key(args, credentials is not None) else None,
            timeout=args.timeout,
            auth_header=args.auth_header,
            ca_certs=args.ca_certs,
            gzip_min_bytes=None if args.no_gzip else DEFAULT_GZIP_MIN_BYTES,
            credentials=credentials,
            **_connection.uploader_options(args),
        )
    with open_queue(args.db, args, **flush_options(args)) as queue:
        destination = one_destination(queue, args, "flush")
        resumed = queue.retry_now(destination) if args.now else 0
        backlog = count_eligible(args.db, destination)
        with out.progress("flushing", total=backlog) as advance:
            counting = TrackingUploader.around(uploader, advance)
            flushed = queue.maybe_flush(uploader=counting, destination=destination)
        left = queue.pending_count(destination)
        due_in = queue.next_due_in(destination) if left else None
    uploader.close()
    # Items left behind that are not due: a backoff (this call's failure or an earlier one)
    # holds them. Saying "done" then would hide that nothing may have been sent at all.
    waiting = due_in is not None and due_in > 0
    result: Dict[str, Any] = {"flushed": flushed, "pending": left, "failed": counting.failed}
    if destination is not None:
        result["destination"] = destination
    if args.now:
        result["resumed"] = resumed
    if waiting:
        result["next_attempt_in"] = round(float(due_in or 0.0), 3)
    if args.json:
        print_json(out, result)
    else:
        scope = "" if destination is None else f" to {destination}"
        left_text = f"{left} stored" if destination is None else f"{left} still to deliver to it"
        out.line(
            f"flushed {flushed} of {backlog} eligible items{scope}; {left_text}; {_status(counting.failed, due_in)}"
        )
    # Exit 1 says the link is not delivering: a batch failed, or a backoff held back every
    # stored item. Some items still waiting after others went is a working link: 0.
    return EXIT_INCOMPLETE if counting.failed or (waiting and not flushed) else EXIT_OK


def _status(failed: bool, due_in: Optional[float]) -> str:
    """How the flush ended, in words: done, a failed batch, or a backoff and when it ends."""
    if due_in is not None and due_in > 0:
        when = time.strftime("%H:%M:%S", time.localtime(time.time() + due_in))
        backoff = f"backing off: the next attempt is due in {human_duration(due_in)} (at {when}); --now sends at once"
        return ("stopped at a failed batch; " if failed else "") + backoff
    return "stopped at a failed batch; the rest stays queued" if failed else "done"
