"""The local API: ``POST /v1/items``, ``GET /healthz``, ``/readyz``, ``/metrics`` and
``/v1/stats``.

Everything a request can be refused for in its headers (the token, the size, the
priority, TTL and destinations) is checked before a byte of its body is read. A request
is stored whole or not at all, and ``201`` is sent only once its items are committed;
every refusal is answered with its status and a one-line reason, never a silent drop.
"""

import asyncio
import hmac
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import orjson

from .._errors import CloudSyncError, QueueFullError
from .._metrics import prometheus_text
from .._types import Priority
from ..aio import AsyncCloudSyncQueue
from .config import IngestConfig
from .listen import BoundedServer, web

NDJSON = "application/x-ndjson"


class BadRequest(Exception):
    """A request refused with ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str, headers: Optional[Dict[str, str]] = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class IngestAPI:
    """The request handler of one listener (``tcp``: a bearer token is required).

    :param not_ready: why the service is not ready (None: it is), for ``/readyz``.
    :param stopping: True once the service is shutting down: ``POST`` gets 503.
    :param more_metrics: more Prometheus lines for ``/metrics`` (the MQTT input's).
    """

    def __init__(
        self,
        queue: AsyncCloudSyncQueue,
        ingest: IngestConfig,
        *,
        not_ready: Callable[[], Optional[str]],
        stopping: Callable[[], bool],
        more_metrics: Callable[[], List[str]] = list,
    ) -> None:
        self.queue = queue
        self.ingest = ingest
        self.not_ready = not_ready
        self.stopping = stopping
        self.more_metrics = more_metrics
        self.items_stored = 0
        self.refused: Dict[int, int] = {}

    def server(self, tcp: bool) -> BoundedServer:
        """An HTTP server answering with this API (over TCP: token required)."""
        holder: List[BoundedServer] = []

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            holder[0].started(request)
            return await self.answer(request, tcp)

        server = BoundedServer(
            handle,
            max_connections=self.ingest.max_connections,
            idle_timeout=self.ingest.idle_timeout,
            access_log=None,
        )
        holder.append(server)
        return server

    async def answer(self, request: web.BaseRequest, tcp: bool) -> web.StreamResponse:
        """Route one request; a refusal becomes its status and a JSON ``{"error": reason}``."""
        try:
            if tcp:
                self._authorize(request)
            route = _ROUTES.get(request.path)
            if route is None:
                raise BadRequest(404, f"no such route: {request.path[:100]}")
            method, run = route
            if request.method != method:
                raise BadRequest(405, f"{request.path} takes {method}", {"Allow": method})
            try:
                return await run(self, request)
            except CloudSyncError:
                if not self.queue.closed:
                    raise
                # Closed for a moment while a reload reopens it: nothing of the request is stored.
                reason = "the queue is being reopened for a new configuration"
                raise BadRequest(503, reason, {"Retry-After": "1"}) from None
        except BadRequest as exc:
            self.refused[exc.status] = self.refused.get(exc.status, 0) + 1
            response = web.json_response({"error": exc.reason}, status=exc.status, headers=exc.headers, dumps=_dumps)
            if exc.status == 413:
                response.force_close()
            return response

    def _authorize(self, request: web.BaseRequest) -> None:
        token = self.ingest.token
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if token is None or not hmac.compare_digest(given, b"Bearer " + token):
            raise BadRequest(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})

    async def post_items(self, request: web.BaseRequest) -> web.StreamResponse:
        """Store the request's items; 201 with their ids once committed."""
        if self.stopping():
            raise BadRequest(503, "the service is shutting down", {"Retry-After": "5"})
        priority, ttl, destinations = self._options(request)
        limit = self.ingest.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BadRequest(413, f"the body is over the limit of {limit} bytes")
        if request.headers.get("Expect", "").lower() == "100-continue":
            # The headers passed: now the client may send the body (RFC 9110, 10.1.1).
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._body(request, limit)
        payloads = _parse(body, request.content_type == NDJSON)
        try:
            if len(payloads) == 1:
                ids = [await self.queue.enqueue(payloads[0], priority, ttl, destinations)]
            else:
                ids = await self.queue.enqueue_many(payloads, priority, ttl, destinations)
        except QueueFullError as exc:
            retry = str(self.ingest.retry_after_seconds)
            raise BadRequest(507, f"storage is full: {exc}", {"Retry-After": retry}) from None
        except (TypeError, ValueError) as exc:
            raise BadRequest(400, str(exc).splitlines()[0][:300]) from None
        self.items_stored += len(ids)
        return web.json_response({"ids": ids}, status=201, dumps=_dumps)

    def _options(self, request: web.BaseRequest) -> Tuple[Priority, int, Optional[Sequence[str]]]:
        headers = request.headers
        priority = _priority(headers.get("X-Priority", "TELEMETRY"))
        ttl_text = headers.get("X-TTL-Seconds", "86400").strip()
        if not ttl_text.isdigit() or len(ttl_text) > 12:
            raise BadRequest(400, f"X-TTL-Seconds must be a whole number of seconds, got {ttl_text[:40]!r}")
        destinations: Optional[List[str]] = None
        if "X-Destinations" in headers:
            destinations = [name.strip() for name in headers["X-Destinations"].split(",")]
            known = self.queue.destinations
            unknown = [name for name in destinations if name not in known]
            if unknown or not destinations:
                raise BadRequest(
                    400, f"X-Destinations: unknown destination {unknown[0][:64]!r}; this service's are {list(known)}"
                )
            if len(set(destinations)) != len(destinations):
                raise BadRequest(400, "X-Destinations names a destination twice")
        return priority, int(ttl_text), destinations

    async def _body(self, request: web.BaseRequest, limit: int) -> bytes:
        chunks: List[bytes] = []
        size = 0
        while True:
            try:
                chunk = await asyncio.wait_for(request.content.readany(), self.ingest.idle_timeout)
            except asyncio.TimeoutError:
                raise BadRequest(408, f"no body data for {self.ingest.idle_timeout} seconds") from None
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"the body is over the limit of {limit} bytes")
            chunks.append(chunk)

    async def healthz(self, request: web.BaseRequest) -> web.StreamResponse:
        """Alive: the event loop answers."""
        return web.json_response({"status": "ok"}, dumps=_dumps)

    async def readyz(self, request: web.BaseRequest) -> web.StreamResponse:
        """Ready: not stopping, the file writable, every destination's worker running."""
        reason = "shutting down" if self.stopping() else self.not_ready()
        if reason is not None:
            raise BadRequest(503, reason)
        return web.json_response({"status": "ready"}, dumps=_dumps)

    async def metrics(self, request: web.BaseRequest) -> web.StreamResponse:
        """Prometheus text: the queue's figures (each destination's), then the API's."""
        stats = await self.queue.get_stats()
        lines = [
            prometheus_text(stats, self.queue.db_path).rstrip("\n"),
            "# HELP cloud_sync_ingest_items_total Items this service stored for local programs.",
            "# TYPE cloud_sync_ingest_items_total counter",
            f"cloud_sync_ingest_items_total {self.items_stored}",
            "# HELP cloud_sync_ingest_refused_total Requests this service refused, by status.",
            "# TYPE cloud_sync_ingest_refused_total counter",
        ]
        lines += [f'cloud_sync_ingest_refused_total{{status="{s}"}} {n}' for s, n in sorted(self.refused.items())]
        lines += self.more_metrics()
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain", charset="utf-8")

    async def stats(self, request: web.BaseRequest) -> web.StreamResponse:
        """The queue's ``get_stats()`` as JSON."""
        return web.json_response(await self.queue.get_stats(), dumps=_dumps)


_Route = Callable[[IngestAPI, web.BaseRequest], Awaitable[web.StreamResponse]]
_ROUTES: Dict[str, Tuple[str, _Route]] = {
    "/v1/items": ("POST", IngestAPI.post_items),
    "/healthz": ("GET", IngestAPI.healthz),
    "/readyz": ("GET", IngestAPI.readyz),
    "/metrics": ("GET", IngestAPI.metrics),
    "/v1/stats": ("GET", IngestAPI.stats),
}


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def _priority(text: str) -> Priority:
    word = text.strip()
    if word.isdigit() and 1 <= int(word) <= 4:
        return Priority(int(word))
    try:
        return Priority[word.upper()]
    except KeyError:
        names = ", ".join(f"{p.name} ({p.value})" for p in Priority)
        raise BadRequest(400, f"X-Priority must be one of {names}, got {word[:40]!r}") from None


def _parse(body: bytes, ndjson: bool) -> List[Dict[str, Any]]:
    """The payloads of a body: one JSON object, an array of objects, or NDJSON lines."""
    if ndjson:
        lines = [line for line in body.split(b"\n") if line.strip()]
        payloads = [_json(line, f"line {number}") for number, line in enumerate(lines, 1)]
    else:
        document = _json(body, "the body")
        payloads = document if isinstance(document, list) else [document]
    if not payloads:
        raise BadRequest(400, "no items in the body")
    for index, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            raise BadRequest(400, f"item {index} is a JSON {type(payload).__name__}, not an object")
    return payloads


def _json(text: bytes, where: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(400, f"{where} is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
