"""Where the local stack keeps its state, logs, pid files and caches."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

STATE_DIR_NAME = ".medledger"
# The stack's state, logs and credentials are its user's only.
PRIVATE_DIR_MODE: Final = 0o700
PRIVATE_UMASK: Final = 0o077


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Files and folders created meanwhile, by us or the servers we start, are their owner's
    only (umask 077); the previous umask is restored after."""
    previous = os.umask(PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and its parents) if missing and make it 0700."""
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    path.chmod(PRIVATE_DIR_MODE)


def make_private_tree(path: Path) -> None:
    """``make_private_dir``, and take the group's and others' rights from everything under
    it (what an older stack left readable); the owner's rights stay as they are."""
    make_private_dir(path)
    for folder, dirs, files in os.walk(path):
        for name in dirs:
            (Path(folder) / name).chmod(PRIVATE_DIR_MODE)
        for name in files:
            file = Path(folder) / name
            mode = stat.S_IMODE(file.lstat().st_mode)
            if mode & ~PRIVATE_DIR_MODE and not file.is_symlink():
                file.chmod(mode & PRIVATE_DIR_MODE)


def repo_root(start: Path | None = None) -> Path:
    """The checkout the command runs in: the nearest parent holding the workspace's uv.lock.

    Falls back to the current directory, so the command still works outside a checkout.
    """
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "uv.lock").is_file() and (candidate / "services").is_dir():
            return candidate
    return here


def cache_dir(root: Path | None = None) -> Path:
    """Caches shared by the local stack and the tests (not moved by MEDLEDGER_HOME)."""
    return (root or repo_root()) / STATE_DIR_NAME / "cache"


def models_dir(root: Path | None = None) -> Path:
    """What ``make models`` builds (``python -m medledger.models build --out build/models``):
    ``local/`` and ``production/`` Triton model repositories; a build output, so not moved by
    MEDLEDGER_HOME."""
    return (root or repo_root()) / "build" / "models"


def local_model_repository(root: Path | None = None) -> Path:
    """The model repository the local stack's Triton serves (Python-backend layout)."""
    return models_dir(root) / "local"


@dataclass(frozen=True)
class StackPaths:
    """The layout under MEDLEDGER_HOME (default ``<repo>/.medledger``)."""

    home: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        override = os.environ.get("MEDLEDGER_HOME")
        home = Path(override).expanduser() if override else repo_root() / STATE_DIR_NAME
        return cls(home.resolve())

    def make_home(self) -> None:
        """Create the home folder, its owner's only (0700): nothing under it is anyone else's."""
        make_private_dir(self.home)

    def state(self, component: str) -> Path:
        return self.home / component

    def log(self, component: str) -> Path:
        return self.home / "logs" / f"{component}.log"

    def pid(self, component: str) -> Path:
        return self.home / "run" / f"{component}.pid"

    @property
    def keys(self) -> Path:
        """Local credentials of the stack's clients and users (owner only: 0700, files 0600)."""
        return self.home / "keys"

    def client_key(self, client_id: str) -> Path:
        """A client's private JWK (what ``medledger token --key`` reads)."""
        return self.keys / f"{client_id}.jwk"

    def client_jwks(self, client_id: str) -> Path:
        """The public JWKS identity registers for the client."""
        return self.keys / f"{client_id}.jwks.json"

    def password(self, username: str) -> Path:
        return self.keys / f"{username}-password"

    def totp(self, username: str) -> Path:
        """A user's TOTP enrolment: the otpauth:// URI an authenticator app imports."""
        return self.keys / f"{username}-totp"
