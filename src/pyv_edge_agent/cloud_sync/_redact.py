"""Keeping credentials and hostile server text out of what the package shows.

``Secret`` holds a credential and scrubs it from text in every form a server may echo it
back in (raw, JSON or Python escapes, percent-encoding, HTML entities, named or numeric,
also escaped twice); ``clean`` strips
the control characters (terminal escapes, bidirectional overrides) from text that came
from elsewhere; ``redact_url`` removes credentials from a URL before it is shown.
"""

import functools
import re
from typing import Iterable, List, Pattern, Tuple
from urllib.parse import SplitResult, unquote_plus, urlsplit, urlunsplit

# C0 and C1 controls, DEL, and the bidirectional overrides that can reorder what a
# terminal shows: text from a server is stored, logged and printed without them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
HIDDEN = "***"
# Shorter query values (``?v=2``) are not credentials, and scrubbing them would garble text.
MIN_QUERY_SECRET = 4


def clean(text: str) -> str:
    """``text`` with runs of control characters replaced by one space."""
    return _CONTROL.sub(" ", text)


# The named HTML entities of the characters html.escape() and template engines replace.
_NAMED_ENTITIES = {"&": "amp", "<": "lt", ">": "gt", '"': "quot", "'": "apos"}
# An entity, or one escaped again (``&amp;lt;``, ``&amp;amp;#60;``).
_ENTITY = "&(?:amp;)*"


def _char_forms(char: str) -> str:
    """A regex alternation matching one character raw or in any escaped form."""
    code = ord(char)
    forms = [
        re.escape(char),
        rf"\\+{re.escape(char)}",  # JSON \/ and \", a repr's \' and \\, escaped again
        rf"\\+u{code:04x}",  # JSON \u00e9
        rf"\\+U{code:08x}",
        "".join(rf"%(?:25)*{byte:02x}" for byte in char.encode("utf-8", "surrogatepass")),  # also encoded twice
        rf"{_ENTITY}#0*{code};",
        rf"{_ENTITY}#x0*{code:x};",
    ]
    if char in _NAMED_ENTITIES:
        forms.append(rf"{_ENTITY}{_NAMED_ENTITIES[char]};")
    if code < 256:
        forms.append(rf"\\+x{code:02x}")  # a Python repr's \xe9
    return "(?:" + "|".join(forms) + ")"


def scrubber(secrets: Iterable[str]) -> Pattern[str]:
    """A pattern matching each of ``secrets`` (visible ASCII) raw or in any escaped form."""
    alternatives = ["".join(_char_forms(char) for char in secret) for secret in secrets if secret]
    # Longest first: a secret that contains another is removed whole.
    alternatives.sort(key=len, reverse=True)
    return re.compile("|".join(alternatives) or "(?!)", re.IGNORECASE)


@functools.lru_cache(maxsize=8)
def _cached_scrubber(secrets: Tuple[str, ...]) -> Pattern[str]:
    return scrubber(secrets)


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every form of each of ``secrets`` replaced and control characters
    stripped: for credentials that change (tokens), where a ``Secret`` would be rebuilt
    at each error. Strings shorter than ``MIN_QUERY_SECRET`` are left alone."""
    wanted = tuple(sorted({secret for secret in secrets if len(secret) >= MIN_QUERY_SECRET}))
    return clean(_cached_scrubber(wanted).sub(HIDDEN, text))


class Secret:
    """Holds a credential so that no repr, log line or traceback shows it."""

    __slots__ = ("_value", "_pattern")

    def __init__(self, value: str, *others: str) -> None:
        """``others`` are further credentials to scrub along with it (query-string tokens)."""
        self._value = value
        self._pattern = scrubber([value, *others])

    def reveal(self) -> str:
        """The credential itself, for the one place that sends it."""
        return self._value

    def scrub(self, text: str) -> str:
        """``text`` from elsewhere with every form of the credential replaced and control
        characters stripped."""
        return clean(self._pattern.sub(HIDDEN, text))

    def __repr__(self) -> str:
        return repr(HIDDEN)

    __str__ = __repr__


def _host_port(netloc: str) -> str:
    """The ``host[:port]`` part of a netloc, without any ``user:password@``."""
    return netloc.rpartition("@")[2]


def redact_url(url: str) -> str:
    """``url`` without its ``user:password@`` and with every query value hidden, so that
    it can be shown: a query string often carries a token (``?code=``, ``?sig=``)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<a malformed URL>"
    return urlunsplit((parts.scheme, _host_port(parts.netloc), parts.path, _hide_values(parts.query), ""))


def _hide_values(query: str) -> str:
    return "&".join(
        field.partition("=")[0] + ("=" + HIDDEN if "=" in field else "") for field in query.split("&") if field
    )


def redact_target(target: str) -> str:
    """A request target (``/path?query``) with every query value hidden, as ``redact_url`` does."""
    path, mark, query = target.partition("?")
    return path + mark + _hide_values(query.partition("#")[0]) if mark else target


def query_values(parts: SplitResult) -> List[str]:
    """The values of a URL's query string that could be credentials (4 characters or
    more), decoded, to be scrubbed like the key."""
    values = (unquote_plus(field.partition("=")[2]) for field in parts.query.split("&"))
    return [value for value in values if len(value) >= MIN_QUERY_SECRET]
