"""Parse the environment switches shared by ``setup.py`` and the backend dispatcher.

This module imports nothing from the package so that ``setup.py`` can load it by path:
build time and run time must agree on what the variables mean.
"""

import os
from typing import Mapping, Optional, Tuple

NO_EXTENSIONS_VAR = "PYV_EDGE_AGENT_NO_EXTENSIONS"
REQUIRE_EXTENSIONS_VAR = "PYV_EDGE_AGENT_REQUIRE_EXTENSIONS"

_TRUE = frozenset({"1", "true", "yes", "on"})


def _flag(name: str, environ: Optional[Mapping[str, str]]) -> bool:
    env = os.environ if environ is None else environ
    return env.get(name, "").strip().lower() in _TRUE


def switches(environ: Optional[Mapping[str, str]] = None) -> Tuple[bool, bool]:
    """Return ``(no_extensions, require_extensions)`` as the environment sets them.

    Both at once is a ``ValueError``: requiring the compiled backend while switching it off
    is a mistake in the environment (a CI job that forgot one of them), not a preference to
    guess at.
    """
    off, required = _flag(NO_EXTENSIONS_VAR, environ), _flag(REQUIRE_EXTENSIONS_VAR, environ)
    if off and required:
        raise ValueError(
            f"{NO_EXTENSIONS_VAR}=1 switches the compiled backend off and {REQUIRE_EXTENSIONS_VAR}=1 requires it: "
            "unset one of them"
        )
    return off, required


def no_extensions(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Return True when the compiled backend must be neither built nor imported."""
    return switches(environ)[0]


def require_extensions(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Return True when a missing or broken compiled backend must be an error."""
    return switches(environ)[1]
