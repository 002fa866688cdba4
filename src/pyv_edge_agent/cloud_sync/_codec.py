"""Pick the hot-path backend: the compiled ``_codec_c`` when it loads, else ``_codec_py``.

This is the only module that knows two implementations exist; ``BACKEND`` names the one
in use. ``PYV_EDGE_AGENT_NO_EXTENSIONS=1`` forces the pure twin (and other interpreters
than CPython always get it); ``PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1`` turns a missing
compiled twin into an ImportError.
"""

import sys
from typing import TYPE_CHECKING

from ._env import no_extensions, require_extensions
from ._types import ID_CHUNK_SHAPES as ID_CHUNK_SHAPES  # one definition, shared by both twins

NO_EXTENSIONS = no_extensions() or sys.implementation.name != "cpython"

if TYPE_CHECKING or NO_EXTENSIONS:
    from . import _codec_py as _impl
else:
    try:
        from . import _codec_c as _impl  # type: ignore[no-redef]
    except ImportError:
        if require_extensions():
            raise
        from . import _codec_py as _impl  # type: ignore[no-redef]

BACKEND = "cython" if _impl.__name__.endswith("_codec_c") else "python"
decode_payload = _impl.decode_payload
decode_rows = _impl.decode_rows
encode_payload = _impl.encode_payload
encode_rows = _impl.encode_rows
id_chunks = _impl.id_chunks
splice_body = _impl.splice_body
