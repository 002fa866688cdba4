"""Bad input: a clear exception naming the argument and value, raised before anything is
written, and the stored items and file unchanged."""

import hashlib
import os
from typing import Any, Callable, Dict, Tuple

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, DatabaseError, HTTPCloudUploader, Priority


def _snapshot(queue: CloudSyncQueue) -> Any:
    rows = rawsql.execute(queue, "SELECT * FROM sync_queue ORDER BY id").fetchall()
    return rows, queue.messages_sent_today


class Unserialisable:
    def __str__(self) -> str:
        raise RuntimeError("no str either")


BAD_CALLS: Dict[str, Callable[[CloudSyncQueue], Any]] = {
    "payload list": lambda q: q.enqueue([1, 2]),  # type: ignore[arg-type]
    "payload str": lambda q: q.enqueue('{"a": 1}'),  # type: ignore[arg-type]
    "payload None": lambda q: q.enqueue(None),  # type: ignore[arg-type]
    "payload big int": lambda q: q.enqueue({"n": 2**70}),
    "payload surrogate": lambda q: q.enqueue({"s": "\ud800"}),
    "priority 0": lambda q: q.enqueue({"a": 1}, priority=0),  # type: ignore[arg-type]
    "priority 5": lambda q: q.enqueue({"a": 1}, priority=5),  # type: ignore[arg-type]
    "priority str": lambda q: q.enqueue({"a": 1}, priority="CRITICAL"),  # type: ignore[arg-type]
    "priority bool": lambda q: q.enqueue({"a": 1}, priority=True),  # type: ignore[arg-type]
    "priority float": lambda q: q.enqueue({"a": 1}, priority=1.0),  # type: ignore[arg-type]
    "ttl negative": lambda q: q.enqueue({"a": 1}, ttl_seconds=-1),
    "ttl float": lambda q: q.enqueue({"a": 1}, ttl_seconds=1.5),  # type: ignore[arg-type]
    "ttl str": lambda q: q.enqueue({"a": 1}, ttl_seconds="60"),  # type: ignore[arg-type]
    "ttl huge": lambda q: q.enqueue({"a": 1}, ttl_seconds=2**63),
    "many with one bad": lambda q: q.enqueue_many([{"a": 1}, {"b": 2}, "bad"]),  # type: ignore[list-item]
    "many not a sequence": lambda q: q.enqueue_many({"a": 1}),  # type: ignore[arg-type]
    "priority 9 in enqueue_many": lambda q: q.enqueue_many([{"a": 1}], priority=9),  # type: ignore[arg-type]
    "batch_size 0": lambda q: q.dequeue(batch_size=0),
    "batch_size float": lambda q: q.dequeue(batch_size=2.0),  # type: ignore[arg-type]
    "n negative": lambda q: q.peek(n=-3),
    "ack str ids": lambda q: q.ack(["1"]),  # type: ignore[list-item]
    "ack float ids": lambda q: q.ack([1, 2.0]),  # type: ignore[list-item]
    "ack bool ids": lambda q: q.ack([True]),
    "ack a string": lambda q: q.ack("12"),  # type: ignore[arg-type]
    "ack an int": lambda q: q.ack(5),  # type: ignore[arg-type]
    "ack id too big": lambda q: q.ack([2**64]),
    "nack bad id": lambda q: q.nack([1, None]),  # type: ignore[list-item]
    "nack negative delay": lambda q: q.nack([1], retry_delay_seconds=-1),
    "nack nan delay": lambda q: q.nack([1], retry_delay_seconds=float("nan")),
    "nack str delay": lambda q: q.nack([1], retry_delay_seconds="5"),  # type: ignore[arg-type]
    "flush without post_batch": lambda q: q.maybe_flush(object()),
}

EXPECTED_WORDS = {
    "payload": "payload",
    "priority": "priority",
    "ttl": "ttl_seconds",
    "many": "payloads",
    "batch_size": "batch_size",
    "n ": "n ",
    "ack": "ids",
    "nack bad": "ids[1]",
    "nack neg": "retry_delay_seconds",
    "nack nan": "retry_delay_seconds",
    "nack str": "retry_delay_seconds",
    "flush": "post_batch",
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_input_is_refused_and_nothing_changes(queue: CloudSyncQueue, case: str) -> None:
    queue.enqueue({"keep": 1}, priority=Priority.CRITICAL)
    queue.enqueue({"keep": 2})
    before = _snapshot(queue)
    with pytest.raises((TypeError, ValueError)) as excinfo:
        BAD_CALLS[case](queue)
    word = next(
        w for prefix, w in sorted(EXPECTED_WORDS.items(), key=lambda kv: -len(kv[0])) if case.startswith(prefix)
    )
    assert word in str(excinfo.value)
    assert _snapshot(queue) == before


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"durability": "sometimes"}, "durability"),
        ({"busy_timeout": -1}, "busy_timeout"),
        ({"max_batch_items": 0}, "max_batch_items"),
        ({"max_batch_bytes": "big"}, "max_batch_bytes"),
        ({"retry_base_seconds": float("inf")}, "retry_base_seconds"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"daily_message_limit": -1}, "daily_message_limit"),
        ({"daily_message_limit": "100"}, "daily_message_limit"),
        # SQLite keeps it in milliseconds in a C int: above 24.8 days it wrapped, to 0 or worse.
        ({"busy_timeout": 2_147_484.0}, "busy_timeout"),
        ({"busy_timeout": 30 * 86400}, "busy_timeout"),
    ],
)
def test_bad_options_are_refused(db_path: str, kwargs: Dict[str, Any], word: str) -> None:
    with pytest.raises((TypeError, ValueError), match=word):
        CloudSyncQueue(db_path, **kwargs)
    assert not os.path.exists(db_path)


def test_bad_paths(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="db_path"):
        CloudSyncQueue(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="db_path"):
        CloudSyncQueue("")
    blocker = os.path.join(tmp_path, "file")
    open(blocker, "w").close()
    with pytest.raises(OSError) as excinfo:
        CloudSyncQueue(os.path.join(blocker, "sub", "q.db"))
    assert blocker in str(excinfo.value)


@pytest.mark.parametrize("form", ["file:{}", "FILE:{}?mode=rwc", "/{}", "{}\x00x"])
def test_paths_sqlite_would_read_otherwise_are_refused(tmp_path: Any, form: str) -> None:
    """``file:`` names are URIs to SQLite; an absolute path starting with ``//`` opens, but
    its read-only reopening (a ``file:`` URI) reads what follows as a host."""
    path = os.path.join(os.fspath(tmp_path), "q.db")
    with pytest.raises(ValueError, match="db_path"):
        CloudSyncQueue(form.format(path))
    assert os.listdir(tmp_path) == []
    CloudSyncQueue(os.path.join(os.fspath(tmp_path), "file:q.db")).close()  # only a leading file: is a URI
    assert os.path.exists(os.path.join(os.fspath(tmp_path), "file:q.db"))


def test_file_that_is_not_a_database_is_never_overwritten(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "notes.db")
    with open(path, "wb") as handle:
        handle.write(b"these are my notes, not a database\n" * 200)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    with pytest.raises(DatabaseError, match="notes.db"):
        CloudSyncQueue(path)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    assert sorted(os.listdir(tmp_path)) == ["notes.db"]


def test_from_dict_refuses_unknown_keys(db_path: str) -> None:
    with pytest.raises(ValueError, match="db_pth"):
        CloudSyncQueue.from_dict({"db_pth": db_path})
    with pytest.raises(TypeError, match="mapping"):
        CloudSyncQueue.from_dict([("db_path", db_path)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"endpoint": "ftp://example.invalid/x", "api_key": "k"}, "endpoint"),
        ({"endpoint": "not a url", "api_key": "k"}, "endpoint"),
        ({"endpoint": 7, "api_key": "k"}, "endpoint"),
        ({"endpoint": "http://127.0.0.1/x", "api_key": ""}, "api_key"),
        ({"endpoint": "http://127.0.0.1/x", "api_key": "k", "timeout": 0}, "timeout"),
        ({"endpoint": "http://127.0.0.1/x", "api_key": "k", "gzip_min_bytes": -1}, "gzip_min_bytes"),
        ({"endpoint": "http://127.0.0.1/x", "api_key": "k", "allow_insecure_http": 1}, "allow_insecure_http"),
        ({"endpoint": "http://127.0.0.1/x", "api_key": "k", "ca_certs": 3}, "ca_certs"),
    ],
)
def test_bad_uploader_arguments(kwargs: Dict[str, Any], word: str) -> None:
    with pytest.raises((TypeError, ValueError), match=word):
        HTTPCloudUploader(**kwargs)


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


NESTED_CALLS: Dict[str, Tuple[str, Callable[[CloudSyncQueue, Any], Any]]] = {
    "enqueue": ("payload", lambda q, deep: q.enqueue(deep)),
    "enqueue_many": ("payloads[1]", lambda q, deep: q.enqueue_many([{"a": 1}, deep])),
    "enqueue dict": ("payload", lambda q, deep: q.enqueue({"deep": deep})),
    "ack": ("ids[0]", lambda q, deep: q.ack([deep])),
    "ack nested list": ("ids[0]", lambda q, deep: q.ack(deep)),
    "nack": ("ids[1]", lambda q, deep: q.nack([1, deep])),
    "requeue_dead_letters": ("ids[0]", lambda q, deep: q.requeue_dead_letters([deep])),
    "drop_dead_letters": ("ids[0]", lambda q, deep: q.drop_dead_letters([deep])),
    "ttl_seconds": ("ttl_seconds", lambda q, deep: q.enqueue({"a": 1}, ttl_seconds=deep)),
}


@pytest.mark.parametrize("case", sorted(NESTED_CALLS))
def test_deeply_nested_input_is_named_not_a_recursion_error(queue: CloudSyncQueue, case: str) -> None:
    """A value nested thousands deep: the error names the argument and says it is nested too
    deeply (a RecursionError from ``repr`` used to escape instead), and nothing changes."""
    queue.enqueue({"keep": 1})
    before = _snapshot(queue)
    argument, call = NESTED_CALLS[case]
    with pytest.raises((TypeError, ValueError)) as excinfo:
        call(queue, _nested(100_000))
    message = str(excinfo.value)
    assert message.startswith(argument) and ("nested too deeply" in message or "Recursion limit" in message), message
    assert _snapshot(queue) == before
