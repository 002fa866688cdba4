"""Parse the environment switches shared by ``setup.py`` and the backend dispatcher.

This module imports nothing from the package so that ``setup.py`` can load it by path:
build time and run time must agree on what the variables mean.
"""

import os
from typing import Mapping, Optional

NO_EXTENSIONS_VAR = "PYV_EDGE_AGENT_NO_EXTENSIONS"
REQUIRE_EXTENSIONS_VAR = "PYV_EDGE_AGENT_REQUIRE_EXTENSIONS"

_TRUE = frozenset({"1", "true", "yes", "on"})


def _flag(name: str, environ: Optional[Mapping[str, str]]) -> bool:
    env = os.environ if environ is None else environ
    return env.get(name, "").strip().lower() in _TRUE


def no_extensions(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Return True when the compiled backend must be neither built nor imported."""
    return _flag(NO_EXTENSIONS_VAR, environ)


def require_extensions(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Return True when a missing or broken compiled backend must be an error."""
    return _flag(REQUIRE_EXTENSIONS_VAR, environ) and not no_extensions(environ)
