"""``PacketGuard`` follows a broker's packets however paho's reads split them: whole
packets, one byte at a time, several packets in one read, a read ending inside a header;
it refuses a packet over the limit at its header, before a byte of its body is taken, and a
remaining length longer than four bytes."""

import random
from typing import List

import pytest
from hostile_broker import packet

from pyv_edge_agent.cloud_sync.delivery.mqtt.session import PacketGuard, PacketTooLargeError


def _packet(kind: int, body_size: int) -> bytes:
    return packet(kind, bytes(body_size))


def _splits(stream: bytes, seed: int) -> List[bytes]:
    chance = random.Random(seed)
    chunks, at = [], 0
    while at < len(stream):
        step = chance.choice([1, 1, 2, 3, 7, 200, 5000])
        chunks.append(stream[at : at + step])
        at += step
    return chunks


# PUBACKs (4 bytes), a PINGRESP (empty body), a DISCONNECT with a reason string, and bodies
# whose lengths take two and three bytes: 127, 128, 16383, 16384 are the edges.
STREAM = b"".join(
    [_packet(4, 2), _packet(4, 4), _packet(13, 0), _packet(14, 300), _packet(4, 127), _packet(4, 128)]
    + [_packet(4, 16_000), _packet(3, 16383 - 4)]
)


@pytest.mark.parametrize("seed", range(40))
def test_packets_within_the_limit_pass_however_the_reads_split_them(seed: int) -> None:
    guard = PacketGuard(16384)
    for chunk in _splits(STREAM, seed):
        guard.feed(chunk)
    assert guard.refused == ""
    guard.feed(_packet(4, 2))  # the next packet is followed from its first byte
    assert guard.refused == ""


def test_byte_by_byte_and_all_at_once_agree() -> None:
    one, whole = PacketGuard(16384), PacketGuard(16384)
    for at in range(len(STREAM)):
        one.feed(STREAM[at : at + 1])
    whole.feed(STREAM)
    assert one.refused == whole.refused == ""


@pytest.mark.parametrize("seed", range(20))
def test_a_packet_over_the_limit_is_refused_at_its_header(seed: int) -> None:
    guard = PacketGuard(16384)
    oversized = _packet(2, 16384)  # 1 + 3 + 16384 bytes: over by the header alone
    stream = _packet(4, 2) * 5 + oversized
    taken = 0
    with pytest.raises(PacketTooLargeError, match=r"packet of 16388 bytes \(type 2\)"):
        for chunk in _splits(stream, seed):
            taken += len(chunk)
            guard.feed(chunk)
    # Refused in the read that completed its header: no read past it was needed.
    header_end = 5 * 4 + 4
    assert taken >= header_end and taken - len(chunk) < header_end
    assert "Maximum Packet Size of 16384" in guard.refused


def test_a_packet_exactly_at_the_limit_passes() -> None:
    guard = PacketGuard(100)
    guard.feed(_packet(4, 98))  # 1 + 1 + 98
    with pytest.raises(PacketTooLargeError):
        guard.feed(_packet(4, 99))


def test_a_remaining_length_of_five_bytes_is_malformed() -> None:
    guard = PacketGuard(1 << 30)
    with pytest.raises(PacketTooLargeError, match="malformed packet length"):
        guard.feed(b"\x40\xff\xff\xff\xff\x01")
    assert guard.refused == "the broker sent a malformed packet length"
