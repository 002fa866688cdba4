"""A real Mosquitto broker on loopback for the MQTT tests, a subscriber that records what
it gets, and a relay that sees every PUBACK on the wire.

The broker has a password file, an ACL file, ``max_packet_size`` and two listeners: plain
TCP with a password, and TLS that requires a client certificate (made with trustme) whose
common name is the user name.
"""

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import orjson
import pytest
from crypto_extra import import_or_skip

USER, PASSWORD = "edge", "edge-secret-pw-42"
READER, READER_PASSWORD = "reader", "reader-secret-pw-7"
MAX_PACKET_SIZE = 4096
ALLOWED_TOPICS = ("sensors/#", "bench/#")


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range: while a test has the broker
    down, no outgoing connection on the machine can be given it, so a restart gets it back."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def _wait_for_port(port: int, process: "subprocess.Popen[bytes]", log: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as handle:
                raise RuntimeError(f"mosquitto exited with {process.returncode}: {handle.read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port}")


class Broker:
    """A Mosquitto process and its files; ``kill()`` SIGKILLs it, ``start()`` brings it back
    on the same ports, ``allow(topic)`` widens the ACL and reloads it."""

    def __init__(self, directory: str) -> None:
        import trustme

        self.dir = directory
        self.port = free_port()
        self.tls_port = free_port()
        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        client = self.ca.issue_cert("edge-device", common_name=USER)
        self.ca_file = self._path("ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        server.private_key_and_cert_chain_pem.write_to_path(self._path("server.pem"))
        self.client_cert = self._path("client.pem")
        self.client_key = self._path("client.key")
        client.cert_chain_pems[0].write_to_path(self.client_cert)
        client.private_key_pem.write_to_path(self.client_key)
        self.passwords = self._path("passwords")
        open(self.passwords, "w").close()
        for user, password in ((USER, PASSWORD), (READER, READER_PASSWORD)):
            subprocess.run(["mosquitto_passwd", "-b", self.passwords, user, password], check=True)
        self.allowed: List[str] = list(ALLOWED_TOPICS)
        self._write_acl()
        self.log = self._path("mosquitto.log")
        self._write_config()
        self.process: Optional["subprocess.Popen[bytes]"] = None
        self.started = False

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def _write_acl(self) -> None:
        lines = [f"user {USER}"] + [f"topic write {t}" for t in self.allowed] + [f"user {READER}", "topic read #"]
        with open(self._path("acl"), "w") as handle:
            handle.write("\n".join(lines) + "\n")

    def _write_config(self) -> None:
        server = self._path("server.pem")
        config = f"""
user root
per_listener_settings false
allow_anonymous false
password_file {self.passwords}
acl_file {self._path("acl")}
persistence false
max_packet_size {MAX_PACKET_SIZE}
max_queued_messages 0
log_dest file {self.log}
log_type error
log_type warning
listener {self.port} 127.0.0.1
listener {self.tls_port} 127.0.0.1
cafile {self.ca_file}
certfile {server}
keyfile {server}
require_certificate true
use_identity_as_username true
"""
        with open(self._path("mosquitto.conf"), "w") as handle:
            handle.write(config)

    def start(self) -> None:
        """Start the broker; the first start moves to other ports if another process took these."""
        for attempt in range(3):
            try:
                return self._start()
            except RuntimeError:
                if self.started or attempt == 2 or "Address already in use" not in self.log_text():
                    raise
                self.port, self.tls_port = free_port(), free_port()
                self._write_config()

    def _start(self) -> None:
        log = open(self.log, "ab")
        self.process = subprocess.Popen(
            ["mosquitto", "-c", self._path("mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        _wait_for_port(self.port, self.process, self.log)
        _wait_for_port(self.tls_port, self.process, self.log)
        self.started = True

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def allow(self, topic: str) -> None:
        """Let the publishing user write ``topic`` too; SIGHUP makes Mosquitto reread the ACL."""
        self.allowed.append(topic)
        self._write_acl()
        assert self.process is not None
        self.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)  # the reload happens in the broker's next loop turn

    def log_text(self) -> str:
        with open(self.log, encoding="utf-8", errors="replace") as handle:
            return handle.read()


def mosquitto_or_skip() -> None:
    """Skip, naming why, where the broker cannot run; CI installs it (tools/internal/system-packages.txt)."""
    missing = [tool for tool in ("mosquitto", "mosquitto_passwd") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("PYV_EDGE_AGENT_REQUIRE_SYSTEM_DEPS") == "1":
            pytest.fail(f"CI must run the MQTT tests, but {', '.join(missing)} is missing (Debian package mosquitto)")
        pytest.skip(f"{', '.join(missing)} not installed (Debian package mosquitto; tools/internal/system-deps.sh)")
    pytest.importorskip("paho.mqtt", reason="paho-mqtt is not installed (the 'mqtt' extra)")
    import_or_skip("trustme", reason="trustme is not installed (the 'test' extra)")


@contextlib.contextmanager
def running_broker(prefix: str) -> Iterator["Broker"]:
    """A broker started in a directory of its own, stopped and removed at the end (the test
    is skipped where Mosquitto is missing)."""
    mosquitto_or_skip()
    with tempfile.TemporaryDirectory(prefix=prefix) as directory:
        broker = Broker(directory)
        broker.start()
        try:
            yield broker
        finally:
            broker.stop()


class Subscriber:
    """A QoS 1 subscriber with a persistent session, recording each message's ``id`` field
    (and topic, properties) in arrival order; it resubscribes after a broker restart."""

    def __init__(self, broker: Broker, topic: str = "#", protocol: str = "5") -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.v5 = protocol == "5"
        self.messages: List[Tuple[str, Dict[str, Any], Any]] = []
        self.subscribed = threading.Event()
        self._topic = topic
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"reader-{uuid.uuid4().hex[:12]}",
            clean_session=None if self.v5 else False,
            protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
        )
        self.client.username_pw_set(READER, READER_PASSWORD)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *args: self.subscribed.clear()
        self.client.reconnect_delay_set(0, 1)
        extra: Dict[str, Any] = {}
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            extra = {"clean_start": False, "properties": props}
        self.client.connect("127.0.0.1", broker.port, 30, **extra)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the subscriber did not subscribe"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason == 0:
            client.subscribe(self._topic, qos=1)  # SUBACK sets ``subscribed``

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        payload = orjson.loads(message.payload)
        with self._lock:
            self.messages.append((message.topic, payload, message.properties))

    def ids(self) -> List[int]:
        with self._lock:
            return [payload["id"] for _, payload, _ in self.messages]

    def wait_for(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` messages have arrived (or ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while len(self.ids()) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def wait_for_ids(self, ids: Set[int], timeout: float = 30) -> None:
        """Wait until every one of ``ids`` has arrived at least once (or ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while not ids <= set(self.ids()) and time.monotonic() < deadline:
            time.sleep(0.02)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class PubackRelay:
    """A TCP relay between the uploader and the broker that reads the MQTT stream in both
    directions: which item each PUBLISH carried, and which PUBACKs reached the uploader.
    After ``hold_after`` PUBACKs it forwards nothing more to the uploader, as a link that
    loses the answers would."""

    def __init__(self, broker_port: int, hold_after: Optional[int] = None, v5: bool = True) -> None:
        self.port = free_port()
        self._broker_port = broker_port
        self._hold_after = hold_after
        self._v5 = v5
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pending: Dict[int, int] = {}  # packet id -> item id, for publishes not yet acked
        self.published: List[int] = []
        self.pubacked: Set[int] = set()
        self.held = threading.Event()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self._broker_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, upstream, self._on_publish), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, self._on_puback), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, on_packet: Any) -> None:
        buffer = b""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                buffer += data
                while True:
                    packet = _split_packet(buffer)
                    if packet is None:
                        break
                    raw, header, body = packet
                    buffer = buffer[len(raw) :]
                    if on_packet == self._on_publish:
                        on_packet(header, body)  # known before the broker can answer it
                        sink.sendall(raw)
                    elif not self.held.is_set():
                        sink.sendall(raw)
                        on_packet(header, body)  # counted once it reached the uploader
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _on_publish(self, header: int, body: bytes) -> None:
        if header >> 4 != 3:
            return
        topic_length = struct.unpack("!H", body[:2])[0]
        pos = 2 + topic_length
        packet_id = struct.unpack("!H", body[pos : pos + 2])[0]
        pos += 2
        if self._v5:
            length, pos = _varint(body, pos)
            pos += length
        item = orjson.loads(body[pos:])["id"]
        with self._lock:
            self._pending[packet_id] = item
            self.published.append(item)

    def _on_puback(self, header: int, body: bytes) -> None:
        if header >> 4 != 4:
            return
        packet_id = struct.unpack("!H", body[:2])[0]
        reason = body[2] if self._v5 and len(body) > 2 else 0
        with self._lock:
            item = self._pending.pop(packet_id, None)
            if item is not None and reason < 0x80:
                self.pubacked.add(item)
            if self._hold_after is not None and len(self.pubacked) >= self._hold_after:
                self.held.set()

    def release(self) -> None:
        """Forward everything again (new connections; a held one stays broken)."""
        self._hold_after = None
        self.held.clear()

    def close(self) -> None:
        self._listener.close()


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value, multiplier = 0, 1
    while True:
        if pos >= len(data):
            raise IndexError(pos)
        byte = data[pos]
        pos += 1
        value += (byte & 127) * multiplier
        multiplier *= 128
        if not byte & 128:
            return value, pos


def _split_packet(buffer: bytes) -> Optional[Tuple[bytes, int, bytes]]:
    """The first whole MQTT packet in ``buffer`` as (raw bytes, first byte, body), or None."""
    try:
        length, start = _varint(buffer, 1)
    except IndexError:
        return None
    if len(buffer) < start + length:
        return None
    return buffer[: start + length], buffer[0], buffer[start : start + length]
