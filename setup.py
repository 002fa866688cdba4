"""Build the optional compiled backend; everything else is in pyproject.toml.

``PYV_EDGE_AGENT_NO_EXTENSIONS=1`` builds nothing. A missing compiler or Cython also gives
a working pure-Python install (with a warning) unless
``PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1`` asks for the build to fail instead.
"""

import importlib.util
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PACKAGE_DIR = os.path.join(HERE, "src", "pyv_edge_agent", "cloud_sync")


def _load_env_module():  # type: ignore[no-untyped-def]
    # Loaded by path so that the build does not import the package (or its dependencies).
    spec = importlib.util.spec_from_file_location("_cloud_sync_env", os.path.join(PACKAGE_DIR, "_env.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


_env = _load_env_module()


class OptionalBuildExt(build_ext):
    """Build the extension, falling back to pure Python when the build fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "no compiled backend"
            self._fallback(exc)

    def build_extension(self, ext) -> None:  # type: ignore[no-untyped-def]
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._fallback(exc)

    def _fallback(self, exc: Exception) -> None:
        if _env.require_extensions():
            raise exc
        sys.stderr.write(
            f"WARNING: pyv-edge-agent: compiled backend not built ({type(exc).__name__}: {exc}); "
            "installing the pure-Python backend\n"
        )


def _extensions():  # type: ignore[no-untyped-def]
    if _env.no_extensions():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError as exc:
        if _env.require_extensions():
            raise
        sys.stderr.write(f"WARNING: pyv-edge-agent: Cython unavailable ({exc}); pure-Python install\n")
        return []
    from setuptools import Extension

    extension = Extension(
        "pyv_edge_agent.cloud_sync._codec_c",
        [os.path.join("src", "pyv_edge_agent", "cloud_sync", "_codec_c.pyx")],
    )
    return cythonize(
        [extension],
        compiler_directives={"language_level": 3, "embedsignature": True},
        quiet=True,
    )


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
