"""Pick the hot-path backend: the compiled ``_c`` when it loads, else ``_py``.

This is the only module that knows two implementations exist; ``BACKEND`` names the one
in use and ``FALLBACK_REASON`` why it is the pure one. ``PYV_EDGE_AGENT_NO_EXTENSIONS=1``
forces the pure twin quietly (and other interpreters than CPython always get it); a
compiled twin that is missing or fails to load is a ``RuntimeWarning``, or an ImportError
with ``PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1``. Both variables at once are an ImportError.
"""

import importlib
import sys
import warnings
from typing import TYPE_CHECKING, Optional

from .._types import ID_CHUNK_SHAPES as ID_CHUNK_SHAPES  # one definition, shared by both twins
from ._env import NO_EXTENSIONS_VAR, switches

try:
    _OFF, _REQUIRED = switches()
except ValueError as exc:
    raise ImportError(str(exc)) from None
NO_EXTENSIONS = _OFF or sys.implementation.name != "cpython"
FALLBACK_REASON: Optional[str] = f"{NO_EXTENSIONS_VAR}=1" if _OFF else None

_COMPILED = f"{__package__}._c"
if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _py as _impl

    FALLBACK_REASON = FALLBACK_REASON or f"{sys.implementation.name} has no compiled backend"
else:
    try:
        _impl = importlib.import_module(_COMPILED)  # type: ignore[assignment]
    except ImportError as exc:
        if _REQUIRED:
            raise
        from . import _py as _impl  # type: ignore[no-redef]

        if isinstance(exc, ModuleNotFoundError) and exc.name == _COMPILED:
            FALLBACK_REASON = "the compiled backend is not installed"
        else:  # there, but broken: built for another Python or architecture
            FALLBACK_REASON = f"the compiled backend did not load: {exc}"
        # Once per process: the install went wrong or had no compiler, and it is slower.
        warnings.warn(
            f"pyv_edge_agent.cloud_sync: {FALLBACK_REASON}; using the slower pure-Python backend. "
            f"Reinstall with a C compiler and the Python headers, or set {NO_EXTENSIONS_VAR}=1 to choose it.",
            RuntimeWarning,
            stacklevel=1,
        )

BACKEND = "cython" if _impl.__name__ == _COMPILED else "python"
decode_payload = _impl.decode_payload
decode_rows = _impl.decode_rows
encode_payload = _impl.encode_payload
encode_rows = _impl.encode_rows
id_chunks = _impl.id_chunks
splice_body = _impl.splice_body
