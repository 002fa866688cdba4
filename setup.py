"""Build the optional compiled backend; everything else is in pyproject.toml.

The extension is compiled from ``_codec/_c.pyx`` by the Cython pinned in
``build-system.requires``; no generated C is shipped (see docs/platforms.md for why).

``PYV_EDGE_AGENT_NO_EXTENSIONS=1`` builds nothing. A missing compiler or Cython also gives
a working pure-Python install (with a one-line warning) unless
``PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1`` asks for the build to fail instead. Both at once
are an error, as they are at import.
"""

import importlib.util
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join(HERE, "src", "pyv_edge_agent", "cloud_sync")

# Module-wide directives. The fast-but-unsafe ones (boundscheck, wraparound) are switched
# off per function in the .pyx, only where the index is proven in range; the rest of
# Cython's defaults are already the fast choice for this code (no C division, no
# memoryviews).
CYTHON_DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
}


def _load_env_module():  # type: ignore[no-untyped-def]
    # Loaded by path so that the build does not import the package (or its dependencies).
    spec = importlib.util.spec_from_file_location("_cloud_sync_env", os.path.join(PACKAGE_DIR, "_codec", "_env.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_env = _load_env_module()
try:
    NO_EXTENSIONS, REQUIRE_EXTENSIONS = _env.switches()
except ValueError as exc:
    sys.exit(f"error: pyv-edge-agent: {exc}")


def _warn(reason: str) -> None:
    sys.stderr.write(f"WARNING: pyv-edge-agent: compiled backend not built ({reason}); using the pure-Python backend\n")


class OptionalBuildExt(build_ext):
    """Cythonize and compile the extension; fall back to pure Python when either fails.

    Cythonizing here, not at import of setup.py, keeps ``sdist`` free of generated C and
    lets a missing Cython fall back like a missing compiler does.
    """

    def run(self) -> None:
        try:
            from Cython.Build import cythonize
        except ImportError as exc:
            self._fallback(exc)
            return
        try:
            # Only the sources change: the Extension objects keep what setuptools'
            # finalize_options set on them.
            compiled = cythonize(self.extensions, compiler_directives=CYTHON_DIRECTIVES, quiet=True)
            for ext, cythonized in zip(self.extensions, compiled):
                ext.sources = cythonized.sources
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no compiled backend"
            self._fallback(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def _fallback(self, exc: BaseException) -> None:
        if REQUIRE_EXTENSIONS:
            raise exc
        if isinstance(exc, CCompilerError):
            # The full compiler command line is in the log above; the warning stays one line.
            reason = f"{type(exc).__name__}: no C compiler, or no Python headers (python3-dev)"
        else:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            reason = reason if len(reason) <= 120 else reason[:117] + "..."
        _warn(reason)


# Commands that produce an installable build (setup.py also runs for metadata only).
_BUILD_COMMANDS = frozenset({"bdist_wheel", "build", "build_ext", "install", "develop", "editable_wheel"})


def _extensions() -> "list[Extension]":
    if NO_EXTENSIONS:
        if _BUILD_COMMANDS.intersection(sys.argv[1:]):
            _warn(f"{_env.NO_EXTENSIONS_VAR} is set")
        return []
    return [
        Extension(
            "pyv_edge_agent.cloud_sync._codec._c",
            [os.path.join("src", "pyv_edge_agent", "cloud_sync", "_codec", "_c.pyx")],
        )
    ]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
