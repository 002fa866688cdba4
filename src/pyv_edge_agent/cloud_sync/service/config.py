"""The service's TOML file, read and checked whole before anything starts.

Every table and key is known: an unknown one is a ``ConfigError`` naming it, and so is a
value of the wrong type or out of range (the queue's own checks run on a scratch file, so
that ``check-config`` finds what ``serve`` would). Secrets come only from files: a key
ending in ``_file`` names the file, read here; a relative path is looked up in systemd's
``$CREDENTIALS_DIRECTORY`` when it is set (``LoadCredential=``), else beside the TOML file.
"""

import dataclasses
import grp
import os
import ssl
import sys
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple

from .._errors import MissingExtraError
from .._queue import CONFIG_KEYS, DESTINATION_KEYS, CloudSyncQueue
from .._types import Priority, shown
from .._validate import is_loopback

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9 and 3.10
    try:
        import tomli as tomllib
    except ImportError:
        raise MissingExtraError(
            "cloud-sync serve needs the serve extra on Python < 3.11: pip install 'pyv-edge-agent[serve]'"
        ) from None

DESTINATION_TYPES = ("https", "mqtt")
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

# What each key of a destination may hold, by type: the uploader's keyword arguments
# (``*_file`` keys are read and handed over without the suffix).
_HTTPS_KEYS: Dict[str, Tuple[type, ...]] = {
    "endpoint": (str,),
    "endpoint_file": (str,),
    "api_key_file": (str,),
    "timeout": (int, float),
    "auth_header": (str,),
    "gzip_min_bytes": (int,),
    "ca_certs": (str,),
    "allow_insecure_http": (bool,),
    "client_cert": (str,),
    "client_key": (str,),
    "key_password_file": (str,),
    "proxy_url_file": (str,),
    "trust_env": (bool,),
    "token_file": (str,),
    "oauth2": (dict,),
}
_OAUTH2_KEYS: Dict[str, Tuple[type, ...]] = {
    "token_url": (str,),
    "client_id": (str,),
    "client_secret_file": (str,),
    "scope": (str,),
    "audience": (str,),
    "client_auth": (str,),
}
_MQTT_KEYS: Dict[str, Tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "topic": (str,),
    "client_id": (str,),
    "username": (str,),
    "password_file": (str,),
    "tls": (bool,),
    "ca_certs": (str,),
    "client_cert": (str,),
    "client_key": (str,),
    "key_password_file": (str,),
    "protocol": (str,),
    "qos": (int,),
    "keepalive": (int,),
    "timeout": (int, float),
    "allow_insecure": (bool,),
    "max_inflight": (int,),
    "max_packet_size": (int,),
}
# Secrets read from their file; the uploader takes them under the name without ``_file``.
_SECRET_FILES = ("api_key_file", "key_password_file", "password_file", "proxy_url_file", "endpoint_file")
_INGEST_KEYS: Dict[str, Tuple[type, ...]] = {
    "unix_socket": (str,),
    "socket_mode": (int,),
    "socket_group": (str,),
    "http": (str,),
    "token_file": (str,),
    "tls_cert": (str,),
    "tls_key": (str,),
    "max_body_bytes": (int,),
    "max_connections": (int,),
    "idle_timeout": (int, float),
    "retry_after_seconds": (int,),
    "mqtt": (dict,),
}
_MQTT_INPUT_KEYS: Dict[str, Tuple[type, ...]] = {
    "host": (str,),
    "port": (int,),
    "topic": (str, list),
    "client_id": (str,),
    "username": (str,),
    "password_file": (str,),
    "session_expiry": (int,),
    "keepalive": (int,),
    "tls": (bool,),
    "ca_certs": (str,),
    "client_cert": (str,),
    "client_key": (str,),
    "allow_insecure": (bool,),
    "rejects_path": (str,),
    "routes": (list,),
}
_ROUTE_KEYS: Dict[str, Tuple[type, ...]] = {
    "filter": (str,),
    "priority": (str, int),
    "ttl_seconds": (int,),
    "destinations": (list,),
}
_SERVICE_KEYS: Dict[str, Tuple[type, ...]] = {
    "stop_timeout": (int, float),
    "watchdog": (bool,),
    "interval": (int, float),
}
# The queue's keys that the file may set: the file's own destinations table stands for
# ``destinations``, and a key for sealing comes from a file.
_QUEUE_KEYS = tuple(key for key in CONFIG_KEYS if key not in ("destinations", "encryption_key")) + (
    "encryption_key_file",
)


class ConfigError(ValueError):
    """The configuration file cannot be used; the message names the key and the value."""


@dataclasses.dataclass(frozen=True)
class DestinationConfig:
    """One ``[destinations.NAME]`` table: the uploader it builds and its flush options."""

    name: str
    type: str
    # The uploader's keyword arguments, secrets read from their files (never shown).
    uploader: Mapping[str, Any] = dataclasses.field(repr=False)
    # Flush options and backlog budget: this destination's entry of the queue's ``destinations``.
    options: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MQTTRoute:
    """Where the messages of the topics matching ``filter`` go."""

    filter: str
    priority: Priority
    ttl_seconds: int
    destinations: Optional[Tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class MQTTInputConfig:
    """The ``[ingest.mqtt]`` table: the local broker the service subscribes to."""

    host: str
    port: int
    topics: Tuple[str, ...]
    client_id: str
    username: Optional[str]
    password: Optional[str] = dataclasses.field(repr=False)
    session_expiry: int
    keepalive: int
    tls: bool
    ca_certs: Optional[str]
    client_cert: Optional[str]
    client_key: Optional[str]
    rejects_path: Optional[str]
    routes: Tuple[MQTTRoute, ...]


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """The ``[ingest]`` table: where local programs reach the service, and its bounds."""

    unix_socket: Optional[str]
    socket_mode: int
    socket_group: Optional[int]
    http: Optional[Tuple[str, int]]
    token: Optional[bytes] = dataclasses.field(repr=False)
    max_body_bytes: int
    max_connections: int
    idle_timeout: float
    retry_after_seconds: int
    mqtt: Optional[MQTTInputConfig] = None
    # The TCP listener's certificate and key files (None: plain HTTP, loopback only).
    tls: Optional[Tuple[str, Optional[str]]] = None

    def server_tls(self) -> Optional[ssl.SSLContext]:
        """The TCP listener's TLS context (None: plain HTTP)."""
        if self.tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self.tls)
        return context


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """A checked configuration file."""

    path: str
    queue: Mapping[str, Any] = dataclasses.field(repr=False)
    destinations: Mapping[str, DestinationConfig]
    ingest: IngestConfig
    stop_timeout: float
    watchdog: bool
    # The longest a worker sleeps before looking for new items (a critical one wakes it).
    interval: float

    def queue_options(self) -> Dict[str, Any]:
        """The ``CloudSyncQueue`` keyword arguments: ``[queue]`` and each destination's options."""
        return {**self.queue, "destinations": {name: dict(d.options) for name, d in self.destinations.items()}}


def load(path: str) -> ServiceConfig:
    """Read and check the file at ``path``; raises ``ConfigError`` naming the key and value."""
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return _Reader(path).service(document)


class _Reader:
    """Turns the parsed document into a ``ServiceConfig``; every error names its place."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {where}: {message}")

    def table(self, where: str, value: Any, allowed: Mapping[str, Tuple[type, ...]]) -> Dict[str, Any]:
        """``value`` as a table of known keys, each of its type."""
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {type(value).__name__}")
        for key, item in value.items():
            if key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown key; {where} takes {sorted(allowed)}")
            types = allowed[key]
            if isinstance(item, bool) and bool not in types or not isinstance(item, types):
                expected = " or ".join(t.__name__ for t in types)
                raise self.fail(f"{where}.{key}", f"must be {expected}, got {shown(item, 100)}")
        return dict(value)

    def secret(self, where: str, value: str) -> str:
        """The text of the secret file ``value`` (one line; its trailing newline dropped)."""
        path = self.path_of(value)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise self.fail(where, f"cannot read the file {path!r} ({reason})") from None
        text = text[:-1] if text.endswith("\n") else text
        if not text or "\n" in text:
            raise self.fail(where, f"the file {path!r} must hold one non-empty line")
        return text

    def service(self, document: Dict[str, Any]) -> ServiceConfig:
        known = {"queue", "destinations", "ingest", "service"}
        for key in document:
            if key not in known:
                raise self.fail(key, f"unknown table; the file takes {sorted(known)}")
        queue = self.queue(document.get("queue"))
        destinations = self.destinations(document.get("destinations"))
        ingest = self.ingest(document.get("ingest"))
        service = self.table("service", document.get("service", {}), _SERVICE_KEYS)
        stop_timeout = float(service.get("stop_timeout", 30.0))
        if not 0 < stop_timeout <= 3600:
            raise self.fail("service.stop_timeout", f"must be above 0 and at most 3600 seconds, got {stop_timeout!r}")
        interval = float(service.get("interval", 1.0))
        if not 0 < interval <= 3600:
            raise self.fail("service.interval", f"must be above 0 and at most 3600 seconds, got {interval!r}")
        config = ServiceConfig(
            self.path, queue, destinations, ingest, stop_timeout, bool(service.get("watchdog", True)), interval
        )
        self.check_queue(config)
        for index, route in enumerate(() if ingest.mqtt is None else ingest.mqtt.routes):
            unknown = [name for name in route.destinations or () if name not in destinations]
            if unknown:
                where = f"ingest.mqtt.routes[{index}].destinations"
                raise self.fail(where, f"unknown destination {unknown[0]!r}; the file's are {sorted(destinations)}")
        return config

    def queue(self, value: Any) -> Dict[str, Any]:
        if value is None:
            raise self.fail("queue", "missing; it needs at least db_path")
        types = {key: (object,) for key in _QUEUE_KEYS}
        options = self.table("queue", value, types)
        if "db_path" not in options:
            raise self.fail("queue.db_path", "missing: the path of the queue's SQLite file")
        key_file = options.pop("encryption_key_file", None)
        if key_file is not None:
            options["encryption_key"] = self.secret("queue.encryption_key_file", self.text("queue", key_file))
        return options

    def text(self, where: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {shown(value, 100)}")
        return value

    def destinations(self, value: Any) -> Dict[str, DestinationConfig]:
        if not isinstance(value, dict) or not value:
            raise self.fail("destinations", "needs at least one [destinations.NAME] table")
        return {name: self.destination(name, table) for name, table in value.items()}

    def destination(self, name: str, value: Any) -> DestinationConfig:
        where = f"destinations.{name}"
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a table, got {type(value).__name__}")
        kind = value.get("type")
        if kind not in DESTINATION_TYPES:
            raise self.fail(f"{where}.type", f"must be one of {list(DESTINATION_TYPES)}, got {shown(kind, 100)}")
        keys = _HTTPS_KEYS if kind == "https" else _MQTT_KEYS
        allowed: Dict[str, Tuple[type, ...]] = {"type": (str,), **keys, **{k: (object,) for k in DESTINATION_KEYS}}
        table = self.table(where, value, allowed)
        options = {key: table.pop(key) for key in list(table) if key in DESTINATION_KEYS}
        del table["type"]
        uploader: Dict[str, Any] = {}
        for key, item in table.items():
            if key in _SECRET_FILES:
                uploader[key[: -len("_file")]] = self.secret(f"{where}.{key}", item)
            elif key == "token_file":
                uploader["token_file"] = self.path_of(item)
            elif key == "oauth2":
                uploader["oauth2"] = self.oauth2(f"{where}.oauth2", item)
            else:
                uploader[key] = item
        required = "endpoint" if kind == "https" else "host"
        if required not in uploader:
            raise self.fail(f"{where}.{required}", "missing" + (" (or endpoint_file)" if kind == "https" else ""))
        if kind == "mqtt" and "topic" not in uploader:
            raise self.fail(f"{where}.topic", "missing")
        return DestinationConfig(name, kind, uploader, options)

    def oauth2(self, where: str, value: Any) -> Dict[str, Any]:
        table = self.table(where, value, _OAUTH2_KEYS)
        secret_file = table.pop("client_secret_file", None)
        if secret_file is None:
            raise self.fail(f"{where}.client_secret_file", "missing")
        table["client_secret"] = self.secret(f"{where}.client_secret_file", secret_file)
        return table

    def path_of(self, value: str) -> str:
        """A file's path: relative ones in ``$CREDENTIALS_DIRECTORY``, else beside the TOML file."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        return value if os.path.isabs(value) else os.path.join(credentials or self.base, value)

    def ingest(self, value: Any) -> IngestConfig:
        table = self.table("ingest", value if value is not None else {}, _INGEST_KEYS)
        mqtt = None if "mqtt" not in table else self.mqtt_input(table["mqtt"])
        socket = table.get("unix_socket")
        http = table.get("http")
        if socket is None and http is None and mqtt is None:
            raise self.fail("ingest", "needs unix_socket, http, [ingest.mqtt] or several")
        mode = table.get("socket_mode", 0o660)
        if not 0 <= mode <= 0o777:
            raise self.fail("ingest.socket_mode", f"must be a file mode such as 0o660, got {mode!r}")
        group = None
        if "socket_group" in table:
            try:
                group = grp.getgrnam(table["socket_group"]).gr_gid
            except KeyError:
                raise self.fail("ingest.socket_group", f"no such group: {table['socket_group']!r}") from None
        tls = None
        if "tls_cert" in table:
            tls = (self.path_of(table["tls_cert"]), None if "tls_key" not in table else self.path_of(table["tls_key"]))
        elif "tls_key" in table:
            raise self.fail("ingest.tls_key", "needs tls_cert (the certificate of that key)")
        address = None if http is None else self.address(http, tls is not None)
        token = None
        if "token_file" in table:
            token = self.secret("ingest.token_file", table["token_file"]).encode("utf-8")
        elif address is not None:
            raise self.fail("ingest.token_file", "required with ingest.http: TCP clients must send a bearer token")
        limits = {"max_body_bytes": DEFAULT_MAX_BODY_BYTES, "max_connections": 100, "retry_after_seconds": 10}
        for key, default in limits.items():
            limits[key] = table.get(key, default)
            if limits[key] < 1:
                raise self.fail(f"ingest.{key}", f"must be at least 1, got {limits[key]!r}")
        idle = float(table.get("idle_timeout", 30.0))
        if not 0 < idle <= 3600:
            raise self.fail("ingest.idle_timeout", f"must be above 0 and at most 3600 seconds, got {idle!r}")
        config = IngestConfig(
            socket,
            mode,
            group,
            address,
            token,
            limits["max_body_bytes"],
            limits["max_connections"],
            idle,
            limits["retry_after_seconds"],
            mqtt,
            tls,
        )
        try:
            config.server_tls()
        except (OSError, ssl.SSLError) as exc:
            raise self.fail("ingest.tls_cert", f"cannot load the certificate and key: {exc}") from None
        return config

    def mqtt_input(self, value: Any) -> MQTTInputConfig:
        where = "ingest.mqtt"
        table = self.table(where, value, _MQTT_INPUT_KEYS)
        for key in ("host", "topic"):
            if key not in table:
                raise self.fail(f"{where}.{key}", "missing")
        topics = table["topic"] if isinstance(table["topic"], list) else [table["topic"]]
        if not topics or not all(isinstance(topic, str) and topic for topic in topics):
            raise self.fail(f"{where}.topic", f"must be a topic filter or a list of them, got {shown(topics, 100)}")
        tls = table.get("tls", False)
        if not tls and not table.get("allow_insecure", False) and not is_loopback(table["host"]):
            raise self.fail(
                f"{where}.host", f"plain MQTT to {table['host']!r}, not loopback: set tls or allow_insecure"
            )
        numbers = {"port": (1883, 1, 65535), "session_expiry": (86400, 1, 2**32 - 1), "keepalive": (60, 5, 65535)}
        values = {}
        for key, (default, low, high) in numbers.items():
            values[key] = table.get(key, default)
            if not low <= values[key] <= high:
                raise self.fail(f"{where}.{key}", f"must be between {low} and {high}, got {values[key]!r}")
        password = None
        if "password_file" in table:
            password = self.secret(f"{where}.password_file", table["password_file"])
        routes = tuple(self.route(f"{where}.routes[{i}]", route) for i, route in enumerate(table.get("routes", [])))
        return MQTTInputConfig(
            table["host"],
            values["port"],
            tuple(topics),
            table.get("client_id", "cloud-sync-ingest"),
            table.get("username"),
            password,
            values["session_expiry"],
            values["keepalive"],
            tls,
            table.get("ca_certs"),
            table.get("client_cert"),
            table.get("client_key"),
            table.get("rejects_path"),
            routes,
        )

    def route(self, where: str, value: Any) -> MQTTRoute:
        table = self.table(where, value, _ROUTE_KEYS)
        if "filter" not in table:
            raise self.fail(f"{where}.filter", "missing: the topic filter the route applies to")
        text = str(table.get("priority", "TELEMETRY"))
        try:
            priority = Priority(int(text)) if text.isdigit() else Priority[text.upper()]
        except (KeyError, ValueError):
            raise self.fail(f"{where}.priority", f"must be a priority name or 1-4, got {text!r}") from None
        ttl = table.get("ttl_seconds", 86400)
        if ttl < 0:
            raise self.fail(f"{where}.ttl_seconds", f"must be at least 0, got {ttl!r}")
        names = table.get("destinations")
        if names is not None and (not names or not all(isinstance(name, str) for name in names)):
            raise self.fail(f"{where}.destinations", f"must be a list of destination names, got {shown(names, 100)}")
        return MQTTRoute(table["filter"], priority, ttl, None if names is None else tuple(names))

    def address(self, value: str, tls: bool) -> Tuple[str, int]:
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
            raise self.fail("ingest.http", f"must be HOST:PORT such as 127.0.0.1:8765, got {value!r}")
        if not tls and not is_loopback(host):
            raise self.fail("ingest.http", f"must be a loopback address unless tls_cert is set, got {value!r}")
        return host, int(port)

    def check_queue(self, config: ServiceConfig) -> None:
        """Build the queue with these options on a scratch file: its own checks name the key."""
        options = config.queue_options()
        options.pop("db_path")
        with tempfile.TemporaryDirectory(prefix="cloud-sync-check-") as scratch:
            try:
                CloudSyncQueue(os.path.join(scratch, "check.db"), **options).close()
            except (TypeError, ValueError) as exc:
                raise self.fail("queue/destinations", str(exc)) from None
