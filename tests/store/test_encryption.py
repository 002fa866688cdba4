"""Encryption at rest (``encryption_key=``): what reaches the file, the WAL, the dead letters
and a quarantined file is sealed; tampering and moves are caught; a missing key changes
nothing; rotation and ``rekey``."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Dict, List, Optional, Sequence, Tuple

import orjson
import pytest
import rawsql
from crypto_extra import import_or_skip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyv_edge_agent.cloud_sync import (
    CloudSyncQueue,
    DecryptionError,
    HTTPCloudUploader,
    MissingKeyError,
    Priority,
    _codec,
)
from pyv_edge_agent.cloud_sync._store import seal
from pyv_edge_agent.cloud_sync.cli import main as cli_main
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

import_or_skip("cryptography")

CANARY = "CANARY-7f3a9c-plaintext"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))


def _files_bytes(path: str) -> Dict[str, bytes]:
    """The bytes of the database and its companions, whichever exist."""
    found = {}
    directory = os.path.dirname(path) or "."
    for name in os.listdir(directory):
        if name.startswith(os.path.basename(path)):
            with open(os.path.join(directory, name), "rb") as handle:
                found[name] = handle.read()
    return found


def _assert_no_canary(path: str) -> None:
    files = _files_bytes(path)
    assert files, f"no files at {path}"
    for name, data in files.items():
        assert CANARY.encode() not in data, f"the canary is readable in {name}"


def _table(queue: CloudSyncQueue, table: str = "sync_queue") -> List[Tuple[Any, ...]]:
    return rawsql.execute(queue, f"SELECT * FROM {table} ORDER BY id").fetchall()


def _payloads(count: int) -> List[Dict[str, Any]]:
    return [{"secret": CANARY, "seq": i, "where": [52.5 + i, 13.4]} for i in range(count)]


class Recorder:
    """Takes the spliced body, as HTTPCloudUploader does, and keeps it."""

    def __init__(self, answer: Any = True) -> None:
        self.bodies: List[bytes] = []
        self.answer = answer

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> bool:
        raise AssertionError("the flush must splice")

    def post_encoded_batch(self, body: bytes, count: int) -> Any:
        self.bodies.append(body)
        return self.answer


# -- the round trip -----------------------------------------------------------------------


@pytest.mark.parametrize("cipher", seal.CIPHERS)
def test_sealed_items_read_back_and_nothing_plain_reaches_the_files(db_path: str, cipher: str) -> None:
    with CloudSyncQueue(db_path, encryption_key=KEY, encryption_cipher=cipher) as queue:
        first = queue.enqueue({"secret": CANARY, "single": True}, Priority.CRITICAL)
        ids = queue.enqueue_many(_payloads(50))
        assert ids == list(range(first + 1, first + 51))
        items = queue.dequeue(100)
        assert [item.id for item in items] == [first] + ids
        assert items[0].payload == {"secret": CANARY, "single": True}
        assert [item.payload for item in items[1:]] == _payloads(50)
        assert queue.peek(1, priority=Priority.CRITICAL)[0].payload["single"] is True
        stored = [row[1] for row in _table(queue)]
        assert all(text.startswith("~1" + cipher[0]) for text in stored)
        _assert_no_canary(db_path)
        assert queue.get_stats()["depth"] == 51
    _assert_no_canary(db_path)


def test_ids_stay_consecutive_and_never_reused_around_sealed_inserts(db_path: str) -> None:
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        assert queue.enqueue_many(_payloads(3)) == [1, 2, 3]
        queue.ack([3])
        assert queue.enqueue({"a": 1}) == 4
    with CloudSyncQueue(db_path) as plain, pytest.raises(MissingKeyError, match="holds sealed items"):
        plain.enqueue({"plain": True})
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        queue.ack([4])
        assert queue.enqueue({"b": 2}) == 5
        assert [item.id for item in queue.dequeue(10)] == [1, 2, 5]


# Any text JSON can carry (lone surrogates are not UTF-8, and are refused at enqueue).
_TEXT = st.characters(blacklist_categories=("Cs",))


@given(
    payloads=st.lists(
        st.dictionaries(
            st.text(_TEXT, min_size=1, max_size=12),
            st.recursive(
                st.none()
                | st.booleans()
                | st.integers(-(2**63), 2**63 - 1)
                | st.text(_TEXT)
                | st.floats(allow_nan=False),
                lambda inner: (
                    st.lists(inner, max_size=4) | st.dictionaries(st.text(_TEXT, max_size=6), inner, max_size=4)
                ),
                max_leaves=10,
            ),
            max_size=6,
        ),
        min_size=1,
        max_size=8,
    ),
    cipher=st.sampled_from(seal.CIPHERS),
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_payloads_round_trip_byte_for_byte(tmp_path: Any, payloads: List[Dict[str, Any]], cipher: str) -> None:
    path = os.path.join(os.fspath(tmp_path), f"rt-{time.monotonic_ns()}.db")
    recorder = Recorder()
    with CloudSyncQueue(path, encryption_key=KEY, encryption_cipher=cipher) as queue:
        queue.enqueue_many(payloads)
        expected = [_codec.encode_payload(p).encode() for p in payloads]
        assert [item.payload for item in queue.dequeue(len(payloads))] == [orjson.loads(t) for t in expected]
        assert queue.maybe_flush(recorder) == len(payloads)
    # The flush splices the opened texts, exactly what a queue without a key would send.
    assert b"".join(recorder.bodies) == b"[" + b",".join(expected) + b"]"


def test_the_flush_sends_the_opened_texts_and_acks_them(db_path: str, server: IngestServer) -> None:
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader

    with CloudSyncQueue(db_path, encryption_key=KEY, max_batch_items=20) as queue:
        queue.enqueue_many(_payloads(45))
        uploader = HTTPCloudUploader(server.url, api_key="test-key")
        assert queue.maybe_flush(uploader) == 45
        uploader.close()
        assert server.items == _payloads(45)
        assert queue.pending_count() == 0


def test_concurrent_single_enqueues_are_all_sealed_and_readable(db_path: str) -> None:
    import threading

    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        threads = [
            threading.Thread(target=lambda n=n: [queue.enqueue({"secret": CANARY, "t": n, "i": i}) for i in range(25)])
            for n in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        items = queue.dequeue(200)
        assert sorted((item.payload["t"], item.payload["i"]) for item in items) == [
            (n, i) for n in range(4) for i in range(25)
        ]
    _assert_no_canary(db_path)


# -- dead letters -------------------------------------------------------------------------


def test_dead_letters_stay_sealed_and_come_back_readable(db_path: str) -> None:
    with CloudSyncQueue(db_path, encryption_key=KEY, max_attempts=1) as queue:
        queue.enqueue_many(_payloads(3))

        class Refusing(Recorder):
            def post_encoded_batch(self, body: bytes, count: int) -> Any:
                from pyv_edge_agent.cloud_sync import UploadError

                raise UploadError("bad schema", status=422)

        queue.maybe_flush(Refusing())
        assert queue.pending_count() == 0
        stored = _table(queue, "sync_dead_letters")
        assert len(stored) == 3 and all(row[1].startswith("~1c") for row in stored)
        _assert_no_canary(db_path)
        letters = queue.dead_letters()
        assert [letter.payload for letter in letters] == _payloads(3)
        assert queue.requeue_dead_letters() == 3
        assert [item.payload for item in queue.dequeue(10)] == _payloads(3)
    with CloudSyncQueue(db_path) as plain:
        rawsql.execute(plain, "INSERT INTO sync_dead_letters SELECT *, 422, 'x', 0 FROM sync_queue")
        with pytest.raises(MissingKeyError, match="sync_dead_letters"):
            plain.dead_letters()


# -- tampering and moves --------------------------------------------------------------------


def _sealed_queue(db_path: str, count: int = 3) -> CloudSyncQueue:
    queue = CloudSyncQueue(db_path, encryption_key=KEY)
    queue.enqueue_many(_payloads(count))
    return queue


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE sync_queue SET payload = substr(payload, 1, 30)"
        " || CASE substr(payload, 31, 1) WHEN 'A' THEN 'B' ELSE 'A' END || substr(payload, 32) WHERE id = 2",
        "UPDATE sync_queue SET payload = (SELECT payload FROM sync_queue WHERE id = 1) WHERE id = 2",
        "UPDATE sync_queue SET priority = 1 WHERE id = 2",
        "UPDATE sync_queue SET payload = substr(payload, 1, length(payload) - 8) WHERE id = 2",
        "UPDATE sync_queue SET payload = replace(payload, '~1c', '~1a') WHERE id = 2",
        "UPDATE sync_queue SET payload = replace(payload, '~1c', '~9c') WHERE id = 2",
    ],
    ids=["flipped-byte", "moved-from-another-row", "priority-changed", "truncated", "cipher-swapped", "unknown-format"],
)
def test_tampering_or_moving_a_ciphertext_is_an_error_and_changes_nothing(db_path: str, change: str) -> None:
    with _sealed_queue(db_path) as queue:
        rawsql.execute(queue, change)
        before = _table(queue)
        with pytest.raises(DecryptionError) as caught:
            queue.peek(10)
        assert caught.value.item_id == 2
        assert "item 2" in str(caught.value)
        recorder = Recorder()
        with pytest.raises(DecryptionError):
            queue.maybe_flush(recorder)
        # The others went; the damaged one stays as it was, neither sent nor dead-lettered.
        assert [orjson.loads(body) for body in recorder.bodies] == [[_payloads(3)[0], _payloads(3)[2]]]
        assert _table(queue) == [row for row in before if row[0] == 2]
        assert queue.dead_letters() == []


def test_a_ciphertext_moved_to_another_queue_file_does_not_open(tmp_path: Any) -> None:
    first, second = (os.path.join(os.fspath(tmp_path), name) for name in ("a.db", "b.db"))
    with _sealed_queue(first) as a, _sealed_queue(second) as b:
        stolen = _table(a)[0][1]
        rawsql.execute(b, "UPDATE sync_queue SET payload = ? WHERE id = 1", (stolen,))
        with pytest.raises(DecryptionError, match="moved from another row or queue file"):
            b.dequeue(1)


# -- plain rows in a sealed file -------------------------------------------------------------

_PLANT = "UPDATE sync_queue SET payload = '{\"planted\":true}' WHERE id = ?"


def test_a_plain_row_in_a_sealed_file_is_refused_dead_lettered_and_counted(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    with _sealed_queue(db_path) as queue:
        rawsql.execute(queue, _PLANT, (2,))
        assert [item.id for item in queue.peek(10)] == [1, 3]
        report = CloudSyncQueue.verify_file(db_path)
        assert not report.ok and "1 items in sync_queue are not sealed" in report.message
        recorder = Recorder()
        with caplog.at_level(logging.WARNING, logger="pyv_edge_agent.cloud_sync"):
            assert queue.maybe_flush(recorder) == 2
            queue.enqueue({"later": 1})
            rawsql.execute(queue, _PLANT, (4,))
            assert queue.maybe_flush(recorder) == 0
        sent = [item for body in recorder.bodies for item in orjson.loads(body)]
        assert sent == [_payloads(3)[0], _payloads(3)[2]]
        letters = queue.dead_letters()
        assert [(letter.id, letter.payload) for letter in letters] == [(2, {"planted": True}), (4, {"planted": True})]
        assert all("not sealed" in (letter.last_error or "") and letter.last_status is None for letter in letters)
        stats = queue.get_stats()
        assert stats["unsealed_refused_total"] == 2 and stats["depth"] == 0
        refusals = [r for r in caplog.records if "not sealed" in r.getMessage()]
        assert len(refusals) == 2  # one line per flush call, not per item
        assert CloudSyncQueue.verify_file(db_path).ok
    # A process without the key refuses them too.
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        queue.enqueue({"x": 1})
        rawsql.execute(queue, _PLANT, (5,))
    with CloudSyncQueue(db_path) as plain:
        recorder = Recorder()
        assert plain.maybe_flush(recorder) == 0 and recorder.bodies == []
        assert plain.get_stats()["unsealed_refused_total"] == 3


def test_cli_check_and_stats_name_plain_rows_in_a_sealed_file(db_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    with _sealed_queue(db_path) as queue:
        rawsql.execute(queue, _PLANT, (1,))
    assert cli_main(["check", db_path]) == 1
    assert "1 items in sync_queue are not sealed" in capsys.readouterr().out
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        queue.maybe_flush(Recorder())
    assert cli_main(["stats", db_path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unsealed_refused_total"] == 1


def test_plain_items_from_before_sealing_go_until_rekey_and_none_after(db_path: str) -> None:
    with CloudSyncQueue(db_path) as plain:
        plain.enqueue_many([{"old": i} for i in range(3)])
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        queue.enqueue_many(_payloads(2))  # ids 4, 5: items are sealed from id 4 on
        rawsql.execute(queue, _PLANT, (5,))
        assert [item.payload for item in queue.peek(10)] == [{"old": i} for i in range(3)] + _payloads(1)
        assert queue.rekey() == 3  # the old plain items; the planted one is not laundered
        assert [item.id for item in queue.peek(10)] == [1, 2, 3, 4]
        rawsql.execute(queue, _PLANT, (1,))  # after a rekey, no plain item anywhere goes
        assert [item.id for item in queue.peek(10)] == [2, 3, 4]
        recorder = Recorder()
        assert queue.maybe_flush(recorder) == 3
        assert [letter.id for letter in queue.dead_letters()] == [1, 5]
        assert queue.get_stats()["unsealed_refused_total"] == 2


def test_a_server_error_echoing_the_payload_is_sealed_in_the_file_and_kept_out_of_logs(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    class _Echo422(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            sent = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            body = json.dumps({"detail": [{"type": "missing", "msg": "Field required", "input": sent}]}).encode()
            self.send_response(422 if "reject" in sent else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    echo = HTTPServer(("127.0.0.1", 0), _Echo422)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        uploader = HTTPCloudUploader(f"http://127.0.0.1:{echo.server_address[1]}/v1", "k", timeout=5)
        with CloudSyncQueue(db_path, encryption_key=KEY, max_attempts=1) as queue:
            with caplog.at_level(logging.DEBUG):
                queue.enqueue_many([{"secret": CANARY, "reject": i} for i in range(2)])
                assert queue.maybe_flush(uploader) == 0  # 422: both dead-lettered
                queue.enqueue({"secret": CANARY, "retry": 1})
                assert queue.maybe_flush(uploader) == 0  # 503: kept, last_error set
            assert queue.get_stats()["dead_lettered"] == 2
            _assert_no_canary(db_path)
            logged = "\n".join(record.getMessage() for record in caplog.records)
            assert CANARY not in logged and "Field required" not in logged
            assert "status 422" in logged and "status 503" in logged
            # With the key the texts read back in full.
            assert all(CANARY in (letter.last_error or "") for letter in queue.dead_letters())
            assert CANARY in queue.get_stats()["last_error"]
        with CloudSyncQueue(db_path) as plain:
            assert CANARY not in repr(plain.get_stats())
    finally:
        echo.shutdown()
        echo.server_close()


# -- missing and wrong keys -----------------------------------------------------------------


def test_without_the_key_reads_and_flushes_fail_clearly_and_change_nothing(db_path: str) -> None:
    with _sealed_queue(db_path):
        pass
    key_id = seal.key_id_of(KEY)
    for other in ({}, {"encryption_key": OTHER_KEY}):
        with CloudSyncQueue(db_path, **other) as queue:
            before = _table(queue)
            with pytest.raises(MissingKeyError, match=repr(key_id)) as caught:
                queue.dequeue(5)
            assert caught.value.key_id == key_id and caught.value.item_id == 1
            recorder = Recorder()
            with pytest.raises(MissingKeyError, match=repr(key_id)):
                queue.maybe_flush(recorder)
            assert recorder.bodies == []
            assert _table(queue) == before
            assert queue.get_stats()["in_flight"] == 0
            assert queue.dead_letters() == []


def test_a_flush_without_the_key_sends_the_plain_items_and_keeps_the_sealed(db_path: str) -> None:
    with CloudSyncQueue(db_path) as plain:
        plain.enqueue({"plain": 1})
    with _sealed_queue(db_path, 2):
        pass
    with CloudSyncQueue(db_path) as plain:
        # Into a file that holds sealed items, plain text is refused, before anything is written.
        with pytest.raises(MissingKeyError, match="holds sealed items"):
            plain.enqueue({"plain": 2})
        recorder = Recorder()
        with pytest.raises(MissingKeyError):
            plain.maybe_flush(recorder)
        assert [json.loads(body) for body in recorder.bodies] == [[{"plain": 1}]]
        assert [row[0] for row in _table(plain)] == [2, 3]
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        assert [item.payload for item in queue.dequeue(5)] == _payloads(2)


def test_a_wrong_key_under_the_right_id_does_not_authenticate(db_path: str) -> None:
    with _sealed_queue(db_path):
        pass
    key_id = seal.key_id_of(KEY)
    with CloudSyncQueue(db_path, encryption_key=lambda kid: ("new", OTHER_KEY) if kid is None else OTHER_KEY) as queue:
        with pytest.raises(DecryptionError, match=f"key id {key_id!r}") as caught:
            queue.peek()
        assert not isinstance(caught.value, MissingKeyError)


# -- rotation and rekey ---------------------------------------------------------------------


class Ring:
    """A key source the way an agent might write one: keys by id, one of them current."""

    def __init__(self, keys: Dict[str, bytes], current: str) -> None:
        self.keys = keys
        self.current = current

    def __call__(self, key_id: Optional[str]) -> Any:
        if key_id is None:
            return self.current, self.keys[self.current]
        return self.keys.get(key_id)


def test_rotation_new_items_use_the_newest_key_and_old_ones_stay_readable(db_path: str) -> None:
    ring = Ring({"2026-01": KEY}, "2026-01")
    with CloudSyncQueue(db_path, encryption_key=ring) as queue:
        queue.enqueue({"old": CANARY})
    ring.keys["2026-07"] = OTHER_KEY
    ring.current = "2026-07"
    with CloudSyncQueue(db_path, encryption_key=ring) as queue:
        assert queue.encryption_key_id == "2026-07"
        queue.enqueue({"new": CANARY})
        assert [row[1][:10] for row in _table(queue)] == ["~1c2026-01", "~1c2026-07"]
        assert [item.payload for item in queue.peek()] == [{"old": CANARY}, {"new": CANARY}]
        del ring.keys["2026-01"]
        ring_error = "'2026-01'"
        with pytest.raises(MissingKeyError, match=ring_error):
            queue.rekey()
        ring.keys["2026-01"] = KEY
        assert queue.rekey() == 1
        assert queue.rekey() == 0
        del ring.keys["2026-01"]
        assert [item.payload for item in queue.peek()] == [{"old": CANARY}, {"new": CANARY}]
        assert all(row[1].startswith("~1c2026-07:") for row in _table(queue))


def test_rekey_seals_plain_items_and_leaves_no_plaintext_in_the_files(db_path: str) -> None:
    with CloudSyncQueue(db_path, max_attempts=1) as plain:
        plain.enqueue_many(_payloads(300))
        plain.ack(list(range(1, 101)))

        class Refusing(Recorder):
            def post_encoded_batch(self, body: bytes, count: int) -> Any:
                from pyv_edge_agent.cloud_sync import UploadError

                raise UploadError("no", status=400)

        plain.maybe_flush(Refusing())  # some become dead letters, in plain text
        assert plain.get_stats()["dead_lettered"] > 0
    assert CANARY.encode() in b"".join(_files_bytes(db_path).values())
    with CloudSyncQueue(db_path, encryption_key=KEY, encryption_cipher="aes-256-gcm") as queue:
        dead = queue.get_stats()["dead_lettered"]
        assert queue.rekey() == 200
        _assert_no_canary(db_path)
        assert len(queue.dead_letters(500)) == dead
        assert sorted(item.payload["seq"] for item in queue.dequeue(500)) + sorted(
            letter.payload["seq"] for letter in queue.dead_letters(500)
        ) == list(range(100, 300))
    _assert_no_canary(db_path)


# -- crashes and quarantine -----------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pyv_edge_agent.cloud_sync import CloudSyncQueue
    queue = CloudSyncQueue(sys.argv[1], encryption_key=sys.argv[2], durability=sys.argv[3])
    batch = 0
    while True:
        queue.enqueue_many([{"secret": sys.argv[4], "batch": batch, "i": i} for i in range(200)])
        batch += 1
        print(batch, flush=True)
    """
)


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_kill_9_mid_batch_leaves_no_plaintext(tmp_path: Any, db_path: str, durability: str) -> None:
    key_file = os.path.join(os.fspath(tmp_path), "queue.key")
    with open(key_file, "w") as handle:
        handle.write(KEY.hex() + "\n")
    os.makedirs(os.path.dirname(db_path), exist_ok=True)
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, db_path, key_file, durability, CANARY], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        for _ in range(5):
            assert writer.stdout.readline(), "the writer died"
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    files = _files_bytes(db_path)
    assert any(name.endswith("-wal") for name in files)
    _assert_no_canary(db_path)
    with CloudSyncQueue(db_path, encryption_key=key_file) as queue:
        items = queue.dequeue(100_000)
        assert len(items) >= 5 * 200 and len(items) % 200 == 0
        assert all(item.payload["secret"] == CANARY for item in items)
        assert queue.verify().ok


_FLUSHER = textwrap.dedent(
    """
    import sys, time
    from pyv_edge_agent.cloud_sync import CloudSyncQueue

    class Stalling:
        def post_batch(self, payloads):
            raise AssertionError("the flush must splice")

        def post_encoded_batch(self, body, count):
            assert sys.argv[3].encode() in body  # what an uploader gets is opened
            print("sending", count, flush=True)
            time.sleep(3600)

    queue = CloudSyncQueue(sys.argv[1], encryption_key=sys.argv[2], max_batch_items=100)
    queue.enqueue_many([{"secret": sys.argv[3], "i": i} for i in range(300)])
    queue.maybe_flush(Stalling())
    """
)


def test_kill_9_mid_upload_leaves_no_plaintext_and_every_item_sealed(tmp_path: Any, db_path: str) -> None:
    key_file = os.path.join(os.fspath(tmp_path), "queue.key")
    with open(key_file, "wb") as handle:
        handle.write(KEY)
    os.makedirs(os.path.dirname(db_path), exist_ok=True)
    flusher = subprocess.Popen([sys.executable, "-c", _FLUSHER, db_path, key_file, CANARY], stdout=subprocess.PIPE)
    try:
        assert flusher.stdout is not None
        assert flusher.stdout.readline().split() == [b"sending", b"100"]
    finally:
        os.kill(flusher.pid, signal.SIGKILL)
        flusher.wait()
    _assert_no_canary(db_path)
    # An hour on, the lease of the killed flusher has run out and every item is due again.
    with CloudSyncQueue(db_path, encryption_key=KEY, clock=lambda: time.time() + 3600) as queue:
        assert queue.get_stats()["in_flight"] == 0
        assert sorted(item.payload["i"] for item in queue.dequeue(1000)) == list(range(300))


def test_a_quarantined_sealed_file_holds_no_plaintext(tmp_path: Any) -> None:
    directory = os.path.join(os.fspath(tmp_path), "q")
    path = os.path.join(directory, "q.db")
    with CloudSyncQueue(path, encryption_key=KEY) as queue:
        queue.enqueue_many(_payloads(400))
    os.truncate(path, os.path.getsize(path) // 2)
    with CloudSyncQueue(path, encryption_key=KEY, on_corrupt="quarantine") as queue:
        assert queue.pending_count() == 0
        queue.enqueue({"secret": CANARY})
    aside = [name for name in os.listdir(directory) if ".corrupt-" in name]
    assert aside
    for name in os.listdir(directory):
        with open(os.path.join(directory, name), "rb") as handle:
            assert CANARY.encode() not in handle.read(), name


# -- keys as arguments ------------------------------------------------------------------------


def test_key_files_raw_hex_and_base64_give_the_same_key(tmp_path: Any, db_path: str) -> None:
    import base64

    paths = []
    for name, data in (("raw", KEY), ("hex", (KEY.hex() + "\n").encode()), ("b64", base64.b64encode(KEY) + b"\n")):
        paths.append(os.path.join(os.fspath(tmp_path), name))
        with open(paths[-1], "wb") as handle:
            handle.write(data)
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        queue.enqueue({"a": 1})
    for path in paths:
        with CloudSyncQueue.from_dict({"db_path": db_path, "encryption_key": path}) as queue:
            assert queue.encryption_key_id == seal.key_id_of(KEY)
            assert queue.peek()[0].payload == {"a": 1}


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (KEY[:16], ValueError, "must be 32 bytes, got 16 bytes"),
        (12345, TypeError, "encryption_key must be 32 bytes, a key file's path or a callable"),
        ("/nonexistent/queue.key", ValueError, "cannot read the key file .*No such file"),
        (KEY.hex(), ValueError, "the path is not shown: it may be key text"),
        (lambda kid: KEY, TypeError, r"must return the newest \(key_id, key\) pair"),
        (lambda kid: ("bad id!", KEY), ValueError, "returned the key id 'bad id!'"),
        (lambda kid: ("k", KEY[:5]), ValueError, "the key of key id 'k' must be 32 bytes, got 5 bytes"),
    ],
)
def test_bad_keys_are_refused_before_anything_is_written_and_never_echoed(
    db_path: str, key: Any, error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as caught:
        CloudSyncQueue(db_path, encryption_key=key)
    assert KEY.hex() not in str(caught.value) and repr(KEY[:16]) not in str(caught.value)
    assert not os.path.exists(db_path)


@pytest.mark.parametrize(
    "text",
    [
        "k3Y-0123456789abcdefghijklmnopqr",  # 32 characters, the key itself
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8",  # base64url without padding
        "0x" + KEY.hex(),
        "/nonexistent/" + KEY.hex()[:20],
    ],
    ids=["32-characters", "base64url", "0x-hex", "path-like"],
)
def test_a_str_given_as_the_key_is_never_quoted_and_the_error_says_what_a_key_may_be(db_path: str, text: str) -> None:
    with pytest.raises(ValueError) as caught:
        CloudSyncQueue(db_path, encryption_key=text)
    shown = str(caught.value) + repr(caught.value)
    for part in (text, text[:8], text[-8:]):
        assert part not in shown
    assert "32 bytes" in shown and "hex digits" in shown and "callable" in shown
    assert not os.path.exists(db_path)


def test_bad_cipher_and_no_key_material_in_repr(db_path: str) -> None:
    with pytest.raises(ValueError, match="encryption_cipher"):
        CloudSyncQueue(db_path, encryption_key=KEY, encryption_cipher="rot13")
    with CloudSyncQueue(db_path, encryption_key=KEY) as queue:
        shown = repr(queue) + repr(seal.KeyRing([KEY, OTHER_KEY]))
        for secret in (KEY, OTHER_KEY):
            assert secret.hex() not in shown and repr(secret) not in shown
        assert "chacha20-poly1305" in repr(queue)


def test_missing_cryptography_is_an_import_error_naming_the_extra(
    db_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if it were not installed: every module of it (loaded ones included) fails to import.
    for name in [name for name in sys.modules if name.split(".")[0] == "cryptography"] + ["cryptography"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pyv-edge-agent\[crypto\]"):
        CloudSyncQueue(db_path, encryption_key=KEY)
    assert not os.path.exists(db_path)
    with CloudSyncQueue(db_path) as queue:  # no key: the package never needs it
        queue.enqueue({"a": 1})


# -- the command line -----------------------------------------------------------------------


def test_cli_reads_with_key_files_and_rekeys(tmp_path: Any, db_path: str, capsys: pytest.CaptureFixture[str]) -> None:
    old, new = (os.path.join(os.fspath(tmp_path), name) for name in ("old.key", "new.key"))
    for path, key in ((old, KEY), (new, OTHER_KEY)):
        with open(path, "wb") as handle:
            handle.write(key)
    with CloudSyncQueue(db_path, encryption_key=old) as queue:
        queue.enqueue({"secret": CANARY})
    with pytest.raises(SystemExit) as exited:
        cli_main(["--plain", "peek", db_path, "--json"])
    assert exited.value.code == 2
    assert "--key-file" in capsys.readouterr().err
    assert cli_main(["--plain", "peek", db_path, "--json", "--key-file", old]) == 0
    assert json.loads(capsys.readouterr().out)[0]["payload"] == {"secret": CANARY}
    rekey = ["--plain", "rekey", db_path, "--key-file", old, "--key-file", new, "--cipher", "aes-256-gcm", "--json"]
    assert cli_main(rekey) == 0
    assert json.loads(capsys.readouterr().out) == {"resealed": 1}
    conn = sqlite3.connect(db_path)
    try:
        stored = conn.execute("SELECT payload FROM sync_queue").fetchone()[0]
    finally:
        conn.close()
    assert stored.startswith("~1a" + seal.key_id_of(OTHER_KEY) + ":")
    assert cli_main(["--plain", "dead-letters", db_path, "--json", "--key-file", new]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert cli_main(["--plain", "peek", db_path, "--json", "--key-file", new]) == 0
    assert json.loads(capsys.readouterr().out)[0]["payload"] == {"secret": CANARY}
    _assert_no_canary(db_path)


def test_the_asyncio_api_seals_and_opens_alike(db_path: str) -> None:
    import asyncio

    from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue

    async def main() -> List[Any]:
        queue = AsyncCloudSyncQueue.from_dict({"db_path": db_path, "encryption_key": KEY})
        try:
            await asyncio.gather(*(queue.enqueue({"secret": CANARY, "i": i}) for i in range(20)))
            await queue.enqueue_many(_payloads(5))
            return [item.payload for item in await queue.dequeue(100)]
        finally:
            await queue.close()

    found = asyncio.run(main())
    assert sorted(p["i"] for p in found if "i" in p) == list(range(20))
    assert [p for p in found if "seq" in p] == _payloads(5)
    _assert_no_canary(db_path)


# -- a rekey cut short ----------------------------------------------------------------------

_REKEY_KILLED_AFTER_ONE_CHUNK = """
import os, signal, sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync._store import rekey as _rekey
from pyv_edge_agent.cloud_sync._store.seal import KeyRing

reseal_chunk = _rekey._reseal_chunk

def reseal_then_die(*args, **kwargs):
    result = reseal_chunk(*args, **kwargs)  # one chunk committed, then the power goes
    os.kill(os.getpid(), signal.SIGKILL)
    return result

_rekey._reseal_chunk = reseal_then_die
with CloudSyncQueue(sys.argv[1], encryption_key=KeyRing.from_files(sys.argv[2:])) as queue:
    queue.rekey()
"""


@pytest.mark.parametrize("before", ["plain", "old key"])
def test_a_rekey_killed_midway_shows_in_stats_and_check(tmp_path: Any, db_path: str, before: str) -> None:
    """A rekey killed after its first chunk leaves items under the old key, or in plain
    text; get_stats() and ``cloud-sync check`` say how many, and a second rekey finishes."""
    old, new = (os.path.join(os.fspath(tmp_path), name) for name in ("old.key", "new.key"))
    for path, key in ((old, KEY), (new, OTHER_KEY)):
        with open(path, "wb") as handle:
            handle.write(key)
    items = 2 * _rekey_chunk() + 100
    with CloudSyncQueue(db_path, **({} if before == "plain" else {"encryption_key": old})) as queue:
        queue.enqueue_many(_payloads(items))
        assert queue.get_stats()["rekey_unfinished"] == 0
    killed = subprocess.run(
        [sys.executable, "-c", _REKEY_KILLED_AFTER_ONE_CHUNK, db_path, old, new], capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    left = items - _rekey_chunk()

    check = subprocess.run(
        [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "--plain", "check", db_path, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 1 and json.loads(check.stdout)["rekey_unfinished"] == left, check.stdout
    ring = seal.KeyRing([KEY, OTHER_KEY])
    with CloudSyncQueue(db_path, encryption_key=ring) as queue:
        assert queue.get_stats()["rekey_unfinished"] == left
        assert queue.pending_count() == items
        assert queue.rekey() == left
        assert queue.get_stats()["rekey_unfinished"] == 0
        assert sorted(item.payload["seq"] for item in queue.peek(n=items)) == list(range(items))
    assert CloudSyncQueue.verify_file(db_path).rekey_unfinished == 0


def _rekey_chunk() -> int:
    from pyv_edge_agent.cloud_sync._store import rekey as _rekey

    return _rekey.CHUNK
