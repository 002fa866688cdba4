"""The modules the TLS and encryption tests need beyond the package: ``cryptography`` (the
``crypto`` extra, encryption at rest) and ``trustme`` (the test certificates, on top of
cryptography). Where they cannot be installed the tests that need them skip, naming why;
with ``PYV_EDGE_AGENT_REQUIRE_CRYPTO=1`` (``.ci/run`` and the Debian and ARM roots, which
install them) that skip is a failure, as a missing compiled backend is."""

import importlib
import os
from types import ModuleType
from typing import Optional

import pytest

REQUIRE_CRYPTO_VAR = "PYV_EDGE_AGENT_REQUIRE_CRYPTO"


def import_or_skip(name: str, reason: Optional[str] = None) -> ModuleType:
    """Import ``name``, or skip the test (or the whole module, at module level) saying why;
    fail instead when the environment requires the crypto tests to run."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        why = reason or f"could not import {name!r}: {error}"
        if os.environ.get(REQUIRE_CRYPTO_VAR) == "1":
            pytest.fail(f"{REQUIRE_CRYPTO_VAR}=1 but {why}", pytrace=False)
        pytest.skip(why, allow_module_level=True)
