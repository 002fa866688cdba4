"""Which proxy, if any, a request goes through: ``proxy_url``, or the environment as curl
and pip read it.

With ``trust_env`` (the default) ``https_proxy``/``HTTPS_PROXY`` serve ``https://`` URLs
and ``http_proxy``/``HTTP_PROXY`` plain ones (lower case first; upper-case
``HTTP_PROXY`` is ignored in a CGI process, where a client can set it through a
``Proxy:`` header); ``no_proxy``/``NO_PROXY`` lists hosts reached directly, also when
``proxy_url`` is given. As with curl and pip, loopback is no exception: ``localhost`` and
``127.0.0.1`` go through the proxy unless ``NO_PROXY`` names them.
"""

import base64
import ipaddress
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

from ..._redact import Secret

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Proxy:
    """An ``http://`` proxy; its ``user:password`` is kept as a secret, never shown."""

    host: str
    port: int
    credentials: Optional[Secret] = None

    @property
    def url(self) -> str:
        """The proxy's URL without credentials, as urllib3 takes it and as it may be shown."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url + (" (with credentials)" if self.credentials is not None else "")

    def auth_header(self) -> Optional[str]:
        """The ``Proxy-Authorization`` value, or None without credentials."""
        if self.credentials is None:
            return None
        return "Basic " + base64.b64encode(self.credentials.reveal().encode("utf-8")).decode("ascii")

    def secrets(self) -> List[str]:
        """The strings to scrub from any text shown: the password and the header built from it."""
        if self.credentials is None:
            return []
        password = self.credentials.reveal().partition(":")[2]
        return [s for s in (password, str(self.auth_header())[len("Basic ") :]) if s]


def parse_proxy(value: object, name: str) -> Proxy:
    """Read a proxy URL (``http://[user:password@]host[:port]``; a bare ``host:port`` is
    taken as http, as curl and pip do). Errors name ``name`` and never quote credentials."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str URL such as 'http://proxy:3128', got {type(value).__name__}")
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    rest = text.partition("://")[2]
    address = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in rest and "@" not in address:
        # An unencoded / ? or # in the password ends the address early: any part shown
        # could be part of the password.
        raise ValueError(
            f"{name} has a user:password part with a character that ends a URL's address (/, ? or #); "
            "percent-encode it (%2F, %3F, %23) (the URL is not shown)"
        )
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{name} must be a URL such as 'http://proxy:3128', got a malformed URL") from None
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    if parts.scheme != "http":
        raise ValueError(f"{name} must be an http:// proxy (it tunnels https with CONNECT), got {shown!r}")
    if not parts.hostname:
        raise ValueError(f"{name} must name the proxy's host, got {shown!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{name} must be the proxy's address alone (http://host:port), got {shown!r}/...")
    if port == 0:
        raise ValueError(f"{name} has a port out of range; ports are 1..65535")
    credentials = None
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        login = unquote(user) + colon + unquote(password)
        if not user or any(not " " <= char <= "~" for char in login):
            raise ValueError(f"{name} has a user:password part that is empty or not printable ASCII (not shown)")
        credentials = Secret(login, unquote(password)) if password else Secret(login)
    return Proxy(parts.hostname.lower(), port or 80, credentials)


def _split_port(entry: str) -> Tuple[str, Optional[int], bool]:
    """``host[:port]`` or ``[v6]:port`` into the host and its port (None: any port), and
    whether the entry is well formed. A bare IPv6 address keeps its colons."""
    host, port = entry, ""
    if entry.startswith("["):
        close = entry.find("]")
        host, rest = entry[1:close], entry[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            return entry, None, False
        port = rest[1:]
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    if not port:
        return host, None, True
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return host, None, False
    return host, int(port), True


@dataclass(frozen=True)
class NoProxy:
    """A parsed ``NO_PROXY`` list: host names (matching themselves and their subdomains),
    IP addresses and CIDR ranges, each for any port or for the one it names
    (``internal.example:8443``), or ``*`` for every host."""

    everything: bool = False
    domains: Tuple[Tuple[str, Optional[int]], ...] = ()
    networks: Tuple[Tuple[IPNetwork, Optional[int]], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "NoProxy":
        """Read a comma (or blank) separated list; an entry that is neither a name nor an
        address (with an optional port) is ignored, as curl ignores it."""
        entries = [entry for entry in text.replace(",", " ").split() if entry]
        if entries == ["*"]:
            return cls(everything=True)
        domains: List[Tuple[str, Optional[int]]] = []
        networks: List[Tuple[IPNetwork, Optional[int]]] = []
        for entry in entries:
            bare, port, valid = _split_port(entry)
            if not valid:
                continue
            try:
                networks.append((ipaddress.ip_network(bare, strict=False), port))
                continue
            except ValueError:
                pass
            name = bare.lower().rstrip(".")
            name = name[2:] if name.startswith("*.") else name.lstrip(".")
            if name:
                domains.append((name, port))
        return cls(domains=tuple(domains), networks=tuple(networks))

    def bypasses(self, host: str, port: Optional[int] = None) -> bool:
        """Whether ``host`` (a name or an address) on ``port`` is reached directly; an entry
        with a port matches only that port (and never a request whose port is not given)."""
        if self.everything:
            return True
        host = host.strip("[]").lower().rstrip(".")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return any(
                (host == domain or host.endswith("." + domain)) and (wanted is None or wanted == port)
                for domain, wanted in self.domains
            )
        return any(
            address.version == network.version and address in network and (wanted is None or wanted == port)
            for network, wanted in self.networks
        )


def _environ_value(environ: Mapping[str, str], name: str) -> Tuple[str, str]:
    """The value of ``name`` in lower case, else upper case, with the variable it came from."""
    for key in (name, name.upper()):
        if key == "HTTP_PROXY" and "REQUEST_METHOD" in environ:
            continue  # CGI: a client's ``Proxy:`` header arrives as HTTP_PROXY
        value = environ.get(key, "").strip()
        if value:
            return value, key
    return "", ""


@dataclass(frozen=True)
class ProxyRoutes:
    """The proxy for each scheme and the hosts that bypass it, read once at construction."""

    by_scheme: Mapping[str, Proxy]
    no_proxy: NoProxy

    @classmethod
    def configure(
        cls, proxy_url: Optional[str], trust_env: bool, environ: Optional[Mapping[str, str]] = None
    ) -> "ProxyRoutes":
        """From ``proxy_url`` (for every scheme) and, with ``trust_env``, the environment."""
        if not isinstance(trust_env, bool):
            raise TypeError(f"trust_env must be a bool, got {type(trust_env).__name__}")
        env = os.environ if environ is None else environ
        by_scheme: Dict[str, Proxy] = {}
        if proxy_url is not None:
            by_scheme["https"] = by_scheme["http"] = parse_proxy(proxy_url, "proxy_url")
        for scheme in ("https", "http"):
            if proxy_url is None and trust_env:
                value, variable = _environ_value(env, f"{scheme}_proxy")
                if value:
                    by_scheme[scheme] = parse_proxy(value, f"the environment variable {variable}")
        no_proxy = NoProxy.parse(_environ_value(env, "no_proxy")[0]) if trust_env else NoProxy()
        return cls(by_scheme, no_proxy)

    def proxy_for(self, scheme: str, host: str, port: Optional[int] = None) -> Optional[Proxy]:
        """The proxy a request to ``scheme://host[:port]`` goes through, or None to go direct
        (``port`` defaults to the scheme's)."""
        proxy = self.by_scheme.get(scheme)
        if port is None:
            port = DEFAULT_PORTS.get(scheme)
        if proxy is None or self.no_proxy.bypasses(host, port):
            return None
        return proxy

    def secrets(self) -> List[str]:
        """Every proxy credential, for scrubbing."""
        return [secret for proxy in set(self.by_scheme.values()) for secret in proxy.secrets()]
