"""The uploaders' tests run once, on the backend in use: they check transports (HTTP, TLS,
proxies, credentials, MQTT, hostile endpoints and brokers, the reference ingest server),
which take the stored texts as they are. The codec calls on the way (encoding on enqueue,
splicing and settling in a flush) are the queue's, and run on both backends in ../codec/,
../store/, ../flush/ and ../test_queue.py."""

import pytest

from pyv_edge_agent.cloud_sync import BACKEND


@pytest.fixture(autouse=True)
def backend() -> str:
    """In place of the both-backends fixture of ../../conftest.py: one run, on ``BACKEND``."""
    return BACKEND
