"""Triton's own virtualenv: built once from the pinned requirements, cached, reused.

The tritonserver that ``nvidia-pytriton`` bundles, and the Python backend stub it runs models
in, need numpy<2, which the workspace does not use; so Triton gets a virtualenv of its own.
It is rebuilt only when ``triton-requirements.txt`` (or the Python it is built for) changes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medledger.devstack.paths import cache_dir
from medledger.devstack.pinned_venv import PinnedVenv
from medledger.devstack.process import StackError

REQUIREMENTS_FILE = Path(__file__).with_name("triton-requirements.txt")
VENV_ENV_VAR = "MEDLEDGER_TRITON_VENV"
# numpy<2 has no wheels past Python 3.12; the stubs exist for 3.8-3.13.
_NEWEST_PYTHON = (3, 12)


def default_venv_dir() -> Path:
    """``$MEDLEDGER_TRITON_VENV``, else ``<repo>/.medledger/cache/triton-venv``."""
    override = os.environ.get(VENV_ENV_VAR)
    return Path(override).expanduser().resolve() if override else cache_dir() / "triton-venv"


def _python_request() -> str:
    """The interpreter to build the venv with: ours when numpy<2 supports it, else 3.12."""
    if sys.version_info[:2] <= _NEWEST_PYTHON:
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        base = Path(sys.base_prefix) / "bin" / f"python{version}"
        return str(base) if base.is_file() else version
    return "{}.{}".format(*_NEWEST_PYTHON)


@dataclass(frozen=True)
class TritonRuntime:
    """Paths inside a built Triton virtualenv."""

    venv: Path

    @property
    def python_version(self) -> str:
        """``X.Y`` of the venv's interpreter (read from its pyvenv.cfg)."""
        for line in (self.venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() in {"version_info", "version"}:
                return ".".join(value.strip().split(".")[:2])
        raise StackError(f"triton: no Python version in {self.venv / 'pyvenv.cfg'}")

    @property
    def base_python_lib(self) -> Path | None:
        """The base interpreter's lib dir, where its libpython (the stub links to it) lives."""
        for line in (self.venv / "pyvenv.cfg").read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent / "lib"
        return None

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{self.python_version}" / "site-packages"

    @property
    def server_dir(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver"

    @property
    def binary(self) -> Path:
        return self.server_dir / "bin" / "tritonserver"

    @property
    def bundled_libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def backends_dir(self) -> Path:
        return self.server_dir / "backends"

    @property
    def python_backend_stub(self) -> Path:
        return (
            self.server_dir
            / "python_backend_stubs"
            / self.python_version
            / "triton_python_backend_stub"
        )

    def pinned(self) -> PinnedVenv:
        """The virtualenv as built from ``triton-requirements.txt``."""
        return PinnedVenv("triton", self.venv, REQUIREMENTS_FILE, _python_request(), self._served)

    def _served(self) -> bool:
        # Asked late: the binary's path reads the venv's pyvenv.cfg, absent before a build.
        return self.binary.is_file()

    def is_current(self) -> bool:
        """Built from the present requirements file and complete."""
        return self.pinned().is_current()


def ensure_triton_runtime(
    venv: Path | None = None,
    *,
    log_file: Path,
    on_build: Callable[[Path], None] | None = None,
) -> TritonRuntime:
    """The Triton virtualenv at ``venv`` (default: the shared cache), built if missing or stale.

    ``on_build`` is called before a build starts (it takes a while); the build's output goes to
    ``log_file``. Concurrent callers (tests in parallel, ``dev up``) wait for one build.
    """
    runtime = TritonRuntime((venv or default_venv_dir()).resolve())
    runtime.pinned().ensure(log_file=log_file, on_build=on_build)
    return runtime
