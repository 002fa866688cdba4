"""Schema, pragmas and migrations of the queue file.

The documented ``sync_queue`` table and its index are kept exactly as earlier releases
wrote them, so their databases open unchanged. Everything newer lives in extra tables and
is tracked by ``PRAGMA user_version``.
"""

import sqlite3

from .._errors import DatabaseError
from .sql import write_transaction

SCHEMA_VERSION = 4
MIN_SQLITE_VERSION = (3, 31, 0)
# SQLite keeps its busy timeout in milliseconds in a C int; beyond it the value wraps.
MAX_BUSY_TIMEOUT = (2**31 - 1) / 1000.0

QUEUE_DDL = """\
CREATE TABLE IF NOT EXISTS sync_queue (
id INTEGER PRIMARY KEY AUTOINCREMENT,
payload TEXT NOT NULL,
priority INTEGER NOT NULL,
created_at REAL NOT NULL,
ttl_seconds INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_sync_queue_priority
ON sync_queue(priority, next_retry_at);
"""

# Counters and other small state that must survive a restart.
META_DDL = """\
CREATE TABLE IF NOT EXISTS sync_meta (
key TEXT PRIMARY KEY,
value NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('messages_sent_today', 0);
INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('messages_sent_total', 0);
"""

# Version 2: items that the endpoint refused for good, with why and when; the rejection
# count of items still queued (kept apart from ``retry_count``, which transient failures
# raise, so that a long outage never dead-letters anything); batches in flight, so that
# statistics can count leased items; and a random identity of this queue file, which went
# into idempotency keys until version 3.
DEAD_LETTER_DDL = """\
CREATE TABLE IF NOT EXISTS sync_dead_letters (
id INTEGER PRIMARY KEY,
payload TEXT NOT NULL,
priority INTEGER NOT NULL,
created_at REAL NOT NULL,
ttl_seconds INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0,
last_status INTEGER,
last_error TEXT,
dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_rejections (
id INTEGER PRIMARY KEY,
rejections INTEGER NOT NULL,
last_status INTEGER,
last_error TEXT
);
CREATE TABLE IF NOT EXISTS sync_leases (
token TEXT PRIMARY KEY,
items INTEGER NOT NULL,
expires_at REAL NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('queue_id', lower(hex(randomblob(16))));
"""

# Version 3: the random Idempotency-Key of each batch sent, under a digest of its item ids
# (see ``batchkeys``); ``queue_id`` is no longer part of a key.
BATCH_KEYS_DDL = """\
CREATE TABLE IF NOT EXISTS sync_batch_keys (
digest TEXT PRIMARY KEY,
batch_key TEXT NOT NULL,
first_id INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Version 4: named destinations (see ``destinations`` and ``deliveries``); a file fed to one
# destination leaves these tables empty. ``sync_routes``: for each item of a file with
# destinations, the bit of every destination that still has to deliver it, and how many
# those are (the item leaves the file at 0). A destination finds its new items through
# its cursor per priority (the last item id its claims examined) and keeps a delivery row
# only for items it has claimed (leased, retrying, rejected: the rejection count lives in
# it). ``sync_dead_deliveries``: what a destination refused for good, each with a copy of
# the payload (the item may leave the file when the others have delivered it).
# ``sync_backlog``: the undelivered items and stored bytes of each destination that has a
# backlog budget, kept by triggers on ``sync_routes`` that the first queue opened with a
# budget creates (see ``backlog``): a file where no destination ever had one has none.
DESTINATIONS_DDL = """\
CREATE TABLE IF NOT EXISTS sync_destinations (
id INTEGER PRIMARY KEY CHECK (id BETWEEN 1 AND 62),
name TEXT NOT NULL UNIQUE,
added_at REAL NOT NULL,
first_item_id INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_routes (
item_id INTEGER PRIMARY KEY,
destinations INTEGER NOT NULL,
pending INTEGER NOT NULL,
bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sync_cursors (
destination INTEGER NOT NULL,
priority INTEGER NOT NULL,
last_id INTEGER NOT NULL,
PRIMARY KEY (destination, priority)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sync_deliveries (
destination INTEGER NOT NULL,
item_id INTEGER NOT NULL,
priority INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0,
rejections INTEGER NOT NULL DEFAULT 0,
last_status INTEGER,
last_error TEXT,
PRIMARY KEY (destination, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_sync_deliveries_due
ON sync_deliveries(destination, priority, next_retry_at);
CREATE TABLE IF NOT EXISTS sync_dead_deliveries (
id INTEGER PRIMARY KEY,
destination INTEGER NOT NULL,
item_id INTEGER NOT NULL,
payload TEXT NOT NULL,
priority INTEGER NOT NULL,
created_at REAL NOT NULL,
ttl_seconds INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0,
last_status INTEGER,
last_error TEXT,
dead_at REAL NOT NULL,
UNIQUE (destination, item_id)
);
CREATE TABLE IF NOT EXISTS sync_backlog (
destination INTEGER PRIMARY KEY,
items INTEGER NOT NULL,
bytes INTEGER NOT NULL
);
"""

# The DDL that brings a file from version ``n - 1`` to ``n``, one statement per ";\n".
# Version 0 is a new file or one written by the earlier release (only ``sync_queue``);
# every step is idempotent.
MIGRATIONS = {1: QUEUE_DDL + META_DDL, 2: DEAD_LETTER_DDL, 3: BATCH_KEYS_DDL, 4: DESTINATIONS_DDL}

# Synchronous levels by durability mode. FULL syncs the WAL on every commit, so a returned
# id survives power loss; NORMAL syncs only at checkpoints: a crash of the process loses
# nothing, a power cut may lose the last transactions but never corrupts the file.
SYNCHRONOUS = {"full": "FULL", "fast": "NORMAL"}


def check_sqlite_version(version: str = sqlite3.sqlite_version) -> None:
    """Raise ImportError when the linked SQLite is older than the supported floor."""
    found = tuple(int(part) for part in version.split(".")[:3])
    if found < MIN_SQLITE_VERSION:
        floor = ".".join(map(str, MIN_SQLITE_VERSION))
        raise ImportError(
            f"pyv_edge_agent.cloud_sync needs SQLite {floor} or newer; Python's sqlite3 is linked "
            f"against SQLite {version}"
        )


def configure(conn: sqlite3.Connection, durability: str, busy_timeout: float) -> None:
    """Apply the per-connection pragmas."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {SYNCHRONOUS[durability]}")
    # Some builds (Debian's among them) default to secure_delete=ON, which also zero-fills
    # pages as they are freed: extra writes to the flash for every batch acked. FAST still
    # clears deleted rows inside the pages that are written anyway, and durability is
    # untouched.
    conn.execute("PRAGMA secure_delete = FAST")


def migrate(conn: sqlite3.Connection, path: str) -> None:
    """Create or upgrade the schema to ``SCHEMA_VERSION`` in one transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path!r} has schema version {version}, written by a newer release of "
            f"pyv-edge-agent (this one understands up to {SCHEMA_VERSION}); upgrade the package"
        )
    with write_transaction(conn):
        # Re-read inside the write lock: another process may have migrated meanwhile.
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for ddl in MIGRATIONS[step].split(";\n"):
                if ddl.strip():
                    conn.execute(ddl)
        if version < SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
