"""The MQTT input: the service subscribes to a local broker and stores what it receives.

The session is persistent (a fixed client id, clean start off, a session expiry), the
subscriptions QoS 1, and each message is acknowledged by hand only once it is committed
(paho's ``manual_ack``), so a kill -9 at any moment loses nothing: the broker sends again
what was not acknowledged. Messages are committed in groups (whatever arrived meanwhile,
one transaction per route). A message that is not a JSON object is kept in the rejects
file with its reason (one JSON line, written and synced before the acknowledgement),
counted and logged, then acknowledged (``rejects``; ``cloud-sync rejects FILE`` lists them).
"""

import logging
import os
import queue as queue_module
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import orjson

from .._errors import MissingExtraError, QueueFullError
from .._queue import CloudSyncQueue
from .._types import Priority
from .config import MQTTInputConfig, MQTTRoute
from .rejects import Reject, append

try:
    import paho.mqtt.client as paho_client
except ImportError:
    raise MissingExtraError("the MQTT input needs the serve extra: pip install 'pyv-edge-agent[serve]'") from None

# paho-mqtt's module, untyped where the service calls it (its names differ across 2.x).
mqtt: Any = paho_client

logger = logging.getLogger("pyv_edge_agent.cloud_sync.service")

# The most messages committed in one transaction.
_GROUP = 500
_DEFAULT_ROUTE = MQTTRoute("#", Priority.TELEMETRY, 86400, None)


class MQTTInput:
    """Subscribes to ``config.topics`` and stores each message in ``queue``; ``start()``,
    ``stop()``, ``hold()`` and ``resume()`` around a reopening of the queue, ``connected``
    (set once subscribed), and the counters ``stored`` and ``rejected``."""

    def __init__(self, config: MQTTInputConfig, queue: CloudSyncQueue, rejects_path: str, keep_payloads: bool) -> None:
        self.config = config
        self.queue = queue
        self.rejects_path = rejects_path
        self.keep_payloads = keep_payloads
        self.stored = 0
        self.rejected = 0
        self.connected = threading.Event()
        self._inbox: "queue_module.Queue[Any]" = queue_module.Queue()
        self._stop = threading.Event()
        # Held while a group is committed, and by hold() until resume().
        self._committing = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id, protocol=mqtt.MQTTv5, manual_ack=True
        )
        if config.username is not None:
            self._client.username_pw_set(config.username, config.password)
        if config.tls:
            self._client.tls_set(ca_certs=config.ca_certs, certfile=config.client_cert, keyfile=config.client_key)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = lambda client, userdata, message: self._inbox.put(message)
        self._client.on_subscribe = lambda *args: self.connected.set()
        self._client.reconnect_delay_set(1, 30)
        self._committer = threading.Thread(target=self._commit_loop, name="cloud-sync-mqtt-input", daemon=True)

    def start(self) -> None:
        """Connect in the background (reconnecting as needed) and start committing."""
        properties = mqtt.Properties(mqtt.PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.config.session_expiry
        self._client.connect_async(
            self.config.host, self.config.port, self.config.keepalive, clean_start=False, properties=properties
        )
        self._client.loop_start()
        self._committer.start()

    def stop(self, timeout: float) -> None:
        """Stop receiving; what was received and not committed is not acknowledged, so the
        broker sends it again to the next run."""
        self._client.disconnect()
        self._client.loop_stop()
        self._stop.set()
        self._committer.join(timeout)

    def hold(self) -> None:
        """Wait for the commit under way, then commit nothing until ``resume``: what arrives
        meanwhile waits, unacknowledged (blocks; call it off the event loop)."""
        self._committing.acquire()

    def resume(self, queue: Optional[CloudSyncQueue]) -> None:
        """Commit into ``queue`` from now on (None: stop committing, as ``stop`` does)."""
        if queue is None:
            self._stop.set()
        else:
            self.queue = queue
        self._committing.release()

    def alive(self) -> bool:
        """True while the committing thread runs."""
        return self._committer.is_alive()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            logger.error("MQTT input: the broker %s:%d refused the connection: %s", *self._where(), reason)
            return
        client.subscribe([(topic, 1) for topic in self.config.topics])  # its SUBACK sets ``connected``
        logger.info("MQTT input: connected to %s:%d, subscribed to %s", *self._where(), list(self.config.topics))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self.connected.is_set():
            logger.warning("MQTT input: disconnected from %s:%d (%s); reconnecting", *self._where(), reason)
        self.connected.clear()

    def _where(self) -> Tuple[str, int]:
        return self.config.host, self.config.port

    def _commit_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._inbox.get(timeout=0.2)
            except queue_module.Empty:
                continue
            messages = [first]
            while len(messages) < _GROUP:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue_module.Empty:
                    break
            while not self._stop.is_set():
                try:
                    with self._committing:
                        if self._stop.is_set():
                            break
                        self._commit(messages)
                    break
                except QueueFullError as exc:
                    # Not acknowledged: held here until there is room, or sent again by the
                    # broker to the next run.
                    logger.warning("MQTT input: holding %d messages: %s", len(messages), exc)
                    self._stop.wait(5.0)

    def _commit(self, messages: List[Any]) -> None:
        """Store ``messages`` and acknowledge each once committed; ``messages`` keeps what is
        left when a group is refused (a retry stores none twice)."""
        groups: Dict[MQTTRoute, List[Tuple[Any, Dict[str, Any]]]] = {}
        rejects: List[Tuple[Any, str]] = []
        for message in messages:
            try:
                payload = orjson.loads(message.payload)
            except orjson.JSONDecodeError as exc:
                rejects.append((message, f"not valid JSON: {str(exc).splitlines()[0][:200]}"))
                continue
            if not isinstance(payload, dict):
                rejects.append((message, f"a JSON {type(payload).__name__}, not an object"))
                continue
            groups.setdefault(self._route(message.topic), []).append((message, payload))
        if rejects:
            self._keep(rejects)
            self._done(messages, [message for message, _ in rejects])
            self.rejected += len(rejects)
        for route, entries in groups.items():
            payloads = [payload for _, payload in entries]
            self.queue.enqueue_many(payloads, route.priority, route.ttl_seconds, route.destinations)
            self._done(messages, [message for message, _ in entries])
            self.stored += len(entries)

    def _done(self, messages: List[Any], settled: List[Any]) -> None:
        for message in settled:
            self._client.ack(message.mid, message.qos)
        ids = {id(message) for message in settled}
        messages[:] = [message for message in messages if id(message) not in ids]

    def _route(self, topic: str) -> MQTTRoute:
        for route in self.config.routes:
            if mqtt.topic_matches_sub(route.filter, topic):
                return route
        return _DEFAULT_ROUTE

    def _keep(self, rejects: Sequence[Tuple[Any, str]]) -> None:
        now = time.time()
        kept = []
        for message, reason in rejects:
            payload = message.payload if self.keep_payloads else None
            kept.append(Reject(now, message.topic, reason, len(message.payload), payload))
            logger.warning("MQTT input: kept a message from %r in the rejects file: %s", message.topic[:200], reason)
        append(self.rejects_path, kept)


def rejects_path(config: MQTTInputConfig, db_path: str) -> str:
    """The rejects file: ``rejects_path`` of ``[ingest.mqtt]``, else beside the queue file."""
    return config.rejects_path or os.path.join(os.path.dirname(os.path.abspath(db_path)), "mqtt-rejects.jsonl")
