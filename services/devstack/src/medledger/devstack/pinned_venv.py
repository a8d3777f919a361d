"""Virtualenvs of their own for the stack's third-party servers (Triton, the trace UI), built
once with uv from a pinned requirements file, cached, and rebuilt only when that file (or the
Python it is built for) changes. Their dependencies never meet the workspace's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medledger.devstack.process import ComponentStartError, StackError

STAMP_NAME = ".medledger-requirements.sha256"
BUILD_TIMEOUT_S = 900


def find_uv(component: str) -> str:
    for candidate in (os.environ.get("UV"), shutil.which("uv"), "~/.local/bin/uv"):
        if candidate and Path(candidate).expanduser().is_file():
            return str(Path(candidate).expanduser())
    raise StackError(f"{component}: `uv` is needed to build its virtualenv; run `make bootstrap`")


@dataclass(frozen=True)
class PinnedVenv:
    """A virtualenv at ``venv`` built for ``python`` from ``requirements``; ``component``
    names it in messages; ``complete`` says whether a built one holds what it must."""

    component: str
    venv: Path
    requirements: Path
    python: str
    complete: Callable[[], bool]

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.requirements.read_bytes())
        digest.update(self.python.encode())
        return digest.hexdigest()

    def is_current(self) -> bool:
        """Built from the present requirements for this Python, and complete."""
        try:
            recorded = (self.venv / STAMP_NAME).read_text(encoding="utf-8").strip()
        except OSError:
            return False
        return recorded == self.fingerprint() and self.complete()

    def ensure(self, *, log_file: Path, on_build: Callable[[Path], None] | None = None) -> None:
        """Builds it unless current. ``on_build`` is called before a build starts (it takes
        a while); the build's output goes to ``log_file``. Concurrent callers (tests in
        parallel, ``dev up``) wait for one build."""
        if self.is_current():
            return
        self.venv.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.venv.with_name(self.venv.name + ".lock")
        with lock_path.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.is_current():  # another process built it while we waited
                return
            if on_build is not None:
                on_build(self.venv)
            self._build(log_file)

    def _build(self, log_file: Path) -> None:
        uv = find_uv(self.component)
        shutil.rmtree(self.venv, ignore_errors=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        outer = {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}  # the workspace's, not the one we build
        env = {k: v for k, v in os.environ.items() if k not in outer}
        python = str(self.venv / "bin" / "python")
        steps = [
            [uv, "venv", "--no-config", "--python", self.python, str(self.venv)],
            [uv, "pip", "install", "--no-config", "--python", python, "-r", str(self.requirements)],
        ]
        with log_file.open("ab") as log:
            for argv in steps:
                header = f"--- building {self.component}'s virtualenv: {' '.join(argv)}\n"
                log.write(header.encode())
                log.flush()
                try:
                    done = subprocess.run(
                        argv,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=self.venv.parent,
                        timeout=BUILD_TIMEOUT_S,
                        check=False,
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise ComponentStartError(
                        self.component, log_file, f"virtualenv build: {exc}"
                    ) from exc
                if done.returncode != 0:
                    raise ComponentStartError(
                        self.component,
                        log_file,
                        f"building its virtualenv failed ({argv[1]} {argv[2]})",
                    )
        if not self.complete():
            raise ComponentStartError(
                self.component, log_file, f"its virtualenv {self.venv} lacks its server"
            )
        (self.venv / STAMP_NAME).write_text(self.fingerprint() + "\n", encoding="utf-8")
