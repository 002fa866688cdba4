"""Write the golden queue files under tests/store/golden/ (run from the repository root).

    python tests/store/golden/make_golden.py

Each file holds the same items: one written through the earlier release's pattern
(``legacy.py``: a connection per operation, ``json.dumps(default=str)``, rollback
journal), one by each codec backend of this release. Every later release must open them
and find the items unchanged (tests/store/test_golden.py). Regenerate only when adding a file;
never rewrite a committed one.
"""

import importlib
import os
import shutil
import sqlite3
import sys
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "support"))

import legacy  # noqa: E402

# Ten years: the items stay eligible for as long as these files are in use.
TTL = 10 * 365 * 86400
ITEMS: List[Tuple[Dict[str, Any], int]] = [
    ({"sensor": "boiler", "value": 85.0, "alert": "overheat"}, 1),
    ({"sensor": "vibration", "zscore": 4.25, "axes": [0.1, -0.2, 9.81]}, 2),
    ({"sensor": "motor", "rpm": 1450, "unit": "rpm", "tags": {"line": "A", "cell": 3}}, 3),
    ({"sensor": "ünïcødé ☃", "text": 'line\nbreak\ttab "quoted"', "empty": {}, "none": None}, 3),
    ({"log": "boot", "big": 12345678901234567, "tiny": 1e-300, "neg": -0.5, "flag": True}, 4),
]
NACKED_INDEX = 2  # this item is nacked once (retry_count 1, due immediately)


def _write_with_queue(path: str, backend: str) -> None:
    from pyv_edge_agent.cloud_sync import CloudSyncQueue, _codec

    module = importlib.import_module(f"pyv_edge_agent.cloud_sync._codec._{'c' if backend == 'cython' else 'py'}")
    for name in ("encode_payload", "encode_rows", "decode_rows", "id_chunks"):
        setattr(_codec, name, getattr(module, name))
    with CloudSyncQueue(path) as queue:
        ids = [queue.enqueue(payload, priority=priority, ttl_seconds=TTL) for payload, priority in ITEMS]
        queue.nack([ids[NACKED_INDEX]], retry_delay_seconds=0)


def _write_legacy(path: str) -> None:
    legacy.create(path)
    ids = [legacy.enqueue(path, payload, priority=priority, ttl_seconds=TTL) for payload, priority in ITEMS]
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE sync_queue SET retry_count = retry_count + 1, next_retry_at = ? WHERE id = ?",
        (time.time(), ids[NACKED_INDEX]),
    )
    conn.commit()
    conn.close()


def main() -> None:
    """Write any golden file that does not exist yet."""
    from pyv_edge_agent.cloud_sync import __version__

    targets = {
        "legacy-reference.db": _write_legacy,
        f"v{__version__}-python.db": lambda p: _write_with_queue(p, "python"),
        f"v{__version__}-cython.db": lambda p: _write_with_queue(p, "cython"),
    }
    for name, write in targets.items():
        path = os.path.join(HERE, name)
        if os.path.exists(path):
            print(f"kept {name}")
            continue
        scratch = path + ".tmp"
        shutil.rmtree(scratch, ignore_errors=True)
        write(scratch)
        conn = sqlite3.connect(scratch)
        # Fold the WAL into the file so that the golden copy is one self-contained file.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        os.replace(scratch, path)
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
