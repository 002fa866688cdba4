"""Queue files written by the earlier release and by each backend of every release open
unchanged and keep their items (see golden/make_golden.py)."""

import glob
import os
import shutil
from typing import Any

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")
GOLDEN_FILES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.db")))

EXPECTED_PAYLOADS = [
    {"sensor": "boiler", "value": 85.0, "alert": "overheat"},
    {"sensor": "vibration", "zscore": 4.25, "axes": [0.1, -0.2, 9.81]},
    {"sensor": "ünïcødé ☃", "text": 'line\nbreak\ttab "quoted"', "empty": {}, "none": None},
    {"sensor": "motor", "rpm": 1450, "unit": "rpm", "tags": {"line": "A", "cell": 3}},  # nacked once: after its peer
    {"log": "boot", "big": 12345678901234567, "tiny": 1e-300, "neg": -0.5, "flag": True},
]


def test_golden_files_exist() -> None:
    names = {os.path.basename(path) for path in GOLDEN_FILES}
    assert {"legacy-reference.db", "v0.1.0-python.db", "v0.1.0-cython.db"} <= names


@pytest.mark.parametrize("golden", GOLDEN_FILES, ids=os.path.basename)
def test_golden_file_opens_with_items_intact(golden: str, tmp_path: Any) -> None:
    path = os.path.join(tmp_path, os.path.basename(golden))
    shutil.copyfile(golden, path)  # the committed file is never written to
    with CloudSyncQueue(path) as queue:
        assert queue.pending_count() == 5
        items = queue.dequeue(batch_size=10)
        assert [item.payload for item in items] == EXPECTED_PAYLOADS
        assert [item.priority for item in items] == [Priority.CRITICAL, Priority.ANOMALY] + [Priority.TELEMETRY] * 2 + [
            Priority.LOGS
        ]
        assert [item.retry_count for item in items] == [0, 0, 0, 1, 0]
        new_id = queue.enqueue({"after": "upgrade"})
        assert new_id == max(item.id for item in items) + 1
        assert queue.ack([item.id for item in items] + [new_id]) == 6
