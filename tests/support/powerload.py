"""The load run on a crash file system (crashfs.py) and the checks made after each power cut.

A forked child works on a queue on the mount until it is SIGKILLed: single enqueues,
``enqueue_many``, acks, nacks, flushes to a loopback ingest server, group commits from
several threads and, now and then, a fresh queue file. It writes what each call returned
to a journal outside the mount (an ``O_APPEND`` file, one line per event, written in one
``write``), so the journal holds everything a returned call promised. It is never subject
to the cut, and a SIGKILL loses no completed ``write``: no fsync of its own is needed. Lines:

- ``O`` the queue opened; ``E id key`` an enqueue returned that id;
- ``a id`` an ack is about to run, ``A id`` it returned;
- ``S key`` a flush's upload of that item was accepted; ``F sent failed`` the flush
  returned and these were its persisted counters (``messages_sent_total``, ``failed_batches``);
- ``N file id key`` a fresh queue file's first enqueue returned.

The routed load (``run_routed_load``) works on a queue with two destinations (routing.py):
enqueues addressed to both or to one, and flushes of one destination or of both at once.
Its lines: ``E id key`` as above (the key names the route); ``S destination key`` that
destination's endpoint accepted the item; ``F destination sent failed`` a flush of it
returned, with that destination's persisted counters.
"""

import os
import random
import sqlite3
import threading
import traceback
from typing import Any, Dict, List, Optional, Set, Tuple

from faultload import fork
from routing import DESTINATIONS, ROUTES, destinations_argument, route_problems, routes_of, stored_routes

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "power-key"
DB_NAME = "sync.db"
QUEUE_OPTIONS: Dict[str, Any] = {"min_free_disk_bytes": 0, "retry_base_seconds": 0.01, "retry_max_seconds": 0.05}


class Journal:
    """Appends whole lines with one ``write`` each (atomic for ``O_APPEND``, any thread)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, lines: List[str]) -> None:
        """Append ``lines`` in one ``write``."""
        if lines:
            os.write(self._fd, "".join(line + "\n" for line in lines).encode())


class RecordingUploader:
    """The real HTTP uploader; journals the keys of every batch the endpoint accepted
    (``S key``, or ``S destination key`` for a named destination). With a ``failure_rate``
    it fails that share of the batches without sending them (they are retried)."""

    def __init__(
        self,
        url: str,
        journal: Journal,
        destination: str = "",
        failure_rate: float = 0.0,
        rng: Optional[random.Random] = None,
    ) -> None:
        self._http = HTTPCloudUploader(url, KEY, timeout=30.0)
        self._journal = journal
        self._tag = f"S {destination} " if destination else "S "
        self._failure_rate = failure_rate
        self._rng = rng or random.Random(0)

    def post_batch(self, payloads: List[Dict[str, Any]]) -> Any:
        """Post through HTTP; on acceptance journal the batch's keys (the ack follows)."""
        if self._rng.random() < self._failure_rate:
            return False
        result = self._http.post_batch(payloads)
        if result is True:
            self._journal.write([self._tag + payload["key"] for payload in payloads])
        return result


def _payload(key: str, rng: random.Random) -> Dict[str, Any]:
    return {"key": key, "pad": "x" * rng.randrange(0, 400)}


def run_load(mount: str, journal_path: str, url: str, seed: int, durability: str, cycle: int) -> None:
    """Body of the child on the mount; it ends only by being killed (or by an error,
    written to ``journal_path + ".error"``)."""
    try:
        rng = random.Random(seed)
        journal = Journal(journal_path)
        options = {**QUEUE_OPTIONS, "durability": durability}
        queue = CloudSyncQueue(os.path.join(mount, DB_NAME), **options)
        uploader = RecordingUploader(url, journal)
        journal.write(["O"])
        own: List[int] = []
        made = 0
        fresh: List[CloudSyncQueue] = []

        def key() -> str:
            nonlocal made
            made += 1
            return f"c{cycle}-{made}"

        while True:
            choice = rng.random()
            if choice < 0.3:
                k = key()
                row_id = queue.enqueue(_payload(k, rng), priority=rng.choice(list(Priority)))
                journal.write([f"E {row_id} {k}"])
                own.append(row_id)
            elif choice < 0.5:
                keys = [key() for _ in range(rng.randrange(2, 60))]
                ids = queue.enqueue_many([_payload(k, rng) for k in keys], priority=rng.choice(list(Priority)))
                journal.write([f"E {i} {k}" for i, k in zip(ids, keys)])
                own.extend(ids)
            elif choice < 0.62 and own:
                chosen = rng.sample(own, min(len(own), rng.randrange(1, 30)))
                journal.write([f"a {i}" for i in chosen])
                queue.ack(chosen)
                journal.write([f"A {i}" for i in chosen])
                acked = set(chosen)
                own = [i for i in own if i not in acked]
            elif choice < 0.7 and own:
                queue.nack(rng.sample(own, min(len(own), rng.randrange(1, 30))), retry_delay_seconds=0)
            elif choice < 0.8:
                queue.maybe_flush(uploader)
                stats = queue.get_stats()
                journal.write([f"F {stats['messages_sent_total']} {stats['failed_batches']}"])
            elif choice < 0.95:
                _group_commit(queue, journal, [key() for _ in range(rng.randrange(2, 5) * 3)], rng)
            elif not fresh:
                name = f"fresh-{cycle}.db"
                fresh.append(CloudSyncQueue(os.path.join(mount, name), **options))
                k = key()
                row_id = fresh[0].enqueue(_payload(k, rng))
                journal.write([f"N {name} {row_id} {k}"])
    except BaseException:
        with open(journal_path + ".error", "w") as handle:
            handle.write(traceback.format_exc())
    finally:
        os._exit(1)


def _group_commit(
    queue: CloudSyncQueue,
    journal: Journal,
    keys: List[str],
    rng: random.Random,
    destinations: Optional[Tuple[str, ...]] = None,
) -> None:
    """Threads enqueue at once, three items each, so that their commits are shared."""
    start = threading.Barrier(len(keys) // 3)
    payloads = [_payload(k, rng) for k in keys]

    def worker(index: int) -> None:
        start.wait()
        for k, payload in zip(keys[index * 3 : index * 3 + 3], payloads[index * 3 : index * 3 + 3]):
            journal.write([f"E {queue.enqueue(payload, destinations=destinations)} {k}"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(keys) // 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_routed_load(
    mount: str, journal_path: str, urls: Dict[str, str], seed: int, durability: str, cycle: int
) -> None:
    """Body of the child of the routed load on the mount (see the module docstring), each
    destination flushed to its own URL of ``urls``; it ends only by being killed (or by an
    error, written to ``journal_path + ".error"``)."""
    try:
        rng = random.Random(seed)
        journal = Journal(journal_path)
        options = {**QUEUE_OPTIONS, "durability": durability}
        queue = CloudSyncQueue(os.path.join(mount, DB_NAME), destinations=DESTINATIONS, **options)
        uploaders = {
            name: RecordingUploader(urls[name], journal, name, 0.2, random.Random(rng.random()))
            for name in DESTINATIONS
        }
        journal.write(["O"])
        made = 0
        while True:
            choice = rng.random()
            route = rng.choice(tuple(ROUTES))
            count = 1 if choice < 0.3 else rng.randrange(2, 60) if choice < 0.5 else rng.randrange(2, 5) * 3
            keys = [f"{route}.c{cycle}-{made + n}" for n in range(count)]
            made += count
            if choice < 0.3:
                row_id = queue.enqueue(
                    _payload(keys[0], rng),
                    priority=rng.choice(list(Priority)),
                    destinations=destinations_argument(route),
                )
                journal.write([f"E {row_id} {keys[0]}"])
            elif choice < 0.5:
                payloads = [_payload(k, rng) for k in keys]
                ids = queue.enqueue_many(
                    payloads, priority=rng.choice(list(Priority)), destinations=destinations_argument(route)
                )
                journal.write([f"E {i} {k}" for i, k in zip(ids, keys)])
            elif choice < 0.62:
                _group_commit(queue, journal, keys, rng, destinations_argument(route))
            elif choice < 0.88:
                name = rng.choice(DESTINATIONS)
                _flush(queue, uploaders[name], journal, name)
            else:
                _flush_at_once(queue, uploaders, journal)
    except BaseException:
        with open(journal_path + ".error", "w") as handle:
            handle.write(traceback.format_exc())
    finally:
        os._exit(1)


def _flush(queue: CloudSyncQueue, uploader: RecordingUploader, journal: Journal, destination: str) -> None:
    queue.maybe_flush(uploader, destination=destination)
    stats = queue.get_stats()["destinations"][destination]
    journal.write([f"F {destination} {stats['messages_sent_total']} {stats['failed_batches']}"])


def _flush_at_once(queue: CloudSyncQueue, uploaders: Dict[str, RecordingUploader], journal: Journal) -> None:
    """Flush every destination at once, one thread each, as a worker with a mapping does."""
    errors: List[BaseException] = []

    def flush(name: str) -> None:
        try:
            _flush(queue, uploaders[name], journal, name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(name,)) for name in uploaders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def read_lines(path: str) -> List[List[str]]:
    """The complete lines of a journal, split into words."""
    try:
        with open(path) as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    return [line.split(" ") for line in text.split("\n")[:-1]]


def integrity(path: str) -> str:
    """``PRAGMA integrity_check`` of a file opened directly (no crash layer)."""
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def stored(path: str) -> Tuple[Dict[int, str], int]:
    """id -> key of every stored item (queued or dead-lettered), and the id sequence."""
    import orjson

    conn = sqlite3.connect(path)
    try:
        rows: Dict[int, str] = {}
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "sync_queue" not in tables:
            return rows, 0  # the file survived, the transaction that made the schema did not
        for table in ("sync_queue", "sync_dead_letters"):
            for row_id, text in conn.execute(f"SELECT id, payload FROM {table}"):
                rows[row_id] = orjson.loads(text)["key"]
        found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sync_queue'").fetchone()
        return rows, int(found[0]) if found else 0
    finally:
        conn.close()


class Ledger:
    """What every returned call promised, carried from cut to cut, and the checks.

    ``durability="full"``: every id returned is stored with its key, or was delivered;
    nothing whose ack (explicit or by a returned flush) returned is stored again; the
    persisted counters and the id sequence never go backwards. ``"fast"``: the file opens
    intact; the items missing are counted, and must all come from the cycle just cut."""

    def __init__(self, durability: str, server: IngestServer) -> None:
        self.durability = durability
        self._server = server
        self.expected: Dict[int, str] = {}
        self.gone_ids: Set[int] = set()
        self.gone_keys: Set[str] = set()
        self.floors = {"messages_sent_total": 0, "failed_batches": 0, "sequence": 0}
        self.figures = {"cuts": 0, "items checked": 0, "lost": 0, "integrity failures": 0, "reappeared": 0}

    def start(self, mount: str, journal_path: str, seed: int, cycle: int) -> int:
        """Fork the load (``run_load``) on ``mount``; return its pid."""
        return fork(run_load, mount, journal_path, self._server.url, seed, self.durability, cycle)

    def check(self, backing: str, journal_path: str, cycle: int) -> List[str]:
        """Check the backing directory after a cut; return what was wrong (empty: nothing)."""
        delivered = {item["key"] for item in self._server.items}
        problems: List[str] = []
        lines = read_lines(journal_path)
        self.figures["cuts"] += 1
        acking: Set[int] = set()
        sent: List[str] = []
        fresh: List[Tuple[str, int, str]] = []
        for words in lines:
            tag = words[0]
            if tag == "E":
                self.expected[int(words[1])] = words[2]
                self.figures["items checked"] += 1
                if self.durability == "full":
                    self.floors["sequence"] = max(self.floors["sequence"], int(words[1]))
            elif tag == "a":
                acking.add(int(words[1]))
            elif tag == "A":
                acking.discard(int(words[1]))
                self.expected.pop(int(words[1]), None)
                self.gone_ids.add(int(words[1]))
            elif tag == "S":
                sent.append(words[1])
            elif tag == "F":
                self.gone_keys.update(sent)
                sent = []
                self.floors["messages_sent_total"] = int(words[1])
                self.floors["failed_batches"] = int(words[2])
            elif tag == "N":
                fresh.append((words[1], int(words[2]), words[3]))
                self.figures["items checked"] += 1
        path = os.path.join(backing, DB_NAME)
        if not os.path.exists(path):
            problems.append(f"{DB_NAME} is gone")
            rows: Dict[int, str] = {}
            sequence = 0
        else:
            result = integrity(path)
            if result != "ok":
                self.figures["integrity failures"] += 1
                problems.append(f"integrity_check of {DB_NAME}: {result}")
                return problems
            rows, sequence = stored(path)
            problems += self._counters(path, sequence)
        keys = set(rows.values())
        lost: List[str] = []
        for row_id, key in list(self.expected.items()):
            if rows.get(row_id) == key:
                continue
            if key in delivered or row_id in acking:
                del self.expected[row_id]  # delivered and acked by a flush, or acked at the cut
                continue
            lost.append(key)
            del self.expected[row_id]
        for name, row_id, key in fresh:
            fresh_path = os.path.join(backing, name)
            if not os.path.exists(fresh_path):
                problems.append(f"{name}, whose first enqueue returned, is gone")
                lost.append(key)
                continue
            result = integrity(fresh_path)
            if result != "ok":
                self.figures["integrity failures"] += 1
                problems.append(f"integrity_check of {name}: {result}")
            elif stored(fresh_path)[0].get(row_id) != key:
                lost.append(key)
            os.unlink(fresh_path)  # checked: it does not weigh on the next mounts
        self.figures["lost"] += len(lost)
        if self.durability == "full":
            if lost:
                problems.append(f"{len(lost)} items lost, e.g. {sorted(lost)[:5]}")
            back = [i for i in self.gone_ids if i in rows] + [k for k in self.gone_keys if k in keys]
            self.figures["reappeared"] += len(back)
            if back:
                problems.append(f"{len(back)} acked items are back, e.g. {back[:5]}")
        else:
            older = [key for key in lost if not key.startswith(f"c{cycle}-")]
            if older:
                problems.append(f"fast mode lost items of earlier cycles: {older[:5]}")
            # Lost acks may bring items back in this mode: they are due again, not wrong.
            self.gone_ids.clear()
            self.gone_keys.clear()
        return problems

    def _counters(self, path: str, sequence: int) -> List[str]:
        with CloudSyncQueue(path, durability=self.durability, **QUEUE_OPTIONS) as queue:
            stats = queue.get_stats()
        now = {"messages_sent_total": stats["messages_sent_total"], "failed_batches": stats["failed_batches"]}
        now["sequence"] = sequence
        problems = []
        for name, value in now.items():
            if self.durability == "full" and value < self.floors[name]:
                problems.append(f"{name} went back from {self.floors[name]} to {value}")
            self.floors[name] = value if self.durability == "fast" else max(value, self.floors[name])
        return problems


class RoutedLedger:
    """The promises of the routed load in full durability, carried from cut to cut, and the
        checks: every id returned is stored with its key until each destination it was
        addressed to has received it, and its route still names every destination that has not;
        a destination whose flush returned after its endpoint accepted an item is never owed that
        item again; no item that left the file comes back; the routes are consistent
        (``routing.route_problems``); the id sequence and each destination's persisted counters
    never go backwards."""

    durability = "full"

    def __init__(self, servers: Dict[str, IngestServer]) -> None:
        self._servers = servers
        self.expected: Dict[int, str] = {}
        self.acked: Dict[str, Set[str]] = {name: set() for name in DESTINATIONS}
        self.gone_ids: Set[int] = set()
        self.sequence = 0
        self.counters = {name: {"messages_sent_total": 0, "failed_batches": 0} for name in DESTINATIONS}
        self.figures = {
            "cuts": 0,
            "items checked": 0,
            "lost": 0,
            "integrity failures": 0,
            "reappeared": 0,
            "route problems": 0,
        }

    def start(self, mount: str, journal_path: str, seed: int, cycle: int) -> int:
        """Fork the routed load (``run_routed_load``) on ``mount``; return its pid."""
        urls = {name: server.url for name, server in self._servers.items()}
        return fork(run_routed_load, mount, journal_path, urls, seed, self.durability, cycle)

    def check(self, backing: str, journal_path: str, cycle: int) -> List[str]:
        """Check the backing directory after a cut; return what was wrong (empty: nothing)."""
        delivered = {name: {item["key"] for item in server.items} for name, server in self._servers.items()}
        self.figures["cuts"] += 1
        sent: Dict[str, List[str]] = {name: [] for name in DESTINATIONS}
        for words in read_lines(journal_path):
            if words[0] == "E":
                self.expected[int(words[1])] = words[2]
                self.sequence = max(self.sequence, int(words[1]))
                self.figures["items checked"] += 1
            elif words[0] == "S":
                sent[words[1]].append(words[2])
            elif words[0] == "F":
                self.acked[words[1]].update(sent[words[1]])
                sent[words[1]] = []
                self.counters[words[1]] = {"messages_sent_total": int(words[2]), "failed_batches": int(words[3])}
        path = os.path.join(backing, DB_NAME)
        problems: List[str] = []
        rows: Dict[int, Tuple[Optional[str], Set[str], int]] = {}
        if not os.path.exists(path):
            problems.append(f"{DB_NAME} is gone")
        else:
            result = integrity(path)
            if result != "ok":
                self.figures["integrity failures"] += 1
                return [f"integrity_check of {DB_NAME}: {result}"]
            problems += self._routes(path, rows)
            problems += self._counters(path)
        lost: List[str] = []
        back: List[str] = []
        for row_id, key in list(self.expected.items()):
            stored_key, owing, _ = rows.get(row_id, (key, set(), 0))
            if stored_key != key:
                owing = set()  # the id holds another item: this one is gone
            lost += [f"{key} for {name}" for name in routes_of(key) if name not in owing and key not in delivered[name]]
            back += [f"{key} for {name}" for name in owing if key in self.acked[name]]
            if not owing:
                del self.expected[row_id]
                self.gone_ids.add(row_id)
        back += [f"item {row_id}" for row_id in self.gone_ids if row_id in rows]
        self.figures["lost"] += len(lost)
        self.figures["reappeared"] += len(back)
        if lost:
            problems.append(f"{len(lost)} items lost, e.g. {sorted(lost)[:5]}")
        if back:
            problems.append(f"{len(back)} acked items are back, e.g. {sorted(back)[:5]}")
        return problems

    def _routes(self, path: str, rows: Dict[int, Tuple[Optional[str], Set[str], int]]) -> List[str]:
        """Fill ``rows`` with the file's items and their routes; return what is wrong with
        the routes and the id sequence."""
        conn = sqlite3.connect(path)
        try:
            if conn.execute("SELECT name FROM sqlite_master WHERE name = 'sync_routes'").fetchone() is None:
                return []  # the file survived, the transaction that made the schema did not
            problems = route_problems(conn)
            rows.update(stored_routes(conn))
            found = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'sync_queue'").fetchone()
        finally:
            conn.close()
        self.figures["route problems"] += len(problems)
        if (int(found[0]) if found else 0) < self.sequence:
            problems.append(f"the id sequence went back below {self.sequence}")
        return problems

    def _counters(self, path: str) -> List[str]:
        """What went back among each destination's persisted counters."""
        problems = []
        with CloudSyncQueue(path, destinations=DESTINATIONS, durability=self.durability, **QUEUE_OPTIONS) as queue:
            figures = queue.get_stats()["destinations"]
        for name, floors in self.counters.items():
            for counter, floor in floors.items():
                if figures[name][counter] < floor:
                    problems.append(f"{name} {counter} went back from {floor} to {figures[name][counter]}")
                floors[counter] = max(floor, figures[name][counter])
        return problems
