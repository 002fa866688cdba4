"""The ``cloud-sync`` command (also ``python -m pyv_edge_agent.cloud_sync``).

Exit codes: 0 success; 1 the command ran but did not fully succeed (a flush stopped on a
failed batch, a check found damage); 2 bad usage (arguments, a missing database file, no
API key, an option whose extra is not installed); 3 the database cannot be used (not a
queue database, corrupt, newer schema).
"""

import argparse
import logging
import os
import signal
import threading
from typing import Any, Dict, List, Mapping, Optional

from .. import BACKEND, CloudSyncError, CloudSyncQueue, DatabaseError, MissingKeyError, Priority, QueueItem, __version__
from .._codec import FALLBACK_REASON
from .._errors import MissingExtraError
from .._metrics import BY_KEY, DESTINATION_BY_KEY, Metric, prometheus_text
from .._store.integrity import require_queue
from .._store.schema import SCHEMA_VERSION
from .._store.seal import CIPHERS, DEFAULT_CIPHER
from ..testing.ingest_server import IngestServer
from . import _connection
from ._common import (
    EXIT_DATABASE,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_destination_argument,
    one_destination,
    open_queue,
    print_json,
    show_entries,
)
from ._dead_letters_cmd import cmd_dead_letters
from ._flush_cmd import DEFAULT_KEY_ENV, DEFAULT_MQTT_PASSWORD_ENV, ENDPOINT_ENV, cmd_flush
from ._rejects_cmd import cmd_rejects
from ._render import Output, human_age, human_bytes, human_duration


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _human_value(metric: Optional[Metric], value: Any) -> str:
    unit = metric.unit if metric else ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if unit == "timestamp":
        return human_age(value)
    if unit == "bytes":
        return human_bytes(value)
    if unit == "bytes_per_second":
        return "-" if value is None else human_bytes(value) + "/s"
    if unit == "seconds":
        return human_duration(value)
    return "-" if value is None else str(value)


# -- stats, peek --------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace, out: Output) -> int:
    with open_queue(args.db, args) as queue:
        stats = queue.get_stats()
    if args.destination is not None:  # that destination's figures alone
        stats = {"destinations": {args.destination: stats["destinations"][args.destination]}}
    if args.json:
        print_json(out, stats if args.destination is None else stats["destinations"][args.destination])
    elif args.prometheus:
        out.stream.write(prometheus_text(stats, os.path.abspath(args.db)))
    else:
        _stats_tables(out, args.db, stats)
    return EXIT_OK


def _stats_tables(out: Output, db: str, stats: Mapping[str, Any]) -> None:
    """The file's figures, then each destination's, as tables of figure, value and meaning."""
    columns = ["metric", "value", "meaning"]
    per_destination: Dict[str, Dict[str, Any]] = stats.get("destinations", {})
    rows = [_stats_row(BY_KEY, key, value) for key, value in stats.items() if key != "destinations"]
    if rows:
        out.table(columns, rows, title=f"queue {db}")
    for name, figures in per_destination.items():
        rows = [_stats_row(DESTINATION_BY_KEY, key, value) for key, value in figures.items()]
        out.table(columns, rows, title=f"destination {name} of queue {db}")


def _stats_row(metrics: Mapping[str, Metric], key: str, value: Any) -> List[str]:
    metric = metrics.get(key)
    return [key, _human_value(metric, value), metric.help if metric else ""]


def _cmd_peek(args: argparse.Namespace, out: Output) -> int:
    priority = Priority[args.priority] if args.priority else None
    with open_queue(args.db, args) as queue:
        destination = one_destination(queue, args, "peek")
        items = queue.peek(n=args.n, priority=priority, destination=destination)
    headers = ["id", "priority", "age", "retries", "expires in", "payload"]

    def cells(item: QueueItem, now: float) -> List[Any]:
        return [
            human_age(item.created_at, now),
            item.retry_count,
            human_duration(item.created_at + item.ttl_seconds - now),
        ]

    title = f"next {len(items)} eligible" + ("" if destination is None else f" for {destination}")
    return show_entries(out, args.json, items, headers, title, cells, 60)


# -- flush --------------------------------------------------------------------------------


# -- purge, check -------------------------------------------------------------------------


def _cmd_purge(args: argparse.Namespace, out: Output) -> int:
    if not args.expired:
        raise UsageError("say what to purge: --expired")
    with open_queue(args.db) as queue:
        purged = queue.purge_expired()
    if args.json:
        print_json(out, {"purged_expired": purged})
    else:
        out.line(f"purged {purged} expired items")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, out: Output) -> int:
    if not os.path.exists(args.db):
        raise UsageError(f"no queue database at {args.db!r}")
    report = CloudSyncQueue.verify_file(args.db)
    if report.ok:
        require_queue(args.db)
    if args.json:
        print_json(
            out,
            {
                "ok": report.ok,
                "path": report.path,
                "schema_version": report.schema_version,
                "supported_schema_version": SCHEMA_VERSION,
                "messages": list(report.messages),
                "rekey_unfinished": report.rekey_unfinished,
            },
        )
    else:
        verdict = "ok" if report.ok else "DAMAGED"
        out.line(
            f"{report.path}: integrity {verdict}; "
            f"schema version {report.schema_version} (this release: {SCHEMA_VERSION})"
        )
        if not report.ok:
            for message in report.messages:
                out.line(f"  {message}")
        if report.rekey_unfinished:
            out.line(
                f"  a rekey was cut short: {report.rekey_unfinished} items are not yet sealed under its key"
                " (some may be plain text); run cloud-sync rekey again"
            )
    return EXIT_OK if report.ok and not report.rekey_unfinished else EXIT_INCOMPLETE


# -- rekey --------------------------------------------------------------------------------


def _cmd_rekey(args: argparse.Namespace, out: Output) -> int:
    with open_queue(args.db, args) as queue:
        count = queue.rekey()
        key_id = queue.encryption_key_id
    if args.json:
        print_json(out, {"resealed": count})
    else:
        out.line(f"re-sealed {count} items under key id {key_id!r} ({args.cipher}); the file was vacuumed")
    return EXIT_OK


# -- ingest-server ------------------------------------------------------------------------


def _cmd_ingest_server(args: argparse.Namespace, out: Output) -> int:
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env, "").strip()
        if not key:
            raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set or empty")
    record = open(args.record, "a", encoding="utf-8") if args.record else None  # noqa: SIM115 - closed below
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with IngestServer(args.port, host=args.host, api_key=key, record_to=record) as server:
            if args.fail_first:
                server.fail_next(args.fail_status, times=args.fail_first)
            if args.outage:
                server.set_outage(args.fail_status)
            out.line(f"ingest server listening on {server.url} (Ctrl-C to stop)")
            out.stream.flush()
            while not stop.wait(0.2):
                pass
            out.line(f"received {len(server.items)} items in {len(server.batches)} batches")
    finally:
        if record is not None:
            record.close()
    return EXIT_OK


# -- serve, check-config -----------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace, out: Output) -> int:
    from ..service.daemon import serve

    # A service logs each change of its state; -v adds nothing here.
    logging.getLogger().setLevel(logging.INFO)
    return serve(args.config)


def _cmd_check_config(args: argparse.Namespace, out: Output) -> int:
    from ..service.config import load
    from ..service.uploaders import build_uploaders

    config = load(args.config)
    build_uploaders(config)
    if args.json:
        print_json(out, {"ok": True, "path": args.config, "destinations": sorted(config.destinations)})
    else:
        out.line(f"{args.config}: ok; destinations {', '.join(sorted(config.destinations))}")
    return EXIT_OK


# -- demo, bench --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from ._demo import run_demo

    return EXIT_OK if run_demo(out, telemetry_items=args.items) else EXIT_INCOMPLETE


def _cmd_bench(args: argparse.Namespace, out: Output) -> int:
    from ._bench import run_bench

    results = run_bench(items=args.items, rounds=args.rounds)
    if args.json:
        print_json(out, results)
    else:
        rows = [
            [r["operation"], f"{r['cython']:,.0f}" if r["cython"] else "-", f"{r['python']:,.0f}", r["ratio"]]
            for r in results
        ]
        out.table(["operation (items/s)", "compiled", "pure Python", "compiled/pure"], rows, title="cloud-sync bench")
    return EXIT_OK


# -- parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cloud-sync``."""
    parser = argparse.ArgumentParser(
        prog="cloud-sync",
        description="Inspect and operate a pyv-edge-agent store-and-forward queue.",
        epilog=(
            "exit codes: 0 ok, 1 incomplete (a flush failed, a check found damage), "
            "2 usage (or an option whose extra is not installed), 3 unusable database"
        ),
    )
    backend = f"{BACKEND} backend" + (f": {FALLBACK_REASON}" if FALLBACK_REASON else "")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} ({backend})")
    parser.add_argument("--plain", action="store_true", help="plain text output even when rich is installed")
    parser.add_argument("-v", "--verbose", action="store_true", help="log state changes to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="store-and-forward end to end against a built-in loopback endpoint")
    demo.add_argument("--items", type=_positive_int, default=200, help="telemetry readings to queue (default 200)")
    demo.set_defaults(run=_cmd_demo)

    stats = commands.add_parser("stats", help="queue depth, retries and counters")
    stats.add_argument("db", help="the queue's SQLite file")
    fmt = stats.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="machine-readable JSON")
    fmt.add_argument("--prometheus", action="store_true", help="Prometheus text for node_exporter's textfile collector")
    add_destination_argument(stats, "only this destination's figures (default: the file's, then each destination's)")
    stats.set_defaults(run=_cmd_stats)

    peek = commands.add_parser("peek", help="the next eligible items, without removing them")
    peek.add_argument("db", help="the queue's SQLite file")
    peek.add_argument("-n", type=_positive_int, default=10, help="how many items (default 10)")
    peek.add_argument("--priority", choices=[p.name for p in Priority], type=str.upper, help="only this priority")
    peek.add_argument("--json", action="store_true", help="machine-readable JSON")
    add_destination_argument(peek, "the next items this destination would send; required")
    peek.set_defaults(run=_cmd_peek)

    flush = commands.add_parser(
        "flush",
        help="send the eligible items to an ingest endpoint or MQTT broker now",
        description="Send the items that are due now. Items that a failed upload put in a backoff wait for it "
        "(the output says when the next attempt is due); --now ends the backoff first.",
        epilog="exit codes: 0 the due items were sent (items in a backoff may wait, as the output says); "
        "1 a batch failed, or a backoff held back every stored item (nothing was sent; --now ends it); "
        "2 usage (or an option whose extra is not installed); 3 unusable database",
    )
    flush.add_argument("db", help="the queue's SQLite file")
    # Not required: the endpoint may come from the environment instead.
    target = flush.add_mutually_exclusive_group()
    target.add_argument(
        "--endpoint",
        help="the ingest URL; other users see a command line (ps, /proc), so an endpoint with a credential in it "
        f"(?code=...) belongs in --endpoint-file or the environment variable {ENDPOINT_ENV}",
    )
    target.add_argument(
        "--endpoint-file",
        metavar="PATH",
        help=f"a file holding the ingest URL (instead of --endpoint or {ENDPOINT_ENV})",
    )
    target.add_argument("--mqtt", metavar="URL", help="an MQTT broker: mqtts://HOST:8883 (TLS) or mqtt://HOST:1883")
    flush.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the key (default {DEFAULT_KEY_ENV})",
    )
    flush.add_argument("--api-key-file", help="a file holding the key (instead of the environment)")
    flush.add_argument("--timeout", type=float, default=30.0, help="seconds a whole request may take (default 30)")
    flush.add_argument("--auth-header", default="Authorization", help="e.g. X-API-Key (default: Authorization: Bearer)")
    flush.add_argument("--ca-certs", help="a CA bundle for an endpoint with a private certificate authority")
    flush.add_argument("--no-gzip", action="store_true", help="never compress request bodies")
    flush.add_argument("--max-items-per-second", type=float, help="pace the upload to this many items a second")
    flush.add_argument("--max-bytes-per-second", type=float, help="pace the upload to this many payload bytes a second")
    flush.add_argument(
        "--pacing-burst-seconds", type=float, help="seconds of either rate that may go at once (default 1)"
    )
    flush.add_argument(
        "--pace-critical", action="store_true", help="pace critical items too (default: they skip the wait)"
    )
    flush.add_argument("--max-batch-seconds", type=float, help="size batches to take about this long on the link")
    mqtt = flush.add_argument_group("MQTT (with --mqtt)")
    mqtt.add_argument("--topic", help="topic, with optional {priority} and {field} placeholders")
    mqtt.add_argument("--username", help="MQTT user name")
    mqtt.add_argument(
        "--password-env",
        default=DEFAULT_MQTT_PASSWORD_ENV,
        help=f"environment variable holding the password (default {DEFAULT_MQTT_PASSWORD_ENV})",
    )
    mqtt.add_argument("--password-file", help="a file holding the password (instead of the environment)")
    mqtt.add_argument("--client-id", help="MQTT client id (default: a random one)")
    mqtt.add_argument("--mqtt-protocol", choices=["5", "3.1.1"], default="5", help="MQTT version (default 5)")
    mqtt.add_argument(
        "--qos", type=int, choices=[0, 1], default=1, help="1: acked on PUBACK (default); 0: fire and forget"
    )
    mqtt.add_argument("--allow-insecure", action="store_true", help="permit mqtt:// to a host that is not loopback")
    flush.add_argument(
        "--now",
        action="store_true",
        help="end the backoff a failed upload set (in any process) and send the waiting items at once",
    )
    flush.add_argument("--json", action="store_true", help="machine-readable JSON")
    add_destination_argument(flush, "the destination the endpoint or broker is; required")
    _connection.add_arguments(flush)
    flush.set_defaults(run=cmd_flush)

    dead = commands.add_parser("dead-letters", help="list, requeue or drop items the endpoint refused for good")
    dead.add_argument("db", help="the queue's SQLite file")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--requeue", action="store_true", help="put them back in the queue, due now")
    action.add_argument("--drop", action="store_true", help="delete them for good")
    dead.add_argument("--ids", nargs="+", type=int, metavar="ID", help="the dead letters to requeue or drop")
    dead.add_argument("--all", action="store_true", help="with --requeue or --drop: every dead letter")
    dead.add_argument("-n", type=_positive_int, default=50, help="how many to list (default 50)")
    dead.add_argument("--json", action="store_true", help="machine-readable JSON")
    add_destination_argument(dead, "only this destination's dead letters (default: every destination's)")
    dead.set_defaults(run=cmd_dead_letters)

    rekey = commands.add_parser("rekey", help="re-seal every stored item under the newest key (encryption at rest)")
    rekey.add_argument("db", help="the queue's SQLite file")
    rekey.add_argument("--json", action="store_true", help="machine-readable JSON")
    rekey.set_defaults(run=_cmd_rekey)
    rekey.add_argument(
        "--cipher", choices=CIPHERS, default=DEFAULT_CIPHER, help=f"the cipher to seal with (default {DEFAULT_CIPHER})"
    )
    for reader in (peek, flush, dead, rekey):
        reader.add_argument(
            "--key-file",
            action="append",
            required=reader is rekey,
            metavar="PATH",
            help="a key for sealed payloads (32 bytes, hex or base64); repeat for old keys, the last one is the newest",
        )

    purge = commands.add_parser("purge", help="delete items that can no longer be sent")
    purge.add_argument("db", help="the queue's SQLite file")
    purge.add_argument("--expired", action="store_true", help="items past their TTL")
    purge.add_argument("--json", action="store_true", help="machine-readable JSON")
    purge.set_defaults(run=_cmd_purge)

    check = commands.add_parser("check", help="integrity and schema version of a queue file (read-only)")
    check.add_argument("db", help="the queue's SQLite file")
    check.add_argument("--json", action="store_true", help="machine-readable JSON")
    check.set_defaults(run=_cmd_check)

    server = commands.add_parser("ingest-server", help="run the reference ingest endpoint (demo and tests)")
    server.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    server.add_argument("--api-key-env", help="require the bearer key held in this environment variable")
    server.add_argument("--record", help="append every accepted payload to this file as a JSON line")
    server.add_argument("--fail-status", type=int, default=503, help="status for injected failures (default 503)")
    server.add_argument("--fail-first", type=int, default=0, help="fail this many requests first")
    server.add_argument("--outage", action="store_true", help="fail every request (with --fail-status)")
    server.set_defaults(run=_cmd_ingest_server)

    serve = commands.add_parser(
        "serve",
        help="run the queue as a service that local programs feed (the serve extra)",
        description="Serve the local API (Unix socket, loopback HTTP) and deliver to the configured destinations.",
    )
    serve.add_argument("--config", required=True, metavar="FILE", help="the service's TOML file")
    serve.set_defaults(run=_cmd_serve)

    check_config = commands.add_parser(
        "check-config", help="check a service's TOML file without starting it (exit 0, or 2 naming the bad key)"
    )
    check_config.add_argument("config", metavar="FILE", help="the service's TOML file")
    check_config.add_argument("--json", action="store_true", help="machine-readable JSON")
    check_config.set_defaults(run=_cmd_check_config)

    rejects = commands.add_parser(
        "rejects", help="list the MQTT messages cloud-sync serve kept because they were not JSON objects"
    )
    rejects.add_argument("file", metavar="FILE", help="the rejects file ([ingest.mqtt] rejects_path)")
    rejects.add_argument("-n", type=_positive_int, default=50, help="how many of the newest to list (default 50)")
    rejects.add_argument("--json", action="store_true", help="machine-readable JSON")
    rejects.set_defaults(run=cmd_rejects)

    bench = commands.add_parser("bench", help="a quick benchmark on this machine, compiled vs pure Python")
    bench.add_argument("--items", type=_positive_int, default=20000, help="items per scenario (default 20000)")
    bench.add_argument(
        "--rounds", type=_positive_int, default=5, help="turns each backend takes; figures are medians (default 5)"
    )
    bench.add_argument("--json", action="store_true", help="machine-readable JSON")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``cloud-sync`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="cloud-sync: %(levelname)s: %(message)s"
    )
    out = Output(plain=args.plain)
    try:
        return int(args.run(args, out))
    except UsageError as exc:
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}\n")
    except DatabaseError as exc:
        parser.exit(EXIT_DATABASE, f"cloud-sync: error: {exc}\n")
    except MissingExtraError as exc:
        # One line naming the pip install, not a traceback: the fix is the user's, not a bug.
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}\n")
    except MissingKeyError as exc:
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}; pass its key with --key-file\n")
    except (CloudSyncError, OSError, ValueError, TypeError) as exc:
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}\n")
    return EXIT_OK  # pragma: no cover - parser.exit raises
