"""A long link on loopback: a userspace TCP relay that delays every chunk it carries.

``tc ... netem`` is not available in these kernels (see /work/shared/FIELD-NOTES.md), so a
round trip is made long here instead: ``LatencyRelay(target_port, delay)`` listens on
127.0.0.1 and relays each connection to the target port, holding every chunk read in
either direction for ``delay`` seconds before writing it on. Chunks keep their order and
are not held behind one another (each is due ``delay`` after it was read), so a round
trip costs ``2 * delay`` whatever the traffic, as on a long link with room to spare; the
bandwidth is loopback's. ``connections`` counts the connections made through it.

Used by the flush tests (batches in flight) and by the benchmarks of drain time against
the round trip.
"""

import asyncio
import threading
import time
from typing import List, Optional, Set, Tuple

CHUNK = 65536


class LatencyRelay:
    """Relays 127.0.0.1:``port`` to 127.0.0.1:``target_port``, ``delay`` seconds each way."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port = target_port
        self.delay = delay
        self.port = 0
        self.connections = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None
        self._ready = threading.Event()
        self._stopped: Optional[asyncio.Event] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._writers: List[asyncio.StreamWriter] = []

    def __enter__(self) -> "LatencyRelay":
        self._thread = threading.Thread(target=self._run, name="latency-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency relay did not start")
        return self

    def __exit__(self, *exc_info: object) -> None:
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None:
            loop.call_soon_threadsafe(stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stopped.wait()
        server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            target_reader, target_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return
        self._writers += [client_writer, target_writer]
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await asyncio.gather(
                self._pipe(client_reader, target_writer),
                self._pipe(target_reader, client_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # the relay is closing: its connections end with it
        finally:
            for writer in (client_writer, target_writer):
                writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read chunks, and write each one ``delay`` after it was read; an end of stream
        is passed on as late as the data before it."""
        held: "asyncio.Queue[Tuple[float, bytes]]" = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await held.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                data = await reader.read(CHUNK)
                held.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
