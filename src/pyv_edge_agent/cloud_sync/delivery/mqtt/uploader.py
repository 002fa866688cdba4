"""``MQTTUploader``: one MQTT message per item, QoS 1, each item acked only on its PUBACK.

Also ``azure_iot_sas_token``, the rotating password Azure IoT Hub asks for.
"""

import base64
import hashlib
import hmac
import math
import os
import ssl
import threading
import time
import uuid
from collections import deque
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

from ... import _codec, _validate
from ..._errors import MissingExtraError, UploadError
from ..._redact import Secret
from ..._types import Priority
from ..._upload_types import OutgoingItem, UploadResult
from .. import tls as _tls
from .message import PackedProperties, TopicTemplate, publish_packet_size
from .session import (
    INCOMING_PACKET_LIMIT,
    NOT_AUTHORIZED,
    REJECTED,
    Delivery,
    Message,
    Session,
    deliver,
    guarded_client_class,
    merged,
)

# Without a configured window, an MQTT 3.1.1 broker gets paho's and Mosquitto's default.
DEFAULT_WINDOW = 20
# CONNACK refusals a person must fix: credentials, and a client id the broker will not take.
_CONNECT_REFUSED_FOR_GOOD = NOT_AUTHORIZED | {0x85}
# MQTT strings (client id, user name) and packet ids are 16-bit.
MQTT_MAX = 65535

Password = Union[None, str, Callable[[], str]]


def _paho() -> Any:
    """paho-mqtt's client module, or an ImportError that names the extra to install."""
    try:
        import paho.mqtt
        import paho.mqtt.client
    except ImportError as exc:
        raise MissingExtraError(
            "MQTTUploader needs paho-mqtt 2.x, from the 'mqtt' extra: pip install 'pyv-edge-agent[mqtt]'"
        ) from exc
    if int(paho.mqtt.__version__.split(".")[0]) < 2:
        raise MissingExtraError(
            f"MQTTUploader needs paho-mqtt 2.x, found {paho.mqtt.__version__}: pip install 'pyv-edge-agent[mqtt]'"
        )
    return paho.mqtt.client


def azure_iot_sas_token(resource_uri: str, key: str, *, ttl: float = 3600.0, policy_name: Optional[str] = None) -> str:
    """A Shared Access Signature for Azure IoT Hub, valid ``ttl`` seconds from now.

    :param resource_uri: ``"{hub}.azure-devices.net/devices/{device_id}"`` for a device key.
    :param key: the base64 key from the hub (the device's primary key, or a policy's).
    :param policy_name: the shared access policy the key belongs to; None for a device key.

    Pass ``password=lambda: azure_iot_sas_token(...)`` to ``MQTTUploader``: it is called at
    every (re)connect. The hub closes a connection whose token has expired; the next batch
    connects again, with a fresh token.
    """
    expiry = int(time.time() + _validate.number("ttl", ttl, 0.0, allow_equal=False))
    encoded_uri = quote(resource_uri, safe="")
    try:
        secret = base64.b64decode(key, validate=True)
    except (ValueError, TypeError):
        raise ValueError("key must be the base64 key Azure IoT Hub shows (it is not valid base64)") from None
    digest = hmac.new(secret, f"{encoded_uri}\n{expiry}".encode(), hashlib.sha256).digest()
    signature = quote(base64.b64encode(digest).decode(), safe="")
    token = f"SharedAccessSignature sr={encoded_uri}&sig={signature}&se={expiry}"
    return token + (f"&skn={quote(policy_name, safe='')}" if policy_name else "")


class _Refused(Exception):
    """The broker refused the connection for good (credentials, client id): a person must act."""


def _new_client_id() -> str:
    return f"pyv-edge-{uuid.uuid4().hex[:16]}"


class MQTTUploader:
    """Publishes each item as one MQTT message whose body is the stored JSON text as is.

    With ``qos=1`` (the default) an item is acked only after the broker's PUBACK for it:
    reason codes below 0x80 accept it (0x10, no matching subscribers, included); 0x86 and
    0x87 keep it and back off long, like a refused key; 0x90 and 0x99 reject it like HTTP
    422; anything else (quota 0x97 included) and a connection lost before the PUBACK retry
    it later. Items larger than the broker's Maximum Packet Size (from CONNACK, or
    ``max_packet_size`` for MQTT 3.1.1) are dead-lettered before they are sent. At most the
    broker's Receive Maximum (or ``max_inflight``) messages are in flight. ``qos=0`` is fire
    and forget: an item counts as delivered once written to the socket. The client announces
    a Maximum Packet Size of its own (16 KiB) and drops a broker that sends more.

    With MQTT 5 each message carries a Message Expiry Interval (the item's remaining TTL)
    and a user property ``idempotency-key`` that is the same on every retry of the item.
    Over MQTT 3.1.1 neither exists, and a publish the broker's ACL denies is answered with
    a plain PUBACK and dropped: the queue cannot see it.

    :param topic: the topic, with optional ``{priority}`` and ``{field}`` placeholders
        filled from each payload's top-level fields; an item without the field is rejected.
    :param password: a str, or a callable returning one, called at every (re)connect (a
        rotating token such as ``azure_iot_sas_token``). Never shown anywhere.
    :param tls: verify the broker against the system's CAs or ``ca_certs``; ``client_cert``
        and ``client_key`` (PEM files) add a client certificate (mutual TLS).
    :param key_password: the password of an encrypted ``client_key`` (a str, sent in UTF-8,
        or bytes, given to OpenSSL as they are); never shown. An encrypted key without it is refused at construction.
    :param allow_insecure: permit plain TCP (``tls=False``) to a host that is not loopback.
    :param client_id: the MQTT client id; by default a random one, new in each process (a
        broker drops the older of two connections with one id, so give each process its own).
    :param protocol: ``"5"`` or ``"3.1.1"``.
    :param timeout: seconds allowed for a whole batch, connecting included: items without a
        PUBACK by then are retried later. Keep it below the queue's ``lease_seconds``.
    :param max_inflight: the most messages in flight (MQTT 5: also capped by the broker's
        Receive Maximum; 3.1.1 default 20).
    :param max_packet_size: the broker's packet limit in bytes where CONNACK does not say it.
    """

    def __init__(
        self,
        host: str,
        port: int = 8883,
        *,
        topic: str,
        client_id: Optional[str] = None,
        username: Optional[str] = None,
        password: Password = None,
        tls: bool = True,
        ca_certs: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
        key_password: "str | bytes | None" = None,
        protocol: str = "5",
        qos: int = 1,
        keepalive: int = 60,
        timeout: float = 30.0,
        allow_insecure: bool = False,
        max_inflight: Optional[int] = None,
        max_packet_size: Optional[int] = None,
    ) -> None:
        if not isinstance(host, str) or not host or any(c in host for c in "/ \t\n"):
            raise ValueError(f"host must be a broker host name or address, got {host!r:.100}")
        for name, flag in (("tls", tls), ("allow_insecure", allow_insecure)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if not tls and not allow_insecure and not _validate.is_loopback(host):
            raise ValueError(
                f"plain TCP to {host!r}, which is not loopback, would send the password and data in clear; "
                "keep tls=True or pass allow_insecure=True"
            )
        self._protocol = _validate.choice("protocol", protocol, ("5", "3.1.1"))
        if type(qos) is not int or qos not in (0, 1):
            raise ValueError(f"qos must be 1, or 0 for fire and forget, got {qos!r:.100}")
        self._qos = qos
        for name, path in (("client_cert", client_cert), ("client_key", client_key)):
            if path is not None and not (isinstance(path, str) and os.path.isfile(path)):
                raise ValueError(f"{name} must be the path of a PEM file, got {path!r:.200}")
        if (client_cert or client_key or ca_certs or key_password is not None) and not tls:
            raise ValueError("ca_certs, client_cert, client_key and key_password need tls=True")
        if (client_key or key_password is not None) and not client_cert:
            raise ValueError("client_key and key_password need client_cert (the certificate of that key)")
        self._ca_certs = _tls.check_ca_certs(ca_certs)
        self._certificate: Optional[_tls.ClientCertificate] = None
        if client_cert:
            # Loaded once now, so that a wrong password, a key that does not match or an
            # encrypted key without its password is an error here, not a link down later.
            self._certificate = _tls.ClientCertificate(client_cert, client_key, key_password)
            self._certificate.load_into(ssl.create_default_context(cafile=self._ca_certs))
        for name, text in (("client_id", client_id), ("username", username)):
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{name} must be a str, got {type(text).__name__}")
            if text is not None and len(text.encode("utf-8", "surrogatepass")) > MQTT_MAX:
                raise ValueError(
                    f"{name} must be at most {MQTT_MAX} bytes in UTF-8 (an MQTT string), got {len(text)} characters"
                )
        if password is not None and not (callable(password) or (isinstance(password, str) and password)):
            raise TypeError("password must be a non-empty str or a callable returning one")
        if password is not None and username is None:
            raise ValueError("password needs a username")
        self._host = host
        self._port = _validate.integer("port", port, 1, 65535)
        self._topic = TopicTemplate(topic)
        # A generated id is per process: a forked child that connected with its parent's id
        # would take the parent's connection over (the broker drops the older one).
        self._client_id = client_id if client_id is not None else _new_client_id()
        self._client_id_pid: Optional[int] = None if client_id is not None else os.getpid()
        self._username = username
        self._password: Union[None, Secret, Callable[[], str]] = (
            Secret(password) if isinstance(password, str) else password
        )
        self._tls = tls
        self._keepalive = _validate.integer("keepalive", keepalive, 1)
        self._timeout = _validate.number("timeout", timeout, 0.0, allow_equal=False)
        self._max_inflight = (
            None if max_inflight is None else _validate.integer("max_inflight", max_inflight, 1, MQTT_MAX)
        )
        self._max_packet_size = (
            None if max_packet_size is None else _validate.integer("max_packet_size", max_packet_size, 1)
        )
        self._paho = _paho()
        self._session: Optional[Session] = None
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    @property
    def topic(self) -> str:
        """The topic template."""
        return self._topic.template

    @property
    def timeout(self) -> float:
        """Seconds allowed for a whole batch, connecting included (the flush checks it
        against its lease)."""
        return self._timeout

    @property
    def credentials_subject(self) -> str:
        """Who refused what, for the flush's log line when the broker refuses the credentials."""
        what = "the client certificate" if self._certificate is not None else "the credentials"
        if self._username is not None:
            what = f"the user name {self._username!r} and its password" + (
                " or the client certificate" if self._certificate is not None else ""
            )
        return f"the MQTT broker {self._host}:{self._port} refused {what}"

    def __repr__(self) -> str:
        return (
            f"MQTTUploader(host={self._host!r}, port={self._port!r}, topic={self.topic!r}, "
            f"client_id={self._client_id!r}, username={self._username!r}, tls={self._tls!r}, "
            f"protocol={self._protocol!r}, qos={self._qos!r})"
        )

    # -- the uploader protocol ------------------------------------------------------------

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> Union[bool, UploadResult]:
        """Publish payload dicts (for direct use; the flush calls ``post_items``). They go as
        Telemetry, without expiry, each under a fresh idempotency key."""
        items = [
            OutgoingItem(0, _codec.encode_payload(payload).encode(), Priority.TELEMETRY, math.inf, uuid.uuid4().hex)
            for payload in payloads
        ]
        return self.post_items(items)

    def post_items(self, items: Sequence[OutgoingItem]) -> Union[bool, UploadResult]:
        """Publish each item and wait for its PUBACK; return True when all were accepted,
        else an ``UploadResult`` saying what became of the others.

        Raises ``UploadError`` when the broker cannot be reached at all (nothing was sent).
        """
        if not items:
            return True
        deadline = time.monotonic() + self._timeout
        with self._guard():
            try:
                session = self._ready_session(deadline)
            except _Refused as exc:
                return UploadResult(credentials=list(range(len(items))), error=str(exc))
        # Outside the lock: the batches of several threads share the session's window.
        return self._publish_all(session, items, deadline)

    def close(self) -> None:
        """Disconnect from the broker; the next batch connects again."""
        with self._guard():
            session, self._session = self._session, None
            if session is not None and session.pid == os.getpid():
                session.close()

    def _guard(self) -> threading.Lock:
        """The lock of this process: one inherited through fork() may be held by a thread
        that does not exist in the child."""
        if self._lock_pid != os.getpid():
            self._lock, self._lock_pid = threading.Lock(), os.getpid()
        return self._lock

    def __enter__(self) -> "MQTTUploader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- publishing -----------------------------------------------------------------------

    def _publish_all(
        self, session: Session, items: Sequence[OutgoingItem], deadline: float
    ) -> Union[bool, UploadResult]:
        verdicts: Dict[str, List[int]] = {"rejected": [], "too_large": [], "retry": [], "credentials": []}
        # An UploadResult has one error text for all its items: it names each distinct reason.
        errors: Dict[str, None] = {}

        def refuse(kind: str, indices: List[int], why: str) -> None:
            verdicts[kind] += indices
            if indices:
                errors[why] = None

        limit = self._packet_limit(session)
        messages: List[Message] = []
        for index, item in enumerate(items):
            topic, why = self._topic.render(item)
            if why:
                refuse("rejected", [index], f"item {item.id} has no MQTT topic: {why}")
                continue
            properties = PackedProperties(item.key, item.ttl_left) if self._protocol == "5" else None
            size = publish_packet_size(
                len(topic.encode()), len(item.text), self._qos, None if properties is None else len(properties)
            )
            if limit is not None and size > limit:
                refuse("too_large", [index], f"a message of {size} bytes is over the broker's packet limit of {limit}")
                continue
            messages.append((index, topic, item.text, properties))

        done, refused, session = self._send(session, messages, deadline)
        if refused:
            refuse("credentials", done.unsent, refused)
            done.unsent = []
        for index, reason in done.reasons.items():
            if reason < 0x80:
                continue
            name = self._paho.ReasonCode(self._paho.PacketTypes.PUBACK, identifier=reason).getName()
            why = f"PUBACK 0x{reason:02X} {name} for topic {self.topic!r}"
            if reason in NOT_AUTHORIZED:
                refuse("credentials", [index], f"the MQTT broker refused the publish: {why}")
            elif reason in REJECTED:
                refuse("rejected", [index], f"the MQTT broker rejected the message: {why}")
            else:
                refuse("retry", [index], f"the MQTT broker did not take the message: {why}")
        if done.lost:
            self._drop(session)
            lost = f"MQTT broker {self._host}:{self._port}: {done.lost}"
            refuse("retry", done.in_flight + done.unsent, lost)
        refuse("retry", done.unsent if not done.lost else [], "not sent: the broker refused an earlier message")
        if not any(verdicts.values()):
            return True
        return UploadResult(
            rejected=sorted(verdicts["rejected"]),
            retry=sorted(verdicts["retry"]),
            error="; ".join(errors),
            too_large=sorted(verdicts["too_large"]),
            credentials=sorted(verdicts["credentials"]),
        )

    def _send(self, session: Session, messages: List[Message], deadline: float) -> Tuple[Delivery, str, Session]:
        """Deliver the messages; when the link breaks with messages unanswered and no
        refusal seen, connect once more and send the first of them alone before the rest.

        A broker may refuse a message and then close the connection (Mosquitto does, for an
        ACL denial), and with more messages on the way the refusal is often lost in the
        close; sent alone, the message gets its answer. Returns the delivery, why the
        broker refused a new connection for good ("" if it did not), and the session used last.
        """
        timeout = self._timeout
        done = deliver(session, deque(messages), self._window(session), self._qos, deadline, timeout)
        if not done.lost or done.halted or not done.in_flight or time.monotonic() >= deadline:
            return done, "", session
        self._drop(session)
        again = set(done.in_flight + done.unsent)
        rest = deque(message for message in messages if message[0] in again)
        answered = Delivery(reasons=done.reasons)
        try:
            with self._guard():
                session = self._ready_session(deadline)
        except _Refused as exc:
            return merged(answered, Delivery(unsent=[m[0] for m in rest])), str(exc), session
        except UploadError as exc:
            return merged(answered, Delivery(unsent=[m[0] for m in rest], lost=str(exc))), "", session
        first = deliver(session, deque([rest.popleft()]), 1, self._qos, deadline, timeout)
        if first.lost or first.halted:
            return merged(answered, first, Delivery(unsent=[m[0] for m in rest])), "", session
        last = deliver(session, rest, self._window(session), self._qos, deadline, timeout)
        return merged(answered, first, last), "", session

    def _packet_limit(self, session: Session) -> Optional[int]:
        limits = [n for n in (session.maximum_packet_size, self._max_packet_size) if n]
        return min(limits) if limits else None

    def _window(self, session: Session) -> int:
        if self._protocol == "5" and session.receive_maximum:
            return min(session.receive_maximum, self._max_inflight or session.receive_maximum)
        return self._max_inflight or DEFAULT_WINDOW

    # -- the connection -------------------------------------------------------------------

    def _ready_session(self, deadline: float) -> Session:
        """The working connection, made anew when missing, lost, idle past the keep-alive
        (a broker or NAT may have dropped it silently) or inherited through fork()."""
        session = self._session
        if session is not None and session.pid != os.getpid():
            session = self._session = None  # the parent's socket: never write to it
        if session is not None and not session.usable(self._keepalive):
            self._drop_session()
            session = None
        if session is None:
            session = self._session = self._connect(deadline)
        return session

    def _drop_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def _drop(self, session: Session) -> None:
        """Close ``session`` whose link failed, and forget it unless another thread has
        made a new one since."""
        with self._guard():
            if self._session is session:
                self._session = None
        session.close()

    def _connect(self, deadline: float) -> Session:
        """A new connection, CONNACK read, before ``deadline`` (``time.monotonic()``)."""
        paho = self._paho
        if self._client_id_pid is not None and self._client_id_pid != os.getpid():
            self._client_id, self._client_id_pid = _new_client_id(), os.getpid()
        v5 = self._protocol == "5"
        client = guarded_client_class(paho.Client)(
            paho.CallbackAPIVersion.VERSION2,
            client_id=self._client_id,
            clean_session=None if v5 else True,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            reconnect_on_failure=False,
        )
        session = Session(client)
        client.connect_timeout = max(0.001, deadline - time.monotonic())
        # The window is ours (it is known only after CONNACK), so paho must never hold a
        # message back; and a client whose link is lost is dropped, never reconnected, so
        # paho never resends from its memory: the queue file is the store.
        client.max_inflight_messages_set(65535)
        password = self._password
        secret = password.reveal() if isinstance(password, Secret) else None
        where = f"MQTT broker {self._host}:{self._port}"
        try:
            if password is not None and not isinstance(password, Secret):
                secret = password()
                if not isinstance(secret, str) or not secret:
                    raise TypeError(f"the password callable returned a {type(secret).__name__}, not a non-empty str")
            if self._username is not None:
                client.username_pw_set(self._username, secret)
            if self._tls:
                client.tls_set_context(self._tls_context())
            extra: Dict[str, Any] = {}
            if v5:
                # A broker may not send this client a larger packet (MQTT 5, 3.1.2.11.4).
                properties = paho.Properties(paho.PacketTypes.CONNECT)
                properties.MaximumPacketSize = INCOMING_PACKET_LIMIT
                extra = {"clean_start": True, "properties": properties}
            client.connect(self._host, self._port, self._keepalive, **extra)
            while session.connack is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no CONNACK within the timeout of {self._timeout:g} s")
                if not session.pump(min(1.0, left)) and session.connack is None:
                    if session.guard.refused:
                        raise ConnectionError(session.guard.refused)
                    hint = " (as a TLS listener does without a client certificate it requires)" if self._tls else ""
                    raise ConnectionError("the broker closed the connection before CONNACK" + hint)
        except (OSError, ValueError, TypeError) as exc:
            session.close()
            text = f"{type(exc).__name__}: {exc}"
            raise UploadError(f"cannot connect to {where}: {_scrub(text, secret)}") from None
        if session.connack != 0:
            session.close()
            name = paho.ReasonCode(paho.PacketTypes.CONNACK, identifier=session.connack).getName()
            message = f"{where} refused the connection: CONNACK 0x{session.connack:02X} {name}"
            if session.connack in _CONNECT_REFUSED_FOR_GOOD:
                raise _Refused(message + f" (username {self._username!r}, client id {self._client_id!r})")
            raise UploadError(message)
        return session

    def _tls_context(self) -> ssl.SSLContext:
        """Made at each connect, so that rotated certificate files are read again."""
        context = ssl.create_default_context(cafile=self._ca_certs)
        if self._certificate is not None:
            self._certificate.load_into(context)
        return context


def _scrub(text: str, secret: Optional[str]) -> str:
    return text.replace(secret, "***") if secret else text
