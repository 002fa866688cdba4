"""Power cuts, simulated for real: the queue on a file system that forgets what was not
synced (crashfs.py), a load killed at random moments, the unsynced writes dropped, torn or
reordered, and the promises of each durability mode checked on what is left. The same
layer counts the bytes each pattern makes the device store. Figures go to the run's
summary (see reliability.py)."""

import os
import random
import signal
import time
from typing import Any, Dict, Iterator, List, Union

import crashfs
import powerload
import pytest
import reliability
import routing

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

pytestmark = pytest.mark.skipif(crashfs.unavailable() is not None, reason=f"{crashfs.unavailable()}")


@pytest.fixture
def power_server() -> Iterator[IngestServer]:
    with IngestServer(api_key=powerload.KEY) as server:
        yield server


def _wait_for_start(journal: str, pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(journal) and os.path.getsize(journal) > 0:
            return
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:  # left for waitpid
            raise AssertionError(f"the load died on its own: {_error(journal)}")
        time.sleep(0.002)
    raise AssertionError("the load did not open its queue")


def _error(journal: str) -> str:
    try:
        with open(journal + ".error") as handle:
            return handle.read()
    except FileNotFoundError:
        return "no error written"


def _cuts(
    tmp_path: Any,
    ledger: Union[powerload.Ledger, powerload.RoutedLedger],
    cuts: int,
    seed: int,
    ignore_syncs: str = "",
    longest_load: float = reliability.POWER_CUT_WINDOW,
) -> List[str]:
    """Run ``cuts`` rounds of the ledger's load (up to ``longest_load`` seconds), SIGKILL and
    power cut on one backing directory, checking after each into ``ledger``; return what
    the checks found wrong. On an honest disk (``ignore_syncs`` empty) anything wrong fails
    the test at once."""
    durability = ledger.durability
    backing, mountpoint = os.path.join(tmp_path, "backing"), os.path.join(tmp_path, "mnt")
    rng = random.Random(seed)
    problems: List[str] = []
    for cycle in range(cuts):
        journal = os.path.join(tmp_path, f"journal-{cycle}")
        with crashfs.mounted(backing, mountpoint, ignore_syncs) as mount:
            pid = ledger.start(mountpoint, journal, seed * 10_000 + cycle, cycle)
            try:
                _wait_for_start(journal, pid)
                time.sleep(rng.uniform(0.0, longest_load))
            finally:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            assert os.WIFSIGNALED(status), f"the load died on its own: {_error(journal)}"
            outcome = mount.power_cut(crashfs.CUT_MODES[cycle % len(crashfs.CUT_MODES)], rng.randrange(1 << 30))
        if not ignore_syncs:
            reliability.POWER_CUTS["unsynced 4 KiB pieces at the cuts"] += outcome["pieces"]
            reliability.POWER_CUTS["  of them written anyway (torn, reordered)"] += outcome["applied"]
            if durability == "full":  # in fast mode nearly every cut does
                reliability.POWER_CUTS["full-mode cuts amid a commit (unsynced WAL or database writes)"] += (
                    outcome["files_unsynced"] > 0
                )
        problems += [f"cut {cycle}: {problem}" for problem in ledger.check(backing, journal, cycle)]
        assert ignore_syncs or not problems, problems[:10]
    return problems


def _add_figures(ledger: Union[powerload.Ledger, powerload.RoutedLedger]) -> None:
    figures = ledger.figures
    reliability.POWER_CUTS["cuts"] += figures["cuts"]
    reliability.POWER_CUTS["items checked"] += figures["items checked"]
    reliability.POWER_CUTS["integrity failures (must be 0)"] += figures["integrity failures"]
    if ledger.durability == "full":
        reliability.POWER_CUTS["lost in full mode (must be 0)"] += figures["lost"]
        reliability.POWER_CUTS["acked items back in full mode (must be 0)"] += figures["reappeared"]
    else:
        reliability.POWER_CUTS["lost in fast mode (last transactions)"] += figures["lost"]


@pytest.mark.slow
def test_power_cuts_in_full_mode_lose_nothing(tmp_path: Any, power_server: IngestServer, backend: str) -> None:
    ledger = powerload.Ledger("full", power_server)
    try:
        _cuts(tmp_path, ledger, reliability.POWER_CUTS_FULL, seed=1)
    finally:
        _add_figures(ledger)  # a failure shows in the summary too
    assert ledger.figures["lost"] == 0 and ledger.figures["integrity failures"] == 0
    assert ledger.figures["items checked"] > 10 * reliability.POWER_CUTS_FULL  # the load did real work


@pytest.mark.slow
def test_power_cuts_in_fast_mode_keep_the_file_intact(tmp_path: Any, power_server: IngestServer, backend: str) -> None:
    ledger = powerload.Ledger("fast", power_server)
    try:
        _cuts(tmp_path, ledger, max(1, reliability.POWER_CUTS_FULL // 2), seed=2)
    finally:
        _add_figures(ledger)
    assert ledger.figures["integrity failures"] == 0


def test_the_checks_see_loss_when_fsync_is_ignored(tmp_path: Any, power_server: IngestServer, backend: str) -> None:
    # A disk that acknowledges every fsync and stores nothing: "full" cannot keep its
    # promise there, and the checks must say so, or they could not catch a real loss.
    ledger = powerload.Ledger("full", power_server)
    problems = _cuts(tmp_path, ledger, 6, seed=3, ignore_syncs="all")
    reliability.POWER_CUTS["self-test, fsync ignored: cuts"] += ledger.figures["cuts"]
    reliability.POWER_CUTS["self-test, fsync ignored: lost (must be > 0)"] += ledger.figures["lost"]
    assert ledger.figures["lost"] > 0 and any("items lost" in problem for problem in problems)


def test_the_checks_see_a_lost_file_when_directory_syncs_are_ignored(
    tmp_path: Any, power_server: IngestServer, backend: str
) -> None:
    # Files synced, directories not: in fast mode nothing syncs the new file's entry but
    # the queue's own directory fsync, so the file itself is lost, and the checks say so.
    problems = _cuts(tmp_path, powerload.Ledger("fast", power_server), 3, seed=4, ignore_syncs="directories")
    assert any("is gone" in problem for problem in problems), problems


@pytest.fixture
def archive_server() -> Iterator[IngestServer]:
    with IngestServer(api_key=powerload.KEY) as server:
        yield server


def _add_routed_figures(ledger: powerload.RoutedLedger) -> None:
    _add_figures(ledger)
    reliability.POWER_CUTS["  of them with two destinations in the file"] += ledger.figures["cuts"]
    reliability.POWER_CUTS["route problems in full mode (must be 0)"] += ledger.figures["route problems"]


@pytest.mark.slow
def test_power_cuts_with_two_destinations_in_full_mode_lose_nothing_for_either(
    tmp_path: Any, power_server: IngestServer, archive_server: IngestServer, backend: str
) -> None:
    ledger = powerload.RoutedLedger(dict(zip(routing.DESTINATIONS, (power_server, archive_server))))
    try:
        # Longer runs than the plain load's: a flush of a destination returns (and so
        # confirms its acks) only once that destination's backlog is sent.
        _cuts(
            tmp_path,
            ledger,
            reliability.POWER_CUTS_TWO_DESTINATIONS,
            seed=5,
            longest_load=max(0.4, reliability.POWER_CUT_WINDOW),
        )
    finally:
        _add_routed_figures(ledger)
    assert ledger.figures["lost"] == ledger.figures["route problems"] == ledger.figures["integrity failures"] == 0
    assert ledger.figures["items checked"] > 10 * reliability.POWER_CUTS_TWO_DESTINATIONS  # the load did real work
    assert all(ledger.acked.values())  # both destinations had deliveries confirmed


def test_the_routed_checks_see_loss_when_fsync_is_ignored(
    tmp_path: Any, power_server: IngestServer, archive_server: IngestServer, backend: str
) -> None:
    ledger = powerload.RoutedLedger(dict(zip(routing.DESTINATIONS, (power_server, archive_server))))
    problems = _cuts(tmp_path, ledger, 6, seed=6, ignore_syncs="all")
    reliability.POWER_CUTS["self-test, fsync ignored: cuts"] += ledger.figures["cuts"]
    reliability.POWER_CUTS["self-test, fsync ignored: lost (must be > 0)"] += ledger.figures["lost"]
    assert ledger.figures["lost"] > 0 and any("items lost" in problem for problem in problems)


def _write(path: str, data: bytes, offset: int = 0, sync: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _sync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_the_crash_file_system_keeps_only_what_was_synced(tmp_path: Any) -> None:
    backing, mnt = os.path.join(tmp_path, "backing"), os.path.join(tmp_path, "mnt")
    with crashfs.mounted(backing, mnt) as mount:
        os.mkdir(os.path.join(mnt, "sub"))
        _write(os.path.join(mnt, "sub", "kept"), b"c" * 100, sync=True)
        _write(os.path.join(mnt, "data-unsynced"), b"a" * 100)
        _sync_dir(os.path.join(mnt, "sub"))
        _sync_dir(mnt)
        _write(os.path.join(mnt, "unsynced"), b"a" * 100)
        _write(os.path.join(mnt, "entry-unsynced"), b"b" * 100, sync=True)
        _write(os.path.join(mnt, "sub", "kept"), b"d" * 50, offset=20)  # after the sync: forgotten
        with open(os.path.join(mnt, "sub", "kept"), "rb") as handle:
            assert handle.read() == b"c" * 20 + b"d" * 50 + b"c" * 30  # reads see the volatile layer
        mount.power_cut("drop", 0)
    assert sorted(os.listdir(backing)) == ["data-unsynced", "sub"]  # neither unsynced entry survived
    assert os.path.getsize(os.path.join(backing, "data-unsynced")) == 0  # its entry did, not its data
    with open(os.path.join(backing, "sub", "kept"), "rb") as handle:
        assert handle.read() == b"c" * 100

    # Torn and reordered: a subset of the pages of one unsynced write lands.
    with crashfs.mounted(backing, mnt) as mount:
        _write(os.path.join(mnt, "sub", "kept"), bytes(range(256)) * 64, sync=False)  # 4 pages
        outcome = mount.power_cut("subset", 7)
    with open(os.path.join(backing, "sub", "kept"), "rb") as handle:
        data = handle.read()
    pages = [data[i : i + crashfs.PAGE] for i in range(0, len(data), crashfs.PAGE)]
    new_page = bytes(range(256)) * 16
    assert outcome["pieces"] == 4 and 0 < outcome["applied"] < 4  # this seed tears the write
    assert sum(page == new_page for page in pages) == outcome["applied"]
    assert pages[0] in (new_page, b"c" * 100 + bytes(len(pages[0]) - 100))  # the rest as it was

    # A rename and an unlink count once their directory is synced; a clean unmount keeps all.
    with crashfs.mounted(backing, mnt) as mount:
        os.rename(os.path.join(mnt, "sub", "kept"), os.path.join(mnt, "sub", "moved"))
        _sync_dir(os.path.join(mnt, "sub"))
        _write(os.path.join(mnt, "late"), b"e", sync=True)
        mount.unmount()
    assert sorted(os.listdir(os.path.join(backing, "sub"))) == ["moved"] and os.path.exists(
        os.path.join(backing, "late")
    )


FLASH_ITEMS = {"single enqueue + ack": 300, "enqueue_many of 500 + ack": 5000, "flush": 5000}


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_bytes_synced_per_item(tmp_path: Any, server: IngestServer, durability: str, backend: str) -> None:
    """What the flash is asked to store per item: the 4 KiB pages written since the file's
    last sync, counted at each fsync, until the queue is closed (its last checkpoint)."""
    backing, mnt = os.path.join(tmp_path, "backing"), os.path.join(tmp_path, "mnt")
    payloads = [{"sensor": f"s-{i % 50}", "value": i * 0.5, "ts": 1_700_000_000 + i} for i in range(500)]
    per_item: Dict[str, float] = {}
    for pattern, count in FLASH_ITEMS.items():
        with crashfs.mounted(backing, mnt) as mount:
            path = os.path.join(mnt, f"{pattern.split()[0]}.db")
            queue = CloudSyncQueue(path, durability=durability, min_free_disk_bytes=0)
            if pattern == "flush":
                for _ in range(count // 500):
                    queue.enqueue_many(payloads)
                queue.close()  # the backlog is on the device before counting starts
                queue = CloudSyncQueue(path, durability=durability, min_free_disk_bytes=0)
            before = mount.stats()["synced_bytes"]
            if pattern == "flush":
                assert queue.maybe_flush(HTTPCloudUploader(server.url, "test-key")) == count
            elif pattern.startswith("single"):
                for index in range(count):
                    queue.ack([queue.enqueue(payloads[index % 500])])
            else:
                for _ in range(count // 500):
                    queue.ack(queue.enqueue_many(payloads))
            queue.close()
            per_item[pattern] = (mount.stats()["synced_bytes"] - before) / count
            mount.unmount()
        reliability.SYNCED_PER_ITEM[f"{pattern}, {durability}"] = per_item[pattern]
        print(f"\nbytes synced per item ({pattern}, durability={durability}): {per_item[pattern]:.0f}")
    if durability == "full":
        assert per_item["single enqueue + ack"] >= 2 * crashfs.PAGE  # two commits, each reaching the device
    # A batch shares its pages and its syncs.
    assert per_item["enqueue_many of 500 + ack"] * 20 < per_item["single enqueue + ack"]
