"""Several destinations in one queue file: routing, fan-out stored once and atomically,
changing the set of destinations, the flush per destination and what each destination
keeps for itself (refusals, dead letters, counters, batch keys, options), on real files
and real ingest servers."""

import os
import sqlite3
from typing import Any

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, QueueFullError

TWO = ("iot", "archive")


@pytest.fixture
def two(db_path: str) -> Any:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        yield queue


def test_each_destination_counts_what_it_still_has_to_deliver(two: CloudSyncQueue) -> None:
    two.enqueue({"n": 1})
    two.enqueue_many([{"n": n} for n in range(5)], destinations=("archive",))
    two.enqueue({"n": 2}, destinations=["iot"])
    assert two.pending_count() == 7
    assert two.pending_count(destination="iot") == 2
    assert two.pending_count(destination="archive") == 6


def test_a_payload_for_every_destination_is_stored_once(two: CloudSyncQueue) -> None:
    ids = two.enqueue_many([{"n": n} for n in range(10)])
    assert rawsql.execute(two, "SELECT COUNT(*) FROM sync_queue").fetchone()[0] == 10
    routes = rawsql.execute(two, "SELECT item_id, pending FROM sync_routes ORDER BY item_id").fetchall()
    assert routes == [(item_id, 2) for item_id in ids]


def test_concurrent_single_enqueues_to_different_destinations_keep_their_routes(two: CloudSyncQueue) -> None:
    import threading

    results: dict = {}

    def put(index: int) -> None:
        target = (TWO[index % 2],)
        results[index] = (two.enqueue({"i": index}, destinations=target), target)

    threads = [threading.Thread(target=put, args=(index,)) for index in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert two.pending_count(destination="iot") == two.pending_count(destination="archive") == 20
    bits = {name: 1 << ident for name, ident in rawsql.execute(two, "SELECT name, id FROM sync_destinations")}
    for item_id, (target,) in results.values():
        (mask,) = rawsql.execute(two, "SELECT destinations FROM sync_routes WHERE item_id = ?", (item_id,)).fetchone()
        assert mask == bits[target]


@pytest.mark.parametrize(
    "destinations, error, match",
    [
        (("nowhere",), ValueError, "unknown destination 'nowhere'"),
        ((), ValueError, "at least one destination"),
        (("iot", "iot"), ValueError, "more than once"),
        ("iot", TypeError, "sequence of destination names"),
    ],
)
def test_bad_routing_is_refused_before_anything_is_written(
    two: CloudSyncQueue, destinations: Any, error: type, match: str
) -> None:
    two.enqueue({"before": True})
    with pytest.raises(error, match=match):
        two.enqueue({"n": 1}, destinations=destinations)
    with pytest.raises(error, match=match):
        two.enqueue_many([{"n": 1}], destinations=destinations)
    assert two.pending_count() == 1 and two.pending_count(destination="iot") == 1


def test_a_queue_without_destinations_refuses_a_route_and_a_destination_name(queue: CloudSyncQueue) -> None:
    with pytest.raises(ValueError, match="this queue has no destinations"):
        queue.enqueue({"n": 1}, destinations=("iot",))
    with pytest.raises(ValueError, match="unknown destination 'iot'"):
        queue.pending_count(destination="iot")
    assert queue.pending_count() == 0


@pytest.mark.parametrize(
    "destinations, error, match",
    [
        ((), ValueError, "at least one"),
        (("a", "a"), ValueError, "more than once"),
        (("",), ValueError, "not a destination name"),
        (("has space",), ValueError, "not a destination name"),
        ("iot", TypeError, "sequence of names or a mapping"),
        ({"iot": {"max_queue_items": 5}}, ValueError, "unknown options \\['max_queue_items'\\]"),
        ({"iot": 5}, TypeError, "must be a mapping of options"),
        (tuple(f"d{n}" for n in range(63)), ValueError, "at most 62"),
    ],
)
def test_bad_destinations_are_refused_before_the_file_is_made(
    db_path: str, destinations: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        CloudSyncQueue(db_path, destinations=destinations)
    assert not os.path.exists(db_path)  # refused before the file was made


def _registered(path: str) -> list:
    conn = sqlite3.connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT name FROM sync_destinations ORDER BY id")]
    finally:
        conn.close()


def test_fan_out_is_all_or_nothing(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO, max_queue_items=3) as queue:
        queue.enqueue_many([{"n": n} for n in range(3)], priority=1)  # critical: never evicted
        with pytest.raises(QueueFullError):
            queue.enqueue_many([{"late": n} for n in range(2)], priority=1)
        assert rawsql.execute(queue, "SELECT COUNT(*) FROM sync_routes").fetchone()[0] == 3
        assert queue.pending_count(destination="archive") == 3


def test_a_destination_added_later_receives_what_is_enqueued_from_then_on(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=("iot",)) as queue:
        queue.enqueue_many([{"n": n} for n in range(4)])
    with CloudSyncQueue(db_path, destinations=("iot", "archive")) as queue:
        queue.enqueue({"new": True})
        assert queue.pending_count(destination="iot") == 5
        assert queue.pending_count(destination="archive") == 1


def test_leaving_out_a_destination_with_items_to_deliver_names_it_and_the_way_out(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue_many([{"n": n} for n in range(3)], destinations=("archive",))
    with pytest.raises(
        ValueError, match=r"'archive' is missing but still has 3 items.*remove_destination\('archive'\)"
    ):
        CloudSyncQueue(db_path, destinations=("iot",))
    assert _registered(db_path) == ["iot", "archive"]  # nothing changed


def test_leaving_out_a_destination_with_nothing_to_deliver_unregisters_it(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue({"n": 1}, destinations=("iot",))
    with CloudSyncQueue(db_path, destinations=("iot",)) as queue:
        assert queue.pending_count(destination="iot") == 1
    assert _registered(db_path) == ["iot"]


def test_a_left_out_destination_leaves_nothing_behind_and_its_dead_letters_are_not_dropped(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations={"iot": {"max_attempts": 1}, "archive": {}}) as queue:
        queue.enqueue({"n": 1}, destinations=("iot",))
        queue.enqueue({"n": 2}, destinations=("archive",))
        assert queue.maybe_flush(Recording(), destination="iot") == 1
        assert queue.maybe_flush(Recording(), destination="archive") == 1
        queue.enqueue({"n": 3}, destinations=("iot",))

        class Refusing:
            def post_batch(self, payloads: list) -> Any:
                from pyv_edge_agent.cloud_sync import UploadError

                raise UploadError("refused", status=422)

        queue.maybe_flush(Refusing(), destination="iot")
    with pytest.raises(ValueError, match=r"'iot' is missing but still has 1 dead letters"):
        CloudSyncQueue(db_path, destinations=("archive",))
    with CloudSyncQueue(db_path, destinations=("iot",)) as queue:  # archive had nothing left
        assert queue.verify().ok, queue.verify().messages
        assert queue.drop_dead_letters(destination="iot") == 1
    assert _registered(db_path) == ["iot"]
    with CloudSyncQueue(db_path) as queue:  # without destinations: iot had nothing left
        assert queue.verify().ok, queue.verify().messages
        assert queue.destinations == ()
        queue.enqueue({"plain": True})
    assert _registered(db_path) == []


def test_opening_without_destinations_a_file_that_has_some_with_items_left_is_refused(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue({"n": 1}, destinations=("archive",))
    with pytest.raises(ValueError, match=r"'archive' is missing but still has 1 items to deliver"):
        CloudSyncQueue(db_path)
    assert _registered(db_path) == ["archive", "iot"] or sorted(_registered(db_path)) == ["archive", "iot"]


def test_a_file_with_items_of_a_queue_without_destinations_is_not_split_silently(db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"n": 1})
    with pytest.raises(ValueError, match="holds 1 items of a queue without destinations"):
        CloudSyncQueue(db_path, destinations=TWO)


def test_from_dict_takes_destinations(db_path: str) -> None:
    with CloudSyncQueue.from_dict({"db_path": db_path, "destinations": {"iot": {"max_batch_items": 10}}}) as queue:
        queue.enqueue({"n": 1})
        assert queue.pending_count(destination="iot") == 1


# -- the flush per destination ---------------------------------------------------------------


class Recording:
    """An uploader that takes every batch and keeps the payloads, or fails every one."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.received: list = []

    def post_batch(self, payloads: list) -> bool:
        if self.fail:
            raise ConnectionRefusedError("the destination is down")
        self.received += payloads
        return True


def test_each_destination_delivers_its_own_items_once(two: CloudSyncQueue) -> None:
    two.enqueue_many([{"n": n} for n in range(5)])
    two.enqueue_many([{"only": "archive", "n": n} for n in range(3)], destinations=("archive",))
    iot, archive = Recording(), Recording()
    assert two.maybe_flush(iot, destination="iot") == 5
    assert two.maybe_flush(iot, destination="iot") == 0
    assert [p["n"] for p in iot.received] == list(range(5))
    assert two.pending_count() == 8  # archive has all of them still
    assert two.maybe_flush(archive, destination="archive") == 8
    assert two.pending_count() == 0 and two.pending_count(destination="archive") == 0
    assert rawsql.execute(two, "SELECT COUNT(*) FROM sync_routes").fetchone()[0] == 0


def test_a_dead_destination_does_not_hold_back_a_live_one(two: CloudSyncQueue) -> None:
    dead, live = Recording(fail=True), Recording()
    for round_ in range(3):
        two.enqueue_many([{"round": round_, "n": n} for n in range(10)])
        assert two.maybe_flush(dead, destination="archive") == 0
        assert two.maybe_flush(live, destination="iot") == 10
    assert len(live.received) == 30
    assert two.pending_count(destination="iot") == 0 and two.pending_count(destination="archive") == 30
    assert two.pending_count() == 30  # stored once, for archive


def test_most_important_first_for_each_destination(two: CloudSyncQueue) -> None:
    two.enqueue_many([{"log": n} for n in range(3)], priority=4)
    two.enqueue({"alarm": 1}, priority=1)
    iot = Recording()
    two.maybe_flush(iot, destination="iot")
    assert iot.received[0] == {"alarm": 1}


def test_several_destinations_need_the_destination_named(two: CloudSyncQueue) -> None:
    two.enqueue({"n": 1})
    with pytest.raises(ValueError, match=r"destination is required.*\['archive', 'iot'\]"):
        two.maybe_flush(Recording())
    with pytest.raises(ValueError, match="unknown destination 'nowhere'"):
        two.maybe_flush(Recording(), destination="nowhere")
    assert two.pending_count(destination="iot") == 1


def test_a_claim_examines_each_item_once_per_destination(db_path: str) -> None:
    # alarms gets one item in a thousand: its cursor moves past the others' items, so its
    # next claim does not walk them again.
    with CloudSyncQueue(db_path, destinations=("telemetry", "alarms")) as queue:
        queue.enqueue_many([{"n": n} for n in range(1000)], destinations=("telemetry",))
        queue.enqueue({"alarm": 1}, destinations=("alarms",))
        alarms = Recording()
        assert queue.maybe_flush(alarms, destination="alarms") == 1
        (cursor,) = rawsql.execute(
            queue,
            "SELECT c.last_id FROM sync_cursors AS c JOIN sync_destinations AS d ON d.id = c.destination"
            " WHERE d.name = 'alarms' AND c.priority = 3",
        ).fetchone()
        assert cursor == 1001
        assert queue.pending_count(destination="telemetry") == 1000


# -- the worker, one loop per destination, on real HTTP servers ----------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("failure", ["refused", "timeout", "credentials"])
def test_the_worker_keeps_a_live_destination_flowing_beside_a_dead_one(db_path: str, failure: str) -> None:
    from waiting import wait_for

    from pyv_edge_agent.cloud_sync import HTTPCloudUploader, SyncWorker
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    # The dead destination: nothing listens; an endpoint slower than the uploader's
    # timeout; or one that refuses the key.
    broken = IngestServer(api_key="another key" if failure == "credentials" else None).start()
    broken.set_delay(30.0 if failure == "timeout" else 0.0)
    url = f"http://127.0.0.1:{_free_port()}/ingest" if failure == "refused" else broken.url
    dead = HTTPCloudUploader(url, "k", timeout=1.0)
    with (
        IngestServer(api_key="k") as server,
        CloudSyncQueue(db_path, destinations=TWO, retry_base_seconds=0.5, retry_max_seconds=1.0) as queue,
    ):
        live = HTTPCloudUploader(server.url, "k", timeout=5.0)
        with SyncWorker(queue, {"iot": live, "archive": dead}, interval=0.2, handle_sigterm=False) as worker:
            for round_ in range(5):
                queue.enqueue_many([{"round": round_, "n": n} for n in range(20)])
                assert wait_for(lambda: queue.pending_count(destination="iot") == 0)
            queue.enqueue({"alarm": True}, priority=1)  # wakes both loops; the live one sends it
            assert wait_for(lambda: queue.pending_count(destination="iot") == 0)
            assert worker.is_alive()
        assert len(server.items) == 101
        assert queue.pending_count(destination="archive") == 101
        assert queue.pending_count() == 101  # kept once, for the dead destination
        assert broken.items == []
        assert queue.get_stats()["destinations"]["archive"]["failed_batches"] >= 1
    broken.stop()


def test_a_worker_mapping_names_known_destinations(two: CloudSyncQueue) -> None:
    from pyv_edge_agent.cloud_sync import SyncWorker

    with pytest.raises(ValueError, match="unknown destination 'nowhere'"):
        SyncWorker(two, {"nowhere": Recording()}, handle_sigterm=False)
    with pytest.raises(ValueError, match="mapping of destinations to uploaders is empty"):
        SyncWorker(two, {}, handle_sigterm=False)


def test_dequeue_and_peek_show_what_a_destination_still_has_to_send(two: CloudSyncQueue) -> None:
    two.enqueue_many([{"n": n} for n in range(3)])
    two.enqueue({"alarm": 1}, priority=1, destinations=("archive",))
    assert two.maybe_flush(Recording(), destination="iot") == 3
    assert two.dequeue(10, destination="iot") == []
    archive = two.dequeue(10, destination="archive")
    assert [item.payload for item in archive] == [{"alarm": 1}, {"n": 0}, {"n": 1}, {"n": 2}]
    assert two.peek(2, destination="archive") == archive[:2]
    assert [item.payload for item in two.peek(5, priority=1, destination="archive")] == [{"alarm": 1}]
    dead = Recording(fail=True)
    two.maybe_flush(dead, destination="archive")  # all four back off: none is due now
    assert two.dequeue(10, destination="archive") == []
    with pytest.raises(ValueError, match="destination is required"):
        two.dequeue(10)


def test_evicted_and_expired_items_leave_every_destination(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO, max_queue_items=5) as queue:
        queue.enqueue_many([{"old": n} for n in range(5)], priority=4)
        assert queue.maybe_flush(Recording(), destination="iot") == 5  # archive still owes them
        queue.enqueue_many([{"new": n} for n in range(3)])  # evicts three of the old logs
        assert queue.pending_count() == 5
        assert queue.pending_count(destination="archive") == 5
        assert queue.pending_count(destination="iot") == 3
        queue.enqueue({"short": 1}, ttl_seconds=0, destinations=("iot",))  # evicts one more, expires at once
        assert queue.purge_expired() == 1
        assert queue.pending_count(destination="iot") == 3
        routes = rawsql.execute(queue, "SELECT COUNT(*) FROM sync_routes").fetchone()[0]
        assert routes == queue.pending_count() == 4
        orphans = "SELECT COUNT(*) FROM sync_deliveries WHERE item_id NOT IN (SELECT id FROM sync_queue)"
        assert rawsql.execute(queue, orphans).fetchone()[0] == 0


# -- each destination's own state: refusals, dead letters, counters, keys, options -----------


def _http_pair(db_path: str, **options: Any) -> Any:
    """Two real ingest servers and a queue feeding one each (``iot`` and ``archive``)."""
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    iot_server, archive_server = IngestServer().start(), IngestServer().start()
    queue = CloudSyncQueue(db_path, **options)
    uploaders = {
        "iot": HTTPCloudUploader(iot_server.url, "k", timeout=5.0),
        "archive": HTTPCloudUploader(archive_server.url, "k", timeout=5.0),
    }
    return queue, {"iot": iot_server, "archive": archive_server}, uploaders


@pytest.fixture
def pair(db_path: str) -> Any:
    queue, servers, uploaders = _http_pair(db_path, destinations={"iot": {"max_attempts": 1}, "archive": {}})
    yield queue, servers, uploaders
    queue.close()
    for server in servers.values():
        server.stop()


def test_a_refusal_for_good_is_that_destinations_alone(pair: Any) -> None:
    queue, servers, uploaders = pair
    servers["iot"].set_limits(reject=lambda item: item.get("bad", False), reject_status=200)
    queue.enqueue_many([{"n": n, "bad": n == 2} for n in range(5)])
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 4
    (dead,) = queue.dead_letters(destination="iot")
    assert dead.payload == {"n": 2, "bad": True} and dead.destination == "iot" and dead.last_status == 200
    assert queue.dead_letters(destination="archive") == []
    assert queue.maybe_flush(uploaders["archive"], destination="archive") == 5
    assert [item["n"] for item in servers["archive"].items] == [0, 1, 2, 3, 4]
    # Every destination is done with every item: the file is empty, the dead letter kept.
    assert queue.pending_count() == 0
    assert rawsql.execute(queue, "SELECT COUNT(*) FROM sync_queue").fetchone()[0] == 0
    assert [d.payload for d in queue.dead_letters()] == [{"n": 2, "bad": True}]
    stats = queue.get_stats()
    assert stats["destinations"]["iot"]["dead_lettered"] == 1
    assert stats["destinations"]["iot"]["dead_lettered_total"] == 1
    assert stats["destinations"]["archive"]["dead_lettered"] == 0
    assert stats["dead_lettered"] == 1 and stats["dead_lettered_total"] == 1


@pytest.mark.parametrize("archive_first", [True, False], ids=["item gone", "item still held"])
def test_a_requeued_dead_letter_goes_back_to_its_destination_alone(pair: Any, archive_first: bool) -> None:
    queue, servers, uploaders = pair
    servers["iot"].set_limits(reject=lambda item: item.get("bad", False), reject_status=422)
    queue.enqueue({"bad": True})
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 0
    if archive_first:
        assert queue.maybe_flush(uploaders["archive"], destination="archive") == 1
    servers["iot"].set_limits()
    assert queue.requeue_dead_letters(destination="iot") == 1
    assert queue.dead_letters() == []
    assert queue.pending_count(destination="iot") == 1
    assert queue.pending_count(destination="archive") == (0 if archive_first else 1)
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 1
    assert servers["iot"].items == [{"bad": True}]
    if not archive_first:
        assert queue.maybe_flush(uploaders["archive"], destination="archive") == 1
    assert servers["archive"].items == [{"bad": True}]
    assert queue.pending_count() == 0


def test_dead_letters_are_dropped_per_destination(pair: Any) -> None:
    queue, servers, uploaders = pair
    for server in servers.values():
        server.set_limits(reject=lambda item: True, reject_status=422)
    assert set(queue.get_stats()["destinations"]) == {"iot", "archive"}
    queue.enqueue({"n": 1})
    queue.maybe_flush(uploaders["iot"], destination="iot")
    for _ in range(5):  # archive takes max_attempts = 5 refusals (the queue's default)
        queue.retry_now(destination="archive")
        queue.maybe_flush(uploaders["archive"], destination="archive")
    assert sorted(d.destination or "" for d in queue.dead_letters()) == ["archive", "iot"]
    assert queue.drop_dead_letters(destination="iot") == 1
    assert [d.destination for d in queue.dead_letters()] == ["archive"]
    with pytest.raises(ValueError, match="unknown destination 'nowhere'"):
        queue.drop_dead_letters(destination="nowhere")
    assert queue.drop_dead_letters() == 1


def test_each_destination_keeps_its_own_backoff_counters_and_last_error(pair: Any) -> None:
    queue, servers, uploaders = pair
    servers["iot"].fail_next(503, retry_after="60")
    queue.enqueue_many([{"n": n} for n in range(5)])
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 0
    assert queue.maybe_flush(uploaders["archive"], destination="archive") == 5
    figures = queue.get_stats()["destinations"]
    iot, archive = figures["iot"], figures["archive"]
    assert iot["failed_batches"] == 1 and "503" in iot["last_error"] and iot["backoff_seconds"] > 50
    assert iot["messages_sent_total"] == 0 and iot["depth"] == 5 and not iot["link_down"]
    assert archive["failed_batches"] == 0 and archive["last_error"] is None and archive["backoff_seconds"] == 0
    assert archive["messages_sent_total"] == 5 and archive["depth"] == 0 and archive["last_success_at"] is not None
    assert queue.next_due_in(destination="iot") > 50
    stats = queue.get_stats()
    assert stats["messages_sent_total"] == 5 and stats["failed_batches"] == 1


def test_each_destination_retries_a_batch_under_its_own_key(pair: Any) -> None:
    queue, servers, uploaders = pair
    servers["iot"].fail_next(503)
    queue.enqueue_many([{"n": n} for n in range(3)])
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 0
    assert queue.maybe_flush(uploaders["archive"], destination="archive") == 3
    queue.retry_now(destination="iot")
    assert queue.maybe_flush(uploaders["iot"], destination="iot") == 3
    iot_keys = [request.headers["idempotency-key"] for request in servers["iot"].requests]
    (archive_key,) = [request.headers["idempotency-key"] for request in servers["archive"].requests]
    assert len(iot_keys) == 2 and iot_keys[0] == iot_keys[1]  # the retry of the same batch
    assert archive_key != iot_keys[0]


class Batches:
    """An uploader that takes every batch and keeps their sizes."""

    def __init__(self) -> None:
        self.sizes: list = []

    def post_batch(self, payloads: list) -> bool:
        self.sizes.append(len(payloads))
        return True


def test_each_destination_flushes_with_its_own_options(db_path: str) -> None:
    options = {"iot": {"max_batch_items": 2, "daily_message_limit": 3}, "archive": {}}
    with CloudSyncQueue(db_path, destinations=options, max_batch_items=100) as queue:
        queue.enqueue_many([{"n": n} for n in range(5)])
        iot, archive = Batches(), Batches()
        assert queue.maybe_flush(iot, destination="iot") == 3  # its daily budget
        assert queue.maybe_flush(archive, destination="archive") == 5
        assert iot.sizes == [2, 1] and archive.sizes == [5]
        figures = queue.get_stats()["destinations"]
        assert figures["iot"]["messages_sent_today"] == 3 and figures["archive"]["messages_sent_today"] == 5
        queue.reset_daily_counters()
        assert queue.get_stats()["destinations"]["iot"]["messages_sent_today"] == 0
        assert queue.maybe_flush(iot, destination="iot") == 2


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"iot": {"max_batch_items": 0}}, ValueError, r"destinations\['iot'\]: .*max_batch_items"),
        ({"iot": {"db_path": "x"}}, ValueError, r"destinations\['iot'\]: unknown options \['db_path'\]"),
        ({"iot": {"max_queue_items": 5}}, ValueError, "unknown options"),
        ({"iot": 5}, TypeError, r"destinations\['iot'\] must be a mapping"),
    ],
)
def test_bad_destination_options_name_the_destination_before_the_file_is_made(
    db_path: str, options: Any, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        CloudSyncQueue(db_path, destinations=options)
    assert not os.path.exists(db_path)


def test_removing_a_destination_drops_what_it_still_had_on_purpose(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue_many([{"n": n} for n in range(3)])
        queue.enqueue_many([{"only": n} for n in range(2)], destinations=("archive",))
        assert queue.maybe_flush(Recording(), destination="iot") == 3
        assert queue.remove_destination("archive") == 5
        assert queue.destinations == ("iot",)
        assert queue.pending_count() == 0
        with pytest.raises(ValueError, match="unknown destination 'archive'"):
            queue.enqueue({"n": 1}, destinations=("archive",))
        queue.enqueue({"n": 9})
    assert CloudSyncQueue.destinations_of(db_path) == ("iot",)
    with CloudSyncQueue(db_path, destinations=("iot",)) as queue:
        assert queue.pending_count(destination="iot") == 1
        leftover = rawsql.execute(queue, "SELECT COUNT(*) FROM sync_meta WHERE key LIKE 'dest.archive.%'")
        assert leftover.fetchone()[0] == 0


def test_a_sealed_queue_seals_each_destinations_dead_letters_and_rekeys_them(db_path: str) -> None:
    keys = {"k1": os.urandom(32)}
    current = ["k1"]

    def key(key_id: Any) -> Any:
        return (current[0], keys[current[0]]) if key_id is None else keys[key_id]

    with CloudSyncQueue(db_path, destinations={"iot": {"max_attempts": 1}, "archive": {}}, encryption_key=key) as q:
        q.enqueue({"secret": "s3cret-payload"})

        class Refusing:
            def post_batch(self, payloads: list) -> Any:
                from pyv_edge_agent.cloud_sync import UploadError

                raise UploadError("refused", status=422)

        q.maybe_flush(Refusing(), destination="iot")
        assert q.maybe_flush(Recording(), destination="archive") == 1
        (stored,) = rawsql.execute(q, "SELECT payload FROM sync_dead_deliveries").fetchone()
        assert stored.startswith("~") and "s3cret" not in stored
        keys["k2"] = os.urandom(32)
        current[0] = "k2"
        assert q.rekey() == 1
        del keys["k1"]
        (dead,) = q.dead_letters(destination="iot")
        assert dead.payload == {"secret": "s3cret-payload"}


class Payloads:
    """An uploader that keeps each batch's payloads."""

    def __init__(self) -> None:
        self.batches: list = []

    def post_batch(self, payloads: list) -> bool:
        self.batches.append(list(payloads))
        return True


def test_newest_first_sends_the_live_data_first_and_the_backlog_after(db_path: str) -> None:
    options = {"iot": {"order": "newest_first", "max_batch_items": 3}, "archive": {"max_batch_items": 3}}
    with CloudSyncQueue(db_path, destinations=options) as queue:
        queue.enqueue_many([{"n": n} for n in range(7)])
        queue.enqueue({"alarm": 1}, priority=1)
        iot, archive = Payloads(), Payloads()
        assert queue.peek(2, destination="iot")[1].payload == {"n": 6}
        queue.maybe_flush(iot, destination="iot", stop=_stop_after(iot, 2))
        queue.enqueue_many([{"n": n} for n in range(7, 9)])  # live data arrives mid-drain
        queue.maybe_flush(iot, destination="iot")
        queue.maybe_flush(archive, destination="archive")
        shown = [[p.get("n", "alarm") for p in batch] for batch in iot.batches]
        assert shown == [["alarm", 6, 5], [4, 3, 2], [8, 7, 1], [0]]
        assert [[p.get("n", "alarm") for p in batch] for batch in archive.batches] == [
            ["alarm", 0, 1],
            [2, 3, 4],
            [5, 6, 7],
            [8],
        ]
        assert queue.pending_count() == 0


def _stop_after(uploader: Payloads, batches: int) -> Any:
    """A stop event that is set once ``uploader`` has taken ``batches`` batches."""
    import threading

    class Stop(threading.Event):
        def is_set(self) -> bool:
            return len(uploader.batches) >= batches

    return Stop()


def test_newest_first_retries_a_failed_batch_whole_and_loses_nothing(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations={"iot": {"order": "newest_first", "max_batch_items": 4}}) as queue:
        queue.enqueue_many([{"n": n} for n in range(10)])
        assert queue.maybe_flush(Recording(fail=True), destination="iot") == 0
        queue.retry_now(destination="iot")
        iot = Payloads()
        assert queue.maybe_flush(iot, destination="iot") == 10
        # The failed batch goes again whole (after the items never tried, as in any queue).
        assert [[p["n"] for p in batch] for batch in iot.batches] == [[5, 4, 3, 2], [1, 0], [9, 8, 7, 6]]
        assert sorted(p["n"] for batch in iot.batches for p in batch) == list(range(10))


def test_a_bad_order_is_refused_naming_the_destination(db_path: str) -> None:
    with pytest.raises(ValueError, match=r"destinations\['iot'\]\['order'\] must be one of 'oldest_first'"):
        CloudSyncQueue(db_path, destinations={"iot": {"order": "random"}})
    assert not os.path.exists(db_path)


def test_dequeue_ack_and_nack_by_hand_per_destination(two: CloudSyncQueue) -> None:
    ids = two.enqueue_many([{"n": n} for n in range(4)])
    iot = two.dequeue(10, destination="iot")
    assert [item.id for item in iot] == ids
    assert two.ack(ids[:2], destination="iot") == 2
    assert two.ack(ids[:2], destination="iot") == 0  # already off its list
    assert two.nack(ids[2:], 300, destination="iot") == 2
    assert two.dequeue(10, destination="iot") == []  # nacked: hidden for 300 s
    assert two.maybe_flush(Recording(), destination="iot") == 0
    assert two.pending_count(destination="iot") == 2
    # archive never saw any of it: all four still due there, and stored once.
    assert [item.id for item in two.dequeue(10, destination="archive")] == ids
    assert two.ack(ids, destination="archive") == 4
    assert two.pending_count() == 2  # the two iot still has to deliver
    with pytest.raises(ValueError, match="destination is required"):
        two.ack(ids)
    with pytest.raises(ValueError, match="destination is required"):
        two.nack(ids)
    two.retry_now(destination="iot")
    received = Recording()
    assert two.maybe_flush(received, destination="iot") == 2
    assert [p["n"] for p in received.received] == [2, 3]
    assert two.pending_count() == 0
    assert rawsql.execute(two, "SELECT COUNT(*) FROM sync_routes").fetchone()[0] == 0


def test_each_destination_is_paced_by_its_own_buckets(db_path: str) -> None:
    options = {"iot": {"max_items_per_second": 4.0, "pacing_burst_seconds": 1.0}, "archive": {}}
    with CloudSyncQueue(db_path, destinations=options) as queue:
        queue.enqueue_many([{"n": n} for n in range(20)])
        iot, archive = Payloads(), Payloads()
        # iot's first batch is one full bucket; the stop ends the call before it waits for more.
        queue.maybe_flush(iot, destination="iot", stop=_stop_after(iot, 1))
        assert queue.maybe_flush(archive, destination="archive") == 20
        assert [len(batch) for batch in iot.batches] == [4]
        assert [len(batch) for batch in archive.batches] == [20]
