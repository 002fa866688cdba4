"""Faults survived with real processes, real signals and a real file: SIGKILL at random
points, many processes and threads on one file, fork after use, and the settings that make
a returned id survive power loss. Figures go to the run's summary (see reliability.py)."""

import os
import random
import signal
import sqlite3
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import faultload
import pytest
import rawsql
import reliability
import routing

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer


@pytest.fixture
def fault_server() -> Any:
    with IngestServer(api_key=faultload.KEY) as server:
        yield server


# Where an item of a file with destinations lives until every destination is done with it.
TWO_DESTINATION_TABLES = ("sync_queue", "sync_routes", "sync_deliveries")


def _integrity(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


# The body of a killable child: (journal path, "doing" marker path, seed).
Worker = Callable[[str, str, int], None]


def _plain_worker(db_path: str, url: str, options: Optional[Dict[str, Any]] = None) -> Worker:
    return lambda journal, doing, seed: faultload.run_killable_worker(db_path, url, journal, doing, seed, options)


def _kill_rounds(
    db_path: str,
    tmp_path: Any,
    rounds: int,
    worker_body: Worker,
    targets: Sequence[str] = faultload.OPERATIONS[1:5],
) -> Dict[int, str]:
    """Run ``rounds`` of two workers each SIGKILLed in an operation of ``targets``; return
    the ids handed out."""
    rng = random.Random(4)
    journals: List[str] = []
    for round_number in range(rounds):
        pids, doings = [], []
        for worker in range(2):
            journals.append(os.path.join(tmp_path, f"journal-{round_number}-{worker}"))
            doings.append(os.path.join(tmp_path, f"doing-{round_number}-{worker}"))
            pids.append(faultload.fork(worker_body, journals[-1], doings[-1], round_number * 10 + worker))
        for worker, (pid, doing) in enumerate(zip(pids, doings)):
            # Each kill aims at one operation in turn: wait until the worker is in it (a
            # random moment in it, as the worker's own pace varies), then up to 2 ms more.
            target = targets[(round_number * 2 + worker) % len(targets)]
            time.sleep(rng.uniform(0.02, 0.1))
            deadline = time.monotonic() + 5.0
            while faultload.read_doing(doing) != target and time.monotonic() < deadline:
                time.sleep(0.0002)
            time.sleep(rng.uniform(0.0, 0.002))
            os.kill(pid, signal.SIGKILL)
            reliability.add(f"killed during {faultload.read_doing(doing)}", 1)
        for pid in pids:
            _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "a worker died on its own"
            reliability.add("kills survived", 1)
        assert _integrity(db_path) == "ok"
    handed_out: Dict[int, str] = {}
    for journal in journals:
        handed_out.update(faultload.read_journal(journal))
    assert len(handed_out) > 10 * rounds  # the workers did real work before dying
    return handed_out


def test_sigkill_at_random_points_loses_nothing(db_path: str, fault_server: IngestServer, tmp_path: Any) -> None:
    CloudSyncQueue(db_path).close()
    handed_out = _kill_rounds(db_path, tmp_path, reliability.KILL_ROUNDS, _plain_worker(db_path, fault_server.url))
    received_before_drain = {item["key"] for item in fault_server.items}
    conn = sqlite3.connect(db_path)
    stored = faultload.stored_keys(conn)
    # Leased by a flusher that was killed (never nacked, hidden until the lease runs out).
    in_flight = conn.execute(
        "SELECT COUNT(*) FROM sync_queue WHERE retry_count = 0 AND next_retry_at > ?", (time.time(),)
    ).fetchone()[0]
    conn.close()
    # Every id handed out is stored with its own payload, or was delivered before the kill.
    for row_id, key in handed_out.items():
        assert stored.get(row_id) == key or (row_id not in stored and key in received_before_drain), (row_id, key)

    faultload.drain(db_path, fault_server.url, ahead=3600.0)
    lost, duplicates, lost_keys = faultload.check_delivery(handed_out, fault_server.items)
    assert lost == 0, sorted(lost_keys)[:10]
    assert _integrity(db_path) == "ok"
    reliability.add("in flight at a kill, sent again", in_flight)
    reliability.add("items checked", len(handed_out))
    reliability.add("lost", lost)
    reliability.add("duplicates (re-sent after a kill, at-least-once)", duplicates)


def test_sigkill_while_evicting_keeps_the_file_and_the_counts_consistent(
    db_path: str, fault_server: IngestServer, tmp_path: Any
) -> None:
    # With a small limit nearly every enqueue evicts: eviction, its counter and the insert
    # commit together or not at all, whatever the moment of the kill.
    limit = 150
    CloudSyncQueue(db_path).close()
    handed_out = _kill_rounds(
        db_path, tmp_path, 8, _plain_worker(db_path, fault_server.url, {"max_queue_items": limit})
    )
    received = {item["key"] for item in fault_server.items}
    with CloudSyncQueue(db_path) as queue:
        stored = faultload.stored_keys(rawsql.connection(queue))
        evicted = queue.get_stats()["evicted_total"]
    assert len(stored) <= limit and evicted > 0
    missing = 0
    for row_id, key in handed_out.items():
        if row_id in stored:
            assert stored[row_id] == key
        elif key not in received:
            missing += 1
    assert missing <= evicted  # every item gone without delivery was counted as evicted
    reliability.add("items checked", len(handed_out))


@pytest.fixture
def archive_server() -> Any:
    with IngestServer(api_key=faultload.KEY) as server:
        yield server


def _received(server: IngestServer) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for item in server.items:
        counts[item["key"]] = counts.get(item["key"], 0) + 1
    return counts


def test_sigkill_while_flushing_two_destinations_loses_nothing_for_either(
    db_path: str, fault_server: IngestServer, archive_server: IngestServer, tmp_path: Any
) -> None:
    servers = dict(zip(routing.DESTINATIONS, (fault_server, archive_server)))
    urls = {name: server.url for name, server in servers.items()}
    CloudSyncQueue(db_path, destinations=routing.DESTINATIONS).close()
    # Leases outlast the rounds: an item in flight at a kill waits for the drain, so that
    # it reaches its destination at most twice.
    options = {"lease_seconds": 600.0}
    handed_out = _kill_rounds(
        db_path,
        tmp_path,
        reliability.KILL_ROUNDS_TWO_DESTINATIONS,
        lambda journal, doing, seed: faultload.run_routed_worker(db_path, urls, journal, doing, seed, options),
        faultload.OPERATIONS[1:3] + faultload.OPERATIONS[5:],
    )
    before = {name: set(_received(server)) for name, server in servers.items()}
    conn = sqlite3.connect(db_path)
    try:
        problems = routing.route_problems(conn)
        stored = routing.stored_routes(conn)
        waiting = faultload.waiting_keys(conn, time.time())
    finally:
        conn.close()
    assert not problems, problems[:10]
    # Every id handed out is stored with its own payload; a destination it is no longer
    # owed to has received it.
    for row_id, key in handed_out.items():
        stored_key, owing, _ = stored.get(row_id, (key, set(), 0))
        assert stored_key == key, (row_id, key, stored_key)
        assert all(key in before[name] for name in set(routing.routes_of(key)) - owing), (row_id, key, owing)

    faultload.drain_destinations(db_path, urls, ahead=3600.0)
    lost = duplicates = checked = 0
    for name, server in servers.items():
        counts = _received(server)
        addressed = {key for key in handed_out.values() if name in routing.routes_of(key)}
        missing = addressed - set(counts)
        strays = [key for key in counts if name not in routing.routes_of(key)]
        reliability.add("  sent to a destination they were not addressed to (must be 0)", len(strays))
        assert not missing, (name, sorted(missing)[:10])
        assert not strays, (name, strays[:10])
        # Sent twice only when a kill caught it in flight: sent, not yet acked.
        repeated = {key: n for key, n in counts.items() if n > 1}
        assert all(n == 2 and key in waiting[name] for key, n in repeated.items()), (name, repeated)
        lost += len(missing)
        duplicates += sum(n - 1 for n in repeated.values())
        checked += len(addressed)
    conn = sqlite3.connect(db_path)
    try:
        left = [conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] for table in TWO_DESTINATION_TABLES]
    finally:
        conn.close()
    assert left == [0, 0, 0], dict(zip(TWO_DESTINATION_TABLES, left))  # every item left once both delivered
    assert _integrity(db_path) == "ok"
    reliability.add("in flight at a kill, sent again", sum(len(keys) for keys in waiting.values()))
    reliability.add("items checked", len(handed_out))
    reliability.add("deliveries checked, two destinations in one file", checked)
    reliability.add("lost", lost)
    reliability.add("duplicates (re-sent after a kill, at-least-once)", duplicates)


def test_processes_and_threads_contend_on_one_file(db_path: str, fault_server: IngestServer, tmp_path: Any) -> None:
    CloudSyncQueue(db_path).close()
    seconds = reliability.CONTENTION_SECONDS
    processes = 2
    pids, journals, results = [], [], []
    for worker in range(processes):
        journals.append(os.path.join(tmp_path, f"journal-{worker}"))
        results.append(os.path.join(tmp_path, f"result-{worker}"))
        pids.append(
            faultload.fork(
                faultload.run_contention_worker, db_path, fault_server.url, journals[-1], results[-1], worker, seconds
            )
        )
    for pid in pids:
        _, status = os.waitpid(pid, 0)
    operations = 0
    for result in results:
        with open(result) as handle:
            count, *errors = handle.read().split("\n")
        assert not [e for e in errors if e], errors  # no "database is locked", nothing at all
        operations += int(count)
    handed_out = {}
    for journal in journals:
        handed_out.update(faultload.read_journal(journal))
    faultload.drain(db_path, fault_server.url, ahead=3600.0)
    lost, duplicates, lost_keys = faultload.check_delivery(handed_out, fault_server.items)
    assert lost == 0, sorted(lost_keys)[:10]
    assert duplicates == 0
    assert _integrity(db_path) == "ok"
    reliability.add("items checked", len(handed_out))
    reliability.add("lost", lost)
    reliability.add("duplicates without a kill", duplicates)
    reliability.LOAD_OPS_PER_SECOND.append(operations / seconds)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_after_use_parent_and_child_work_at_once(queue: CloudSyncQueue) -> None:
    queue.enqueue_many([{"parent": i} for i in range(10)])
    queue.dequeue()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            ids = queue.enqueue_many([{"child": i} for i in range(200)])
            queue.nack(ids[:50], retry_delay_seconds=0)
            queue.ack(ids[50:100])
            code = 0 if queue.verify().ok else 2
        finally:
            os._exit(code)
    parent_ids = [queue.enqueue({"parent": "during"}, priority=Priority.ANOMALY) for _ in range(100)]
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert queue.pending_count() == 10 + 150 + 100
    assert {item.id for item in queue.dequeue(batch_size=100)} == set(parent_ids)
    assert queue.verify().ok


def test_power_loss_settings_and_directory_fsync(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: List[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    top = os.path.realpath(tempfile.mkdtemp(dir=tmp_path))
    path = os.path.join(top, "new", "sync.db")
    with CloudSyncQueue(path) as queue:
        conn = rawsql.connection(queue)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the WAL is synced per commit
    # The new file's entry in its directory and the new directory's entry in its parent.
    assert os.path.dirname(path) in synced and top in synced
    synced.clear()
    CloudSyncQueue(path).close()
    assert synced == []  # an existing file needs nothing more
    CloudSyncQueue(os.path.join(top, "fast.db"), durability="fast").close()
    assert synced == [top]  # the fast mode may lose the last transactions, never the file
