"""Design E for issue 24 vs a plain queue: fan-out cost, flush cost per destination, and a
live destination's claim beside a dead destination's backlog. Plain SQL, no package."""
import os, sqlite3, statistics, sys, time
import orjson

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
BATCH = 500
payloads = [orjson.dumps({"sensor": "t1", "v": i * 0.5, "ts": 1700000000 + i, "tags": ["a", "b"]}).decode() for i in range(N)]
PLAIN = """
CREATE TABLE sync_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, payload TEXT NOT NULL, priority INTEGER NOT NULL,
created_at REAL NOT NULL, ttl_seconds INTEGER NOT NULL, retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0);
CREATE INDEX idx_sync_queue_priority ON sync_queue(priority, next_retry_at);
"""
E = PLAIN + """
ALTER TABLE sync_queue ADD COLUMN destinations INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sync_queue ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
CREATE TABLE sync_cursors (destination INTEGER, priority INTEGER, last_id INTEGER NOT NULL,
PRIMARY KEY (destination, priority)) WITHOUT ROWID;
CREATE TABLE sync_deliveries (destination INTEGER NOT NULL, item_id INTEGER NOT NULL, priority INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0, next_retry_at REAL NOT NULL DEFAULT 0,
PRIMARY KEY (destination, item_id)) WITHOUT ROWID;
CREATE INDEX idx_sync_deliveries_due ON sync_deliveries(destination, priority, next_retry_at);
"""

def fresh(path, ddl):
    for s in ("", "-wal", "-shm"):
        try: os.remove(path + s)
        except FileNotFoundError: pass
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL"); c.execute("PRAGMA synchronous=FULL")
    c.executescript(ddl)
    return c

def enqueue(c, mask=None, count=None):
    now = time.time()
    n = count or N
    t = time.perf_counter()
    for k in range(0, n, 1000):
        c.execute("BEGIN IMMEDIATE")
        if mask is None:
            c.executemany("INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?,?,?,?)",
                          [(payloads[i % N], 3, now, 86400) for i in range(k, min(n, k + 1000))])
        else:
            pending = bin(mask).count("1")
            c.executemany("INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds, destinations, pending)"
                          " VALUES (?,?,?,?,?,?)", [(payloads[i % N], 3, now, 86400, mask, pending) for i in range(k, min(n, k + 1000))])
        c.execute("COMMIT")
    return time.perf_counter() - t

def chunks(ids, size=256):
    for k in range(0, len(ids), size):
        yield ids[k:k + size]

def flush_plain(c):
    t = time.perf_counter(); sent = 0
    while True:
        now = time.time()
        c.execute("BEGIN IMMEDIATE")
        rows = c.execute("SELECT id, CAST(payload AS BLOB), priority, created_at, ttl_seconds, retry_count, next_retry_at"
                         " FROM sync_queue WHERE priority = 3 AND next_retry_at <= ? AND created_at + ttl_seconds > ?"
                         " ORDER BY next_retry_at, id LIMIT ?", (now, now, BATCH)).fetchall()
        if not rows:
            c.execute("COMMIT"); break
        ids = [r[0] for r in rows]
        for ch in chunks(ids):
            c.execute(f"UPDATE sync_queue SET next_retry_at = ? WHERE id IN ({','.join('?'*len(ch))})", (now + 300,) + tuple(ch))
        c.execute("COMMIT")
        body = b"[" + b",".join(r[1] for r in rows) + b"]"
        c.execute("BEGIN IMMEDIATE")
        for ch in chunks(ids):
            c.execute(f"DELETE FROM sync_queue WHERE id IN ({','.join('?'*len(ch))})", tuple(ch))
        c.execute("COMMIT")
        sent += len(rows)
    return time.perf_counter() - t, sent

def flush_e(c, dest):
    bit = 1 << dest
    c.execute("INSERT OR IGNORE INTO sync_cursors VALUES (?, 3, 0)", (dest,))
    t = time.perf_counter(); sent = 0
    while True:
        now = time.time()
        c.execute("BEGIN IMMEDIATE")
        cursor = c.execute("SELECT last_id FROM sync_cursors WHERE destination = ? AND priority = 3", (dest,)).fetchone()[0]
        scanned = c.execute("SELECT id, CAST(payload AS BLOB), priority, created_at, ttl_seconds, destinations"
                            " FROM sync_queue WHERE priority = 3 AND next_retry_at = 0 AND id > ?"
                            " AND created_at + ttl_seconds > ? ORDER BY next_retry_at, id LIMIT ?", (cursor, now, BATCH)).fetchall()
        rows = [r for r in scanned if r[5] & bit]
        if not scanned:
            c.execute("COMMIT"); break
        c.execute("UPDATE sync_cursors SET last_id = ? WHERE destination = ? AND priority = 3", (scanned[-1][0], dest))
        c.executemany("INSERT INTO sync_deliveries (destination, item_id, priority, next_retry_at) VALUES (?,?,?,?)",
                      [(dest, r[0], 3, now + 300) for r in rows])
        c.execute("COMMIT")
        if not rows:
            continue
        ids = [r[0] for r in rows]
        body = b"[" + b",".join(r[1] for r in rows) + b"]"
        c.execute("BEGIN IMMEDIATE")
        for ch in chunks(ids):
            marks = ','.join('?' * len(ch))
            c.execute(f"DELETE FROM sync_deliveries WHERE destination = ? AND item_id IN ({marks})", (dest,) + tuple(ch))
            c.execute(f"UPDATE sync_queue SET pending = pending - 1 WHERE id IN ({marks})", tuple(ch))
            c.execute(f"DELETE FROM sync_queue WHERE id IN ({marks}) AND pending <= 0", tuple(ch))
        c.execute("COMMIT")
        sent += len(rows)
    return time.perf_counter() - t, sent

path = "/tmp/dexp/e.db"
res = {}
for rep in range(3):
    c = fresh(path, PLAIN); res.setdefault("enqueue plain", []).append(enqueue(c))
    res.setdefault("flush plain", []).append(flush_plain(c)[0]); c.close()
    for d in (1, 2, 3):
        c = fresh(path, E); res.setdefault(f"enqueue E {d} dests", []).append(enqueue(c, (1 << (d + 1)) - 2)); c.close()
    c = fresh(path, E); enqueue(c, 0b10)
    res.setdefault("flush E, 1 dest", []).append(flush_e(c, 1)[0]); c.close()
    c = fresh(path, E); enqueue(c, 0b110)
    el, sent = flush_e(c, 1); res.setdefault("flush E, dest 1 of 2 (dest 2 dead)", []).append(el)
    # the live destination again after 5x its backlog accumulated for the dead one
    enqueue(c, 0b110, count=N)
    el2, _ = flush_e(c, 1); res.setdefault("flush E, dest 1 again, dead dest holding 2N", []).append(el2)
    size = os.path.getsize(path) + os.path.getsize(path + "-wal"); c.close()
for name, values in res.items():
    print(f"{name:48s} {statistics.median(values)*1000:8.1f} ms")
print("ratios: enqueue 2 dests / 1 dest = %.2f, flush E 1 dest / plain = %.2f, live beside dead / plain = %.2f" % (
    statistics.median(res["enqueue E 2 dests"]) / statistics.median(res["enqueue E 1 dests"]),
    statistics.median(res["flush E, 1 dest"]) / statistics.median(res["flush plain"]),
    statistics.median(res["flush E, dest 1 of 2 (dest 2 dead)"]) / statistics.median(res["flush plain"])))
