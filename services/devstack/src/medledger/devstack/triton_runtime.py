"""Triton's own virtualenv: built once from the pinned requirements, cached, reused.

The tritonserver that ``nvidia-pytriton`` bundles, and the Python backend stub it runs models
in, need numpy<2, which the workspace does not use; so Triton gets a virtualenv of its own.
It is rebuilt only when ``triton-requirements.txt`` (or the Python it is built for) changes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medledger.devstack.paths import cache_dir
from medledger.devstack.process import ComponentStartError, StackError

REQUIREMENTS_FILE = Path(__file__).with_name("triton-requirements.txt")
VENV_ENV_VAR = "MEDLEDGER_TRITON_VENV"
_STAMP_NAME = ".medledger-requirements.sha256"
# numpy<2 has no wheels past Python 3.12; the stubs exist for 3.8-3.13.
_NEWEST_PYTHON = (3, 12)
BUILD_TIMEOUT_S = 900


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


def _fingerprint(python: str) -> str:
    digest = hashlib.sha256(REQUIREMENTS_FILE.read_bytes())
    digest.update(python.encode())
    return digest.hexdigest()


def _find_uv() -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), "~/.local/bin/uv"):
        if candidate and Path(candidate).expanduser().is_file():
            return str(Path(candidate).expanduser())
    raise StackError("triton: `uv` is needed to build Triton's virtualenv; run `make bootstrap`")


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

    def is_current(self) -> bool:
        """Built from the present requirements file and complete."""
        stamp = self.venv / _STAMP_NAME
        try:
            recorded = stamp.read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return recorded == _fingerprint(_python_request()) and self.binary.is_file()


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
    if runtime.is_current():
        return runtime
    runtime.venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = runtime.venv.with_name(runtime.venv.name + ".lock")
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if runtime.is_current():  # another process built it while we waited
            return runtime
        if on_build is not None:
            on_build(runtime.venv)
        _build(runtime, log_file)
    return runtime


def _build(runtime: TritonRuntime, log_file: Path) -> None:
    uv = _find_uv()
    python = _python_request()
    shutil.rmtree(runtime.venv, ignore_errors=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    outer = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}  # the workspace's, not the one we build
    env = {k: v for k, v in os.environ.items() if k not in outer}
    steps = [
        [uv, "venv", "--no-config", "--python", python, str(runtime.venv)],
        [
            uv,
            "pip",
            "install",
            "--no-config",
            "--python",
            str(runtime.venv / "bin" / "python"),
            "-r",
            str(REQUIREMENTS_FILE),
        ],
    ]
    with log_file.open("ab") as log:
        for argv in steps:
            log.write(f"--- building Triton's virtualenv: {' '.join(argv)}\n".encode())
            log.flush()
            try:
                done = subprocess.run(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=runtime.venv.parent,
                    timeout=BUILD_TIMEOUT_S,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise ComponentStartError("triton", log_file, f"virtualenv build: {exc}") from exc
            if done.returncode != 0:
                raise ComponentStartError(
                    "triton", log_file, f"building its virtualenv failed ({argv[1]} {argv[2]})"
                )
    if not runtime.binary.is_file():
        raise ComponentStartError("triton", log_file, f"no tritonserver at {runtime.binary}")
    (runtime.venv / _STAMP_NAME).write_text(_fingerprint(python) + "\n", encoding="utf-8")
