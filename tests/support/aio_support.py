"""Helpers of the asyncio tests: an asynchronous uploader written on asyncio streams, as a
user of the asyncio API would write one (plain HTTP/1.1 over a fresh loopback connection
per batch), and a runner for test coroutines."""

import asyncio
import threading
import time
import uuid
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Tuple, TypeVar
from urllib.parse import urlsplit

import orjson

from pyv_edge_agent.cloud_sync import UploadError, UploadResult

# A guard against hanging, never a measure of speed: the machine is shared and noisy.
PATIENCE = 30.0

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    """Run a test's coroutine on a fresh event loop, failing it rather than hanging."""

    async def guarded() -> T:
        return await asyncio.wait_for(main(), 120)

    return asyncio.run(guarded())


async def eventually(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll ``condition`` without blocking the loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.01)
    return condition()


class StreamUploader:
    """Posts each batch as a coroutine on the event loop: the ready body through
    ``post_encoded_batch`` (what the flush uses), or payloads through ``post_batch``.

    Records the threads its coroutines ran on, and counts the uploads begun, sent (the
    whole request handed to the socket) and ended.
    """

    def __init__(self, url: str, api_key: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname in ("127.0.0.1", "::1") and parts.port is not None
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path
        self._api_key = api_key
        self.threads: Set[int] = set()
        self.started = 0
        self.sent = 0
        self.finished = 0

    async def post_batch(self, payloads: List[Any]) -> Optional[UploadResult]:
        """Send the payloads as one JSON array under a key of their own."""
        return await self.post_encoded_batch(orjson.dumps(payloads), len(payloads), uuid.uuid4().hex)

    async def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str) -> Optional[UploadResult]:
        """Send one JSON array body; raise ``UploadError`` for an HTTP error status."""
        self.threads.add(threading.get_ident())
        self.started += 1
        try:
            status, headers, reply = await self._post(body, idempotency_key)
        finally:
            self.finished += 1
        if not 200 <= status < 300:
            retry_after = headers.get("retry-after")
            raise UploadError(
                f"the endpoint answered {status}",
                status=status,
                retry_after=float(retry_after) if retry_after else None,
            )
        answer = orjson.loads(reply or b"{}")
        rejected = answer.get("rejected") if isinstance(answer, dict) else None
        return UploadResult(rejected=rejected, status=status) if rejected else None

    async def _post(self, body: bytes, key: str) -> Tuple[int, Dict[str, str], bytes]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Authorization: Bearer {self._api_key}\r\nIdempotency-Key: {key}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
            self.sent += 1
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("the endpoint closed the connection without answering")
            status = int(status_line.split()[1])
            headers: Dict[str, str] = {}
            while True:
                line = (await reader.readline()).decode("latin-1").strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            reply = await reader.readexactly(int(headers.get("content-length", "0")))
            return status, headers, reply
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


class StreamPayloadUploader:
    """The same transport behind an ``async def post_batch(payloads)``: the decoded form."""

    def __init__(self, url: str, api_key: str) -> None:
        self.stream = StreamUploader(url, api_key)
        self.batches: List[List[Any]] = []

    async def post_batch(self, payloads: List[Any]) -> Optional[UploadResult]:
        """Send the payloads as one JSON array (without an idempotency key of its own)."""
        self.batches.append(payloads)
        return await self.stream.post_batch(payloads)
