"""Workloads for the fault tests, run in forked child processes on a real queue file.

Every id a worker gets back from ``enqueue``/``enqueue_many`` goes to its journal (an
``O_APPEND`` file, one ``id<TAB>key`` line per item) right after the call returns, so a
check after the worker was killed knows every id that was handed out. Payloads carry a
unique ``key``; the ingest server records what it received by key.
"""

import os
import random
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from routing import DESTINATIONS, ROUTES, destinations_argument

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, QueueFullError

KEY = "fault-key"
# Items leased by a flusher stay hidden this long; a nack parks items for longer, so a
# nack never shortens a lease and never lets two flushers send one item at once.
LEASE_SECONDS = 30.0
PARK_SECONDS = 60.0
QUEUE_OPTIONS: Dict[str, Any] = {
    "lease_seconds": LEASE_SECONDS,
    "retry_base_seconds": 0.01,
    "retry_max_seconds": 0.05,
    "min_free_disk_bytes": 0,
}
PRIORITIES = list(Priority)
# What a killable worker is doing, one byte in a shared file, read by the test after a kill.
OPERATIONS = (
    "starting",
    "enqueue",
    "enqueue_many",
    "nack",
    "maybe_flush",
    "maybe_flush to iot",
    "maybe_flush to archive",
)


class Doing:
    """A one-byte shared marker of the operation in progress (``OPERATIONS`` index)."""

    def __init__(self, path: Optional[str]) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if path else None

    def __call__(self, operation: int) -> None:
        if self._fd is not None:
            os.pwrite(self._fd, bytes((operation,)), 0)


def read_doing(path: str) -> str:
    """The operation a killed worker was in."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(1)
    except FileNotFoundError:  # a busy machine can kill the child before it made the file
        return OPERATIONS[0]
    return OPERATIONS[data[0]] if data else OPERATIONS[0]


class FlakyUploader:
    """The real HTTP uploader, failing a share of the batches on purpose (they get nacked)."""

    def __init__(self, url: str, rng: random.Random, failure_rate: float) -> None:
        self._http = HTTPCloudUploader(url, KEY, timeout=LEASE_SECONDS / 3)
        self._rng = rng
        self._failure_rate = failure_rate
        self._lock = threading.Lock()

    def post_batch(self, payloads: List[Any]) -> Any:
        with self._lock:
            fail = self._rng.random() < self._failure_rate
        return False if fail else self._http.post_batch(payloads)

    def post_encoded_batch(self, body: bytes, count: int) -> Any:
        with self._lock:
            fail = self._rng.random() < self._failure_rate
        return False if fail else self._http.post_encoded_batch(body, count)


class Journal:
    """Appends ``id<TAB>key`` lines with one ``write`` each (atomic for O_APPEND)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def record(self, ids: List[int], keys: List[str]) -> None:
        os.write(self._fd, "".join(f"{i}\t{k}\n" for i, k in zip(ids, keys)).encode())


def read_journal(path: str) -> Dict[int, str]:
    """Every complete line of a journal: id -> key."""
    entries: Dict[int, str] = {}
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return entries
    for line in text.split("\n")[:-1]:
        row_id, key = line.split("\t")
        entries[int(row_id)] = key
    return entries


def _payloads(prefix: str, start: int, count: int, rng: random.Random) -> Tuple[List[Dict[str, Any]], List[str]]:
    keys = [f"{prefix}-{start + n}" for n in range(count)]
    return [{"key": key, "pad": "x" * rng.randrange(0, 300)} for key in keys], keys


def _refusable(enqueue: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """What ``enqueue`` returns, or None when a storage limit refused the items (nothing
    was written then)."""
    try:
        return enqueue(*args, **kwargs)
    except QueueFullError:
        return None


def mixed_operations(
    queue: CloudSyncQueue,
    journal: Journal,
    uploader: FlakyUploader,
    rng: random.Random,
    prefix: str,
    keep_going: Callable[[], bool],
    flush_share: float = 0.2,
    doing: Optional[Doing] = None,
) -> int:
    """enqueue, enqueue_many, nack and maybe_flush in random order; return operations done."""
    doing = doing or Doing(None)
    own: List[int] = []
    made = operations = 0
    while keep_going():
        choice = rng.random()
        if choice < 0.35:
            (payload,), keys = _payloads(prefix, made, 1, rng)
            doing(1)
            row_id = _refusable(queue.enqueue, payload, priority=rng.choice(PRIORITIES))
            ids = [] if row_id is None else [row_id]
        elif choice < 0.6:
            payloads, keys = _payloads(prefix, made, rng.randrange(1, 40), rng)
            doing(2)
            ids = _refusable(queue.enqueue_many, payloads, priority=rng.choice(PRIORITIES)) or []
        elif choice < 1.0 - flush_share:
            if own:
                doing(3)
                queue.nack(rng.sample(own, min(len(own), rng.randrange(1, 20))), retry_delay_seconds=PARK_SECONDS)
            operations += 1
            continue
        else:
            doing(4)
            queue.maybe_flush(uploader)
            operations += 1
            continue
        journal.record(ids, keys)
        made += len(ids)
        own = (own + ids)[-500:]
        operations += 1
    return operations


def run_killable_worker(
    path: str, url: str, journal_path: str, doing_path: str, seed: int, options: Optional[Dict[str, Any]] = None
) -> None:
    """Body of a child that is SIGKILLed at a random moment; exits only by being killed."""
    code = 1
    try:
        rng = random.Random(seed)
        doing = Doing(doing_path)
        queue = CloudSyncQueue(path, **{**QUEUE_OPTIONS, **(options or {})})
        uploader = FlakyUploader(url, rng, 0.3)
        mixed_operations(queue, Journal(journal_path), uploader, rng, f"s{seed}", lambda: True, 0.2, doing)
    except BaseException:  # pragma: no cover - reported through the exit code
        traceback.print_exc()
    finally:
        os._exit(code)


def routed_operations(
    queue: CloudSyncQueue,
    journal: Journal,
    uploaders: Dict[str, FlakyUploader],
    rng: random.Random,
    prefix: str,
    doing: Doing,
) -> None:
    """enqueue and enqueue_many addressed to both destinations or to one, and maybe_flush
    to each destination, in random order, until the process is killed."""
    made = 0
    while True:
        choice = rng.random()
        if choice < 0.6:
            route = rng.choice(tuple(ROUTES))
            destinations = destinations_argument(route)
            payloads, keys = _payloads(f"{route}.{prefix}", made, 1 if choice < 0.3 else rng.randrange(2, 40), rng)
            priority = rng.choice(PRIORITIES)
            if len(payloads) == 1:
                doing(OPERATIONS.index("enqueue"))
                ids = [queue.enqueue(payloads[0], priority=priority, destinations=destinations)]
            else:
                doing(OPERATIONS.index("enqueue_many"))
                ids = queue.enqueue_many(payloads, priority=priority, destinations=destinations)
            journal.record(ids, keys)
            made += len(ids)
        else:
            name = DESTINATIONS[choice >= 0.8]
            doing(OPERATIONS.index(f"maybe_flush to {name}"))
            queue.maybe_flush(uploaders[name], destination=name)


def run_routed_worker(
    path: str, urls: Dict[str, str], journal_path: str, doing_path: str, seed: int, options: Dict[str, Any]
) -> None:
    """Body of a child on a queue with the ``DESTINATIONS``, each flushed to its own URL of
    ``urls``, SIGKILLed at a random moment; exits only by being killed."""
    code = 1
    try:
        rng = random.Random(seed)
        queue = CloudSyncQueue(path, destinations=DESTINATIONS, **{**QUEUE_OPTIONS, **options})
        uploaders = {name: FlakyUploader(urls[name], rng, 0.3) for name in DESTINATIONS}
        routed_operations(queue, Journal(journal_path), uploaders, rng, f"s{seed}", Doing(doing_path))
    except BaseException:  # pragma: no cover - reported through the exit code
        traceback.print_exc()
    finally:
        os._exit(code)


def run_contention_worker(path: str, url: str, journal_path: str, result_path: str, seed: int, seconds: float) -> None:
    """Body of a child with producer, flusher and nacking threads on one queue for ``seconds``."""
    code = 1
    errors: List[str] = []
    counts: List[int] = []
    try:
        queue = CloudSyncQueue(path, **QUEUE_OPTIONS)
        journal = Journal(journal_path)
        deadline = time.monotonic() + seconds

        def keep_going() -> bool:
            return time.monotonic() < deadline

        def thread_body(index: int, flush_share: float) -> None:
            rng = random.Random(seed * 100 + index)
            uploader = FlakyUploader(url, rng, 0.2)
            try:
                counts.append(
                    mixed_operations(queue, journal, uploader, rng, f"p{seed}t{index}", keep_going, flush_share)
                )
            except BaseException as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        # A second queue object in the same process: two connections contend in-process too.
        second = CloudSyncQueue(path, **QUEUE_OPTIONS)

        def other_connection() -> None:
            rng = random.Random(seed * 100 + 99)
            try:
                counts.append(
                    mixed_operations(
                        second, journal, FlakyUploader(url, rng, 0.2), rng, f"p{seed}c", keep_going, flush_share=0.5
                    )
                )
            except BaseException as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=thread_body, args=(i, share)) for i, share in enumerate((0.1, 0.1, 0.6))]
        threads.append(threading.Thread(target=other_connection))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        code = 0
    except BaseException as exc:  # pragma: no cover - reported through the result file
        errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        with open(result_path, "w") as handle:
            handle.write(f"{sum(counts)}\n" + "\n".join(errors))
        os._exit(code)


def fork(target: Callable[..., None], *args: Any) -> int:
    """Run ``target(*args)`` in a forked child; return its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            target(*args)
        finally:
            os._exit(1)
    return pid


def drain(path: str, url: str, ahead: float) -> None:
    """Send everything left, with a clock ``ahead`` seconds ahead so that leases and
    backoffs have run out."""
    # Fast mode: retried items go out in their retry groups, often small batches, and a
    # fsync per batch would make the drain the slowest part of the test.
    with CloudSyncQueue(path, clock=lambda: time.time() + ahead, min_free_disk_bytes=0, durability="fast") as queue:
        uploader = HTTPCloudUploader(url, KEY, timeout=LEASE_SECONDS / 3)
        deadline = time.monotonic() + 120
        while queue.pending_count() and time.monotonic() < deadline:
            queue.maybe_flush(uploader)
        assert queue.pending_count() == 0, "the final drain did not empty the queue"


def drain_destinations(path: str, urls: Dict[str, str], ahead: float) -> None:
    """``drain`` for a queue with the ``DESTINATIONS``: each destination in turn, to its URL."""
    options = {"destinations": DESTINATIONS, "min_free_disk_bytes": 0, "durability": "fast"}
    with CloudSyncQueue(path, clock=lambda: time.time() + ahead, **options) as queue:
        for name in DESTINATIONS:
            uploader = HTTPCloudUploader(urls[name], KEY, timeout=LEASE_SECONDS / 3)
            deadline = time.monotonic() + 120
            while queue.pending_count(destination=name) and time.monotonic() < deadline:
                queue.maybe_flush(uploader, destination=name)
            assert queue.pending_count(destination=name) == 0, f"the final drain did not empty {name}"


def check_delivery(journal: Dict[int, str], received: List[Any]) -> Tuple[int, int, Set[str]]:
    """Compare what was handed out with what the server got: (lost, duplicates, lost keys)."""
    counts: Dict[str, int] = {}
    for item in received:
        counts[item["key"]] = counts.get(item["key"], 0) + 1
    lost = {key for key in journal.values() if key not in counts}
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    return len(lost), duplicates, lost


def waiting_keys(conn: Any, now: float) -> Dict[str, Set[str]]:
    """destination -> keys of the items it claimed that are not due again before ``now``:
    leased by a flusher that was killed (sent or not), or waiting for a retry."""
    import orjson

    waiting: Dict[str, Set[str]] = {name: set() for name in DESTINATIONS}
    for name, text in conn.execute(
        "SELECT d.name, q.payload FROM sync_deliveries AS r JOIN sync_destinations AS d ON d.id = r.destination"
        " JOIN sync_queue AS q ON q.id = r.item_id WHERE r.next_retry_at > ?",
        (now,),
    ):
        waiting[name].add(orjson.loads(text)["key"])
    return waiting


def stored_keys(conn: Any) -> Dict[int, Optional[str]]:
    """id -> payload key of every stored row."""
    import orjson

    return {
        row_id: orjson.loads(text).get("key") for row_id, text in conn.execute("SELECT id, payload FROM sync_queue")
    }
