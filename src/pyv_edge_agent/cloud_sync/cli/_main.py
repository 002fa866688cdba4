"""The ``cloud-sync`` command (also ``python -m pyv_edge_agent.cloud_sync``).

Exit codes: 0 success; 1 the command ran but did not fully succeed (a flush stopped on a
failed batch, a check found damage); 2 bad usage (arguments, a missing database file, no
API key); 3 the database cannot be used (not a queue database, corrupt, newer schema).
"""

import argparse
import logging
import os
import signal
import threading
import time
from typing import Any, List, Optional

import orjson

from .. import (
    BACKEND,
    CloudSyncError,
    CloudSyncQueue,
    DatabaseError,
    HTTPCloudUploader,
    MissingKeyError,
    Priority,
    __version__,
)
from .._metrics import BY_KEY, prometheus_text
from .._schema import SCHEMA_VERSION
from .._seal import CIPHERS, DEFAULT_CIPHER, KeyRing
from ..ingest_server import IngestServer
from ..uploader import DEFAULT_GZIP_MIN_BYTES
from ._render import Output, TrackingUploader, human_age, human_bytes, human_duration

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_DATABASE = 0, 1, 2, 3
DEFAULT_KEY_ENV = "CLOUD_SYNC_API_KEY"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class UsageError(Exception):
    """A problem with how the command was called; exits 2."""


def _open_queue(path: str, args: Optional[argparse.Namespace] = None) -> CloudSyncQueue:
    """Open an existing queue file; an operator command never creates one by mistake. The
    ``--key-file``s of a command that reads payloads open sealed ones (the last is the newest)."""
    if not os.path.exists(path):
        raise UsageError(f"no queue database at {path!r}")
    key_files = getattr(args, "key_file", None)
    if args is None or not key_files:
        return CloudSyncQueue(path)
    cipher = getattr(args, "cipher", DEFAULT_CIPHER)
    return CloudSyncQueue(path, encryption_key=KeyRing.from_files(key_files), encryption_cipher=cipher)


def _print_json(out: Output, value: Any) -> None:
    out.stream.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def _human_value(key: str, value: Any) -> str:
    metric = BY_KEY.get(key)
    unit = metric.unit if metric else ""
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    if unit == "timestamp":
        return human_age(value)
    if unit == "bytes":
        return human_bytes(value)
    if unit == "seconds":
        return human_duration(value)
    return "-" if value is None else str(value)


# -- stats, peek --------------------------------------------------------------------------


def _cmd_stats(args: argparse.Namespace, out: Output) -> int:
    with _open_queue(args.db) as queue:
        stats = queue.get_stats()
    if args.json:
        _print_json(out, stats)
    elif args.prometheus:
        out.stream.write(prometheus_text(stats, os.path.abspath(args.db)))
    else:
        rows = [
            [key, _human_value(key, value), BY_KEY[key].help if key in BY_KEY else ""] for key, value in stats.items()
        ]
        out.table(["metric", "value", "meaning"], rows, title=f"queue {args.db}")
    return EXIT_OK


def _cmd_peek(args: argparse.Namespace, out: Output) -> int:
    priority = Priority[args.priority] if args.priority else None
    with _open_queue(args.db, args) as queue:
        items = queue.peek(n=args.n, priority=priority)
    if args.json:
        _print_json(out, [item.to_dict() for item in items])
        return EXIT_OK
    now = time.time()
    rows = [
        [
            item.id,
            item.priority.name,
            human_age(item.created_at, now),
            item.retry_count,
            human_duration(item.created_at + item.ttl_seconds - now),
            _shorten(orjson.dumps(item.payload, default=str).decode(), 60),
        ]
        for item in items
    ]
    out.table(["id", "priority", "age", "retries", "expires in", "payload"], rows, title=f"next {len(items)} eligible")
    return EXIT_OK


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- flush --------------------------------------------------------------------------------


def _read_api_key(args: argparse.Namespace) -> str:
    """The key comes from a file or an environment variable, never from the command line
    (where ``ps`` and shell history would show it)."""
    if args.api_key_file:
        try:
            with open(args.api_key_file, encoding="utf-8") as handle:
                key = handle.read().strip()
        except OSError as exc:
            raise UsageError(f"cannot read the API key file: {exc}") from None
        if not key:
            raise UsageError(f"the API key file {args.api_key_file!r} is empty")
        return key
    key = os.environ.get(args.api_key_env, "").strip()
    if not key:
        raise UsageError(f"set the API key in the environment variable {args.api_key_env} or use --api-key-file")
    return key


def _cmd_flush(args: argparse.Namespace, out: Output) -> int:
    uploader = HTTPCloudUploader(
        args.endpoint,
        _read_api_key(args),
        timeout=args.timeout,
        auth_header=args.auth_header,
        ca_certs=args.ca_certs,
        gzip_min_bytes=None if args.no_gzip else DEFAULT_GZIP_MIN_BYTES,
    )
    with _open_queue(args.db, args) as queue:
        backlog = len(queue.peek(n=1_000_000))
        with out.progress("flushing", total=backlog) as advance:
            counting = TrackingUploader(uploader, advance)
            flushed = queue.maybe_flush(uploader=counting)
        left = queue.pending_count()
    uploader.close()
    result = {"flushed": flushed, "pending": left, "failed": counting.failed}
    if args.json:
        _print_json(out, result)
    else:
        status = "stopped at a failed batch; the rest stays queued" if counting.failed else "done"
        out.line(f"flushed {flushed} of {backlog} eligible items; {left} stored; {status}")
    return EXIT_INCOMPLETE if counting.failed else EXIT_OK


# -- purge, check -------------------------------------------------------------------------


def _cmd_purge(args: argparse.Namespace, out: Output) -> int:
    if not args.expired:
        raise UsageError("say what to purge: --expired")
    with _open_queue(args.db) as queue:
        purged = queue.purge_expired()
    if args.json:
        _print_json(out, {"purged_expired": purged})
    else:
        out.line(f"purged {purged} expired items")
    return EXIT_OK


def _cmd_check(args: argparse.Namespace, out: Output) -> int:
    if not os.path.exists(args.db):
        raise UsageError(f"no queue database at {args.db!r}")
    report = CloudSyncQueue.verify_file(args.db)
    if args.json:
        _print_json(
            out,
            {
                "ok": report.ok,
                "path": report.path,
                "schema_version": report.schema_version,
                "supported_schema_version": SCHEMA_VERSION,
                "messages": list(report.messages),
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
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


# -- dead-letters -------------------------------------------------------------------------


def _cmd_dead_letters(args: argparse.Namespace, out: Output) -> int:
    if (args.requeue or args.drop) and not (args.ids or args.all):
        raise UsageError("name the dead letters with --ids, or pass --all")
    if (args.ids or args.all) and not (args.requeue or args.drop):
        raise UsageError("--ids and --all go with --requeue or --drop")
    if args.ids and args.all:
        raise UsageError("give --ids or --all, not both")
    ids = None if args.all else args.ids
    with _open_queue(args.db, args) as queue:
        if args.requeue or args.drop:
            verb = "requeued" if args.requeue else "dropped"
            count = queue.requeue_dead_letters(ids) if args.requeue else queue.drop_dead_letters(ids)
            if args.json:
                _print_json(out, {verb: count})
            else:
                out.line(f"{verb} {count} dead letters")
            return EXIT_OK
        letters = queue.dead_letters(limit=args.n)
    if args.json:
        _print_json(out, [letter.to_dict() for letter in letters])
        return EXIT_OK
    now = time.time()
    rows = [
        [
            letter.id,
            letter.priority.name,
            "-" if letter.last_status is None else letter.last_status,
            _shorten(letter.last_error or "-", 40),
            human_age(letter.dead_at, now),
            _shorten(orjson.dumps(letter.payload, default=str).decode(), 40),
        ]
        for letter in letters
    ]
    out.table(
        ["id", "priority", "status", "last error", "dead since", "payload"], rows, title=f"{len(rows)} dead letters"
    )
    return EXIT_OK


# -- rekey --------------------------------------------------------------------------------


def _cmd_rekey(args: argparse.Namespace, out: Output) -> int:
    with _open_queue(args.db, args) as queue:
        count = queue.rekey()
        key_id = queue.encryption_key_id
    if args.json:
        _print_json(out, {"resealed": count})
    else:
        out.line(f"re-sealed {count} items under key id {key_id!r} ({args.cipher}); the file was vacuumed")
    return EXIT_OK


# -- ingest-server ------------------------------------------------------------------------


def _cmd_ingest_server(args: argparse.Namespace, out: Output) -> int:
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    record = open(args.record, "a", encoding="utf-8") if args.record else None  # noqa: SIM115 - closed below
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with IngestServer(args.port, host=args.host, api_key=key or None, record_to=record) as server:
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


# -- demo, bench --------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace, out: Output) -> int:
    from ._demo import run_demo

    return EXIT_OK if run_demo(out, telemetry_items=args.items) else EXIT_INCOMPLETE


def _cmd_bench(args: argparse.Namespace, out: Output) -> int:
    from ._bench import run_bench

    results = run_bench(items=args.items, rounds=args.rounds)
    if args.json:
        _print_json(out, results)
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
        epilog="exit codes: 0 ok, 1 incomplete (a flush failed, a check found damage), 2 usage, 3 unusable database",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__} ({BACKEND} backend)")
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
    stats.set_defaults(run=_cmd_stats)

    peek = commands.add_parser("peek", help="the next eligible items, without removing them")
    peek.add_argument("db", help="the queue's SQLite file")
    peek.add_argument("-n", type=_positive_int, default=10, help="how many items (default 10)")
    peek.add_argument("--priority", choices=[p.name for p in Priority], type=str.upper, help="only this priority")
    peek.add_argument("--json", action="store_true", help="machine-readable JSON")
    peek.set_defaults(run=_cmd_peek)

    flush = commands.add_parser("flush", help="send the eligible items to an ingest endpoint now")
    flush.add_argument("db", help="the queue's SQLite file")
    flush.add_argument("--endpoint", required=True, help="the ingest URL")
    flush.add_argument(
        "--api-key-env",
        default=DEFAULT_KEY_ENV,
        help=f"environment variable holding the key (default {DEFAULT_KEY_ENV})",
    )
    flush.add_argument("--api-key-file", help="a file holding the key (instead of the environment)")
    flush.add_argument("--timeout", type=float, default=30.0, help="seconds per connect and read (default 30)")
    flush.add_argument("--auth-header", default="Authorization", help="e.g. X-API-Key (default: Authorization: Bearer)")
    flush.add_argument("--ca-certs", help="a CA bundle for an endpoint with a private certificate authority")
    flush.add_argument("--no-gzip", action="store_true", help="never compress request bodies")
    flush.add_argument("--json", action="store_true", help="machine-readable JSON")
    flush.set_defaults(run=_cmd_flush)

    dead = commands.add_parser("dead-letters", help="list, requeue or drop items the endpoint refused for good")
    dead.add_argument("db", help="the queue's SQLite file")
    action = dead.add_mutually_exclusive_group()
    action.add_argument("--requeue", action="store_true", help="put them back in the queue, due now")
    action.add_argument("--drop", action="store_true", help="delete them for good")
    dead.add_argument("--ids", nargs="+", type=int, metavar="ID", help="the dead letters to requeue or drop")
    dead.add_argument("--all", action="store_true", help="with --requeue or --drop: every dead letter")
    dead.add_argument("-n", type=_positive_int, default=50, help="how many to list (default 50)")
    dead.add_argument("--json", action="store_true", help="machine-readable JSON")
    dead.set_defaults(run=_cmd_dead_letters)

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
    except MissingKeyError as exc:
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}; pass its key with --key-file\n")
    except (CloudSyncError, OSError, ValueError, TypeError) as exc:
        parser.exit(EXIT_USAGE, f"cloud-sync: error: {exc}\n")
    return EXIT_OK  # pragma: no cover - parser.exit raises
