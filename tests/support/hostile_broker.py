"""A hostile MQTT 5 broker on loopback, for the deadline tests: it speaks just enough MQTT to
answer CONNECT and to PUBACK, and then misbehaves on purpose (PUBACKs one at a time and
slowly, a CONNACK far larger than anything a broker sends, a PUBACK reason code that no
PUBACK may carry).

It runs an asyncio loop in a thread of its own and records what clients sent: the CONNECT
properties and the packet id of every PUBLISH.
"""

import asyncio
import struct
import threading
from typing import Any, Dict, List, Optional, Tuple

CONNECT, CONNACK, PUBLISH, PUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 12, 13, 14
MAXIMUM_PACKET_SIZE = 0x27
USER_PROPERTY = 0x26


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (128 if value else 0))
        if not value:
            return bytes(out)


def packet(kind: int, body: bytes, flags: int = 0) -> bytes:
    """One MQTT packet: the fixed header, then ``body``."""
    return bytes([kind << 4 | flags]) + _varint(len(body)) + body


def _read_varint(data: bytes, at: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 127) << shift
        shift += 7
        if not byte & 128:
            return value, at


def connect_properties(body: bytes) -> Dict[int, Any]:
    """The properties of a CONNECT packet's variable header (identifier to value; the
    four-byte integers and two-byte integers decoded, the rest as bytes)."""
    name_length = struct.unpack_from("!H", body, 0)[0]
    at = 2 + name_length + 1 + 1 + 2  # protocol name, level, flags, keep-alive
    length, at = _read_varint(body, at)
    end = at + length
    found: Dict[int, Any] = {}
    while at < end:
        ident = body[at]
        at += 1
        if ident in (0x11, 0x27):  # four-byte integers
            found[ident] = struct.unpack_from("!I", body, at)[0]
            at += 4
        elif ident in (0x21, 0x22):  # two-byte integers
            found[ident] = struct.unpack_from("!H", body, at)[0]
            at += 2
        elif ident in (0x17, 0x19):  # bytes
            found[ident] = body[at]
            at += 1
        else:  # the rest are length-prefixed
            size = struct.unpack_from("!H", body, at)[0]
            found[ident] = body[at + 2 : at + 2 + size]
            at += 2 + size
    return found


class HostileBroker:
    """An MQTT 5 "broker" on 127.0.0.1 that misbehaves as told.

    :param puback_every: seconds between two PUBACKs (they are sent one at a time, in order).
    :param puback_reason: the reason code of every PUBACK.
    :param connack_padding: bytes of user properties to pad CONNACK with (a hostile broker).
    """

    def __init__(self, *, puback_every: float = 0.0, puback_reason: int = 0, connack_padding: int = 0) -> None:
        self.puback_every = puback_every
        self.puback_reason = puback_reason
        self.connack_padding = connack_padding
        self.connects: List[Dict[int, Any]] = []
        self.published: List[int] = []
        self.acked: List[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: Optional[asyncio.AbstractServer] = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="hostile-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the hostile broker did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _connack(self) -> bytes:
        properties = b""
        if self.connack_padding:
            # Many small user properties: costly to decode, each a valid property.
            one = bytes([USER_PROPERTY]) + struct.pack("!H", 1) + b"k" + struct.pack("!H", 1) + b"v"
            properties = one * (self.connack_padding // len(one))
        return packet(CONNACK, b"\x00\x00" + _varint(len(properties)) + properties)

    async def _read_packet(self, reader: asyncio.StreamReader) -> Tuple[int, int, bytes]:
        first = (await reader.readexactly(1))[0]
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 127) << shift
            shift += 7
            if not byte & 128:
                break
        return first >> 4, first & 15, await reader.readexactly(length)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        acks: "asyncio.Queue[int]" = asyncio.Queue()
        acker = asyncio.ensure_future(self._ack_slowly(acks, writer))
        try:
            while True:
                kind, flags, body = await self._read_packet(reader)
                if kind == CONNECT:
                    self.connects.append(connect_properties(body))
                    writer.write(self._connack())
                elif kind == PUBLISH:
                    topic_length = struct.unpack_from("!H", body, 0)[0]
                    mid = struct.unpack_from("!H", body, 2 + topic_length)[0] if flags & 6 else 0
                    self.published.append(mid)
                    if flags & 6:
                        acks.put_nowait(mid)
                elif kind == PINGREQ:
                    writer.write(packet(PINGRESP, b""))
                elif kind == DISCONNECT:
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # the client went, or the broker is closing
        finally:
            acker.cancel()
            writer.close()

    async def _ack_slowly(self, acks: "asyncio.Queue[int]", writer: asyncio.StreamWriter) -> None:
        while True:
            mid = await acks.get()
            await asyncio.sleep(self.puback_every)
            writer.write(packet(PUBACK, struct.pack("!HB", mid, self.puback_reason) + b"\x00"))
            self.acked.append(mid)
            await writer.drain()

    def close(self) -> None:
        """Stop serving and end the thread."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> "HostileBroker":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
