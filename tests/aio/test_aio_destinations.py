"""The asyncio API on a queue with several destinations (issue 24): routing through
``AsyncCloudSyncQueue`` and its group commit, and ``AsyncSyncWorker`` running one loop per
destination on real loopback servers, a dead destination never holding back a live one."""

import asyncio
import socket
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest
import rawsql
from aio_support import StreamUploader, eventually, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue, AsyncSyncWorker
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"
TWO = ("iot", "archive")


def closed_port() -> int:
    """A loopback port nothing listens on: a connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def routes(db_path: str) -> Dict[int, Tuple[str, ...]]:
    """Each stored item's destinations, read with a connection of its own."""
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        bits = {ident: name for name, ident in rawsql.execute(queue, "SELECT name, id FROM sync_destinations")}
        rows = rawsql.execute(queue, "SELECT item_id, destinations FROM sync_routes").fetchall()
    return {item_id: tuple(sorted(name for ident, name in bits.items() if mask >> ident & 1)) for item_id, mask in rows}


@pytest.fixture
def two_servers() -> Any:
    with IngestServer(api_key=KEY) as iot, IngestServer(api_key=KEY) as archive:
        yield iot, archive


# -- the queue --------------------------------------------------------------------------


def test_routing_reads_and_flushes_per_destination(
    db_path: str, two_servers: Tuple[IngestServer, IngestServer]
) -> None:
    iot_server, archive_server = two_servers

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO) as queue:
            assert queue.destinations == TWO
            both = await queue.enqueue({"to": "both"})
            iot_only = await queue.enqueue({"to": "iot"}, destinations=["iot"])
            archived = await queue.enqueue_many(
                [{"to": "archive", "n": n} for n in range(3)], destinations=("archive",)
            )
            alarm = await queue.enqueue({"alarm": 1}, priority=Priority.CRITICAL, destinations=("archive",))
            assert await queue.pending_count() == 6
            assert await queue.pending_count("iot") == 2 and await queue.pending_count(destination="archive") == 5
            assert [item.id for item in await queue.dequeue(10, destination="iot")] == [both, iot_only]
            assert [item.id for item in await queue.peek(2, destination="archive")] == [alarm, both]
            only_alarms = await queue.peek(5, priority=Priority.CRITICAL, destination="archive")
            assert [item.id for item in only_alarms] == [alarm]
            with pytest.raises(ValueError, match="destination is required"):
                await queue.flush(StreamUploader(iot_server.url, KEY))
            with pytest.raises(ValueError, match="destination is required"):
                await queue.next_due_in()
            assert await queue.next_due_in("iot") == 0

            assert await queue.flush(StreamUploader(iot_server.url, KEY), destination="iot") == 2
            assert await queue.pending_count("iot") == 0 and await queue.pending_count() == 5
            assert await queue.flush(StreamUploader(archive_server.url, KEY), destination="archive") == 5
            assert await queue.pending_count() == 0 and await queue.next_due_in("archive") is None
            assert archived == list(range(iot_only + 1, iot_only + 4))

    run(main)
    assert iot_server.items == [{"to": "both"}, {"to": "iot"}]
    assert archive_server.items[0] == {"alarm": 1}  # most important first, for each destination
    assert sorted(map(str, archive_server.items[1:])) == sorted(
        map(str, [{"to": "both"}] + [{"to": "archive", "n": n} for n in range(3)])
    )


def test_from_dict_and_open_take_destinations(db_path: str) -> None:
    config = {"db_path": db_path, "destinations": {"iot": {"max_batch_items": 2}, "archive": {}}}
    queue = AsyncCloudSyncQueue.from_dict(config)
    assert queue.destinations == TWO
    asyncio.run(queue.close())

    async def main() -> None:
        async with await AsyncCloudSyncQueue.open(db_path, destinations=TWO) as reopened:
            assert reopened.destinations == TWO
        with pytest.raises(ValueError, match="unknown options"):
            await AsyncCloudSyncQueue.open(db_path, destinations={"iot": {"max_queue_items": 5}, "archive": {}})

    run(main)


def test_concurrent_enqueues_keep_each_items_destinations(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_queue = CloudSyncQueue(db_path, destinations=TWO)
    commits: List[int] = []
    enqueue_many = sync_queue.enqueue_many

    def recording(payloads: Any, *args: Any) -> List[int]:
        commits.append(len(payloads))
        return enqueue_many(payloads, *args)

    monkeypatch.setattr(sync_queue, "enqueue_many", recording)
    targets: List[Any] = [None, ("iot",), ["archive"], ("archive", "iot")]

    async def main() -> Dict[int, Any]:
        queue = AsyncCloudSyncQueue.wrap(sync_queue)
        asked = [targets[i % len(targets)] for i in range(400)]
        ids = await asyncio.gather(*(queue.enqueue({"i": i}, destinations=to) for i, to in enumerate(asked)))
        await queue.close()
        return dict(zip(ids, asked))

    asked = run(main)
    sync_queue.close()
    # Grouped, never one commit per item: one transaction per route among those waiting.
    assert sum(commits) == 400 and len(commits) < 40
    stored = routes(db_path)
    assert len(stored) == 400
    for item_id, to in asked.items():
        assert stored[item_id] == tuple(sorted(TWO if to is None else to)), (item_id, to)


BAD_ROUTES: List[Tuple[Any, type, str]] = [
    (("nowhere",), ValueError, "destinations: unknown destination 'nowhere'"),
    ((), ValueError, "at least one destination"),
    (("iot", "iot"), ValueError, "more than once"),
    ("iot", TypeError, "sequence of destination names"),
    ({"iot"}, TypeError, "sequence of destination names"),
]


@pytest.mark.parametrize("destinations, error, match", BAD_ROUTES)
def test_a_bad_route_fails_its_caller_alone_and_writes_nothing(
    db_path: str, destinations: Any, error: type, match: str
) -> None:
    async def main() -> List[Any]:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO) as queue:
            good = [queue.enqueue({"good": i}, destinations=("iot",)) for i in range(10)]
            bad = [queue.enqueue({"bad": i}, destinations=destinations) for i in range(3)]
            outcomes = await asyncio.gather(*good, *bad, return_exceptions=True)
            with pytest.raises(error, match=match):
                await queue.enqueue_many([{"bad": "many"}], destinations=destinations)
            return outcomes

    outcomes = run(main)
    assert all(isinstance(outcome, int) for outcome in outcomes[:10])
    for outcome in outcomes[10:]:
        assert isinstance(outcome, error) and match in str(outcome), outcome
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        assert queue.pending_count() == 10 and queue.pending_count("iot") == 10
        assert queue.pending_count("archive") == 0


def test_bad_destination_names_are_refused_before_anything_is_written(db_path: str) -> None:
    uploader = StreamUploader(f"http://127.0.0.1:{closed_port()}/ingest", KEY)
    calls: List[Callable[[AsyncCloudSyncQueue], Awaitable[Any]]] = [
        lambda q: q.flush(uploader, destination="nowhere"),
        lambda q: q.pending_count("nowhere"),
        lambda q: q.dequeue(5, destination="nowhere"),
        lambda q: q.peek(5, destination="nowhere"),
        lambda q: q.next_due_in("nowhere"),
        lambda q: q.backoff_seconds("nowhere"),
        lambda q: q.end_backoff("nowhere"),
        lambda q: q.retry_now("nowhere"),
    ]

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO) as queue:
            await queue.enqueue({"n": 1})
            for call in calls:
                with pytest.raises(ValueError, match="destination: unknown destination 'nowhere'"):
                    await call(queue)
            with pytest.raises(ValueError, match="unknown destination 'nowhere'"):
                AsyncSyncWorker(queue, {"iot": uploader, "nowhere": uploader}, handle_sigterm=False)
            with pytest.raises(ValueError, match="mapping of destinations to uploaders is empty"):
                AsyncSyncWorker(queue, {}, handle_sigterm=False)
            with pytest.raises(TypeError, match="post_batch"):
                AsyncSyncWorker(queue, {"iot": uploader, "archive": object()}, handle_sigterm=False)
            assert uploader.started == 0
            assert await queue.pending_count("iot") == await queue.pending_count("archive") == 1

    run(main)


# -- the worker -------------------------------------------------------------------------


def test_the_worker_delivers_each_destination_its_own_items(
    db_path: str, two_servers: Tuple[IngestServer, IngestServer]
) -> None:
    iot_server, archive_server = two_servers

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO, max_batch_items=7) as queue:
            uploaders = {"iot": StreamUploader(iot_server.url, KEY), "archive": StreamUploader(archive_server.url, KEY)}
            async with AsyncSyncWorker(queue, uploaders, interval=0.05, handle_sigterm=False) as worker:
                assert worker.is_alive()
                await queue.enqueue_many([{"both": n} for n in range(20)])
                await asyncio.gather(*(queue.enqueue({"iot": n}, destinations=("iot",)) for n in range(10)))
                await queue.enqueue_many([{"archive": n} for n in range(5)], destinations=("archive",))
                assert await eventually(lambda: len(iot_server.items) == 30 and len(archive_server.items) == 25)
            # Stopped: every batch the servers hold is settled (acked) by now.
            assert not worker.is_alive() and worker.flushed == 55
            assert await queue.pending_count() == 0
            assert queue.queue._link.wakers == []

    run(main)
    assert sorted(map(str, iot_server.items)) == sorted(
        map(str, [{"both": n} for n in range(20)] + [{"iot": n} for n in range(10)])
    )
    assert sorted(map(str, archive_server.items)) == sorted(
        map(str, [{"both": n} for n in range(20)] + [{"archive": n} for n in range(5)])
    )
    assert iot_server.duplicates == archive_server.duplicates == 0


@pytest.mark.parametrize("dead_kind", ["async", "sync"])
def test_a_dead_destination_does_not_hold_back_the_live_one(db_path: str, server: IngestServer, dead_kind: str) -> None:
    dead_url = f"http://127.0.0.1:{closed_port()}/ingest"  # nothing listens: refused
    dead: Any = StreamUploader(dead_url, KEY) if dead_kind == "async" else HTTPCloudUploader(dead_url, KEY, timeout=2.0)

    async def main() -> None:
        # The dead destination fails again and again, soon backing off for minutes, and is
        # probed meanwhile: a live loop that waited on any of that would miss the counts.
        options: Dict[str, Any] = {"retry_base_seconds": 0.05, "retry_max_seconds": 3600, "probe_interval": 0.1}
        async with AsyncCloudSyncQueue(db_path, destinations=TWO, max_batch_items=10, **options) as queue:
            live = StreamUploader(server.url, KEY)
            async with AsyncSyncWorker(queue, {"iot": live, "archive": dead}, interval=0.2, handle_sigterm=False):
                for sent in range(20, 101, 20):
                    await queue.enqueue_many([{"round": sent // 20 - 1, "n": n} for n in range(20)])
                    assert await eventually(lambda sent=sent: len(server.items) == sent)
                await queue.enqueue({"alarm": True}, priority=Priority.CRITICAL)  # wakes both loops
                assert await eventually(lambda: len(server.items) == 101)
                assert queue.queue.destination("archive").link_down
                assert await queue.backoff_seconds("iot") == 0
            assert await queue.pending_count("iot") == 0
            assert await queue.pending_count("archive") == 101 == await queue.pending_count()  # kept once
            assert (await queue.get_stats())["failed_batches"] >= 1

    run(main)
    assert sorted(str(item) for item in server.items) == sorted(
        str(item) for item in [{"round": r, "n": n} for r in range(5) for n in range(20)] + [{"alarm": True}]
    )
    if dead_kind == "async":
        assert dead.started >= 1 and dead.sent == 0


def test_kick_wakes_every_destination(db_path: str, two_servers: Tuple[IngestServer, IngestServer]) -> None:
    iot_server, archive_server = two_servers
    uploaders = {"iot": StreamUploader(iot_server.url, KEY), "archive": StreamUploader(archive_server.url, KEY)}
    for each in uploaders.values():
        each.port = closed_port()  # the link is down: refused

    async def main() -> None:
        # An hour's backoff that no probe ends: only kick() sends before it is over.
        options: Dict[str, Any] = {"retry_base_seconds": 3600, "retry_max_seconds": 3600, "probe_interval": None}
        async with AsyncCloudSyncQueue(db_path, destinations=TWO, **options) as queue:
            async with AsyncSyncWorker(queue, uploaders, interval=3600, handle_sigterm=False) as worker:
                await queue.enqueue_many([{"n": n} for n in range(5)])
                assert await eventually(lambda: all(each.started >= 1 for each in uploaders.values()))
                assert await eventually(lambda: all(queue.queue.destination(name).link_down for name in TWO))
                for each, live in zip(uploaders.values(), (iot_server, archive_server)):
                    each.port = live.port  # the link is back
                worker.kick()
                assert await eventually(lambda: len(iot_server.items) == len(archive_server.items) == 5)
                assert await eventually(lambda: worker.flushed == 10)

    run(main)
    assert iot_server.items == archive_server.items == [{"n": n} for n in range(5)]


def test_per_destination_backoff_through_the_async_api(db_path: str, server: IngestServer) -> None:
    refused = StreamUploader(f"http://127.0.0.1:{closed_port()}/ingest", KEY)

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO, retry_base_seconds=300) as queue:
            await queue.enqueue_many([{"n": n} for n in range(3)])
            assert await queue.flush(refused, destination="archive") == 0
            assert await queue.backoff_seconds("archive") > 0 and await queue.backoff_seconds("iot") == 0
            assert (await queue.next_due_in("archive") or 0) > 0 and await queue.next_due_in("iot") == 0
            assert await queue.end_backoff("iot") is False
            assert await queue.end_backoff("archive") is True  # no answer: a link back ends it
            assert await queue.next_due_in("archive") == 0
            assert await queue.flush(refused, destination="archive") == 0
            assert await queue.retry_now("archive") == 3
            assert await queue.flush(StreamUploader(server.url, KEY), destination="archive") == 3
            assert await queue.pending_count("iot") == 3 and await queue.pending_count("archive") == 0

    run(main)


def test_a_single_uploader_on_a_queue_with_one_destination_probes_its_link(db_path: str) -> None:
    # The backoff is an hour and the worker looks once an hour: only a probe of the one
    # destination's link (the one its flush backs off) sends before then.
    server = IngestServer(api_key=KEY).start()
    server.stop()  # refused until it starts again, on the same port
    try:

        async def main() -> None:
            options: Dict[str, Any] = {"retry_base_seconds": 3600, "retry_max_seconds": 3600, "probe_interval": 0.1}
            async with AsyncCloudSyncQueue(db_path, destinations=("iot",), **options) as queue:
                uploader = HTTPCloudUploader(server.url, KEY, timeout=2.0)
                async with AsyncSyncWorker(queue, uploader, interval=3600, handle_sigterm=False) as worker:
                    await queue.enqueue_many([{"n": n} for n in range(3)])
                    assert await eventually(lambda: queue.queue.destination("iot").link_down)
                    assert await queue.backoff_seconds() > 0  # the one destination's
                    server.start()
                    assert await eventually(lambda: worker.flushed == 3)

        run(main)
        assert server.items == [{"n": n} for n in range(3)]
    finally:
        server.stop()


def test_a_single_uploader_for_several_destinations_is_refused(db_path: str) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO) as queue:
            with pytest.raises(ValueError, match=r"uploader: this queue feeds \['archive', 'iot'\]; give a mapping"):
                AsyncSyncWorker(queue, StreamUploader(f"http://127.0.0.1:{closed_port()}/x", KEY))

    run(main)


# -- dead letters and the set of destinations -------------------------------------------


def test_dead_letters_per_destination(db_path: str, two_servers: Tuple[IngestServer, IngestServer]) -> None:
    iot_server, archive_server = two_servers
    for each in two_servers:
        each.set_limits(reject=lambda item: item.get("bad", False), reject_status=200)

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO, max_attempts=1) as queue:
            await queue.enqueue_many([{"n": n, "bad": n == 1} for n in range(3)])
            await queue.enqueue({"n": 9, "bad": True}, destinations=("archive",))
            iot, archive = StreamUploader(iot_server.url, KEY), StreamUploader(archive_server.url, KEY)
            assert await queue.flush(iot, destination="iot") == 2
            assert await queue.flush(archive, destination="archive") == 2
            (iot_dead,) = await queue.dead_letters(destination="iot")
            assert iot_dead.payload == {"n": 1, "bad": True} and iot_dead.destination == "iot"
            archive_dead = await queue.dead_letters(destination="archive")
            assert sorted(dead.payload["n"] for dead in archive_dead) == [1, 9]
            assert {dead.destination for dead in archive_dead} == {"archive"}
            stats = (await queue.get_stats())["destinations"]
            assert stats["iot"]["dead_lettered"] == 1 and stats["archive"]["dead_lettered"] == 2

            for each in two_servers:
                each.set_limits()
            assert await queue.requeue_dead_letters(destination="iot") == 1
            assert await queue.pending_count("iot") == 1 and await queue.pending_count("archive") == 0
            (nine,) = [dead.id for dead in archive_dead if dead.payload["n"] == 9]
            assert await queue.drop_dead_letters([nine], destination="archive") == 1
            assert await queue.flush(iot, destination="iot") == 1
            (left,) = await queue.dead_letters()
            assert left.payload == {"n": 1, "bad": True} and left.destination == "archive"
            with pytest.raises(ValueError, match="unknown destination 'nowhere'"):
                await queue.drop_dead_letters(destination="nowhere")
            assert await queue.drop_dead_letters() == 1 and await queue.pending_count() == 0

    run(main)
    assert iot_server.items == [{"n": 0, "bad": False}, {"n": 2, "bad": False}, {"n": 1, "bad": True}]
    assert archive_server.items == [{"n": 0, "bad": False}, {"n": 2, "bad": False}]


def test_remove_destination(db_path: str) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, destinations=TWO) as queue:
            await queue.enqueue_many([{"n": n} for n in range(3)])
            await queue.enqueue({"n": 3}, destinations=("archive",))
            assert await queue.remove_destination("archive") == 4
            assert queue.destinations == ("iot",)
            assert await queue.pending_count() == 3 == await queue.pending_count("iot")
        async with AsyncCloudSyncQueue(db_path, destinations=("iot",)) as reopened:
            assert await reopened.pending_count("iot") == 3

    run(main)


def test_a_backlog_budget_holds_through_the_asyncio_api(db_path: str) -> None:
    options = {"live": {}, "down": {"max_backlog_items": 10, "on_backlog_full": "drop_newest"}}

    async def main() -> Tuple[int, int, int]:
        async with await AsyncCloudSyncQueue.open(db_path, destinations=options) as queue:
            await asyncio.gather(*(queue.enqueue({"n": n}) for n in range(50)))
            stats = await queue.get_stats()
            live = await queue.pending_count(destination="live")
            down = await queue.pending_count(destination="down")
            return live, down, stats["destinations"]["down"]["dropped_total"]

    assert run(main) == (50, 10, 40)
