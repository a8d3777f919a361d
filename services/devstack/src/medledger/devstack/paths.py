"""Where the local stack keeps its state, logs, pid files and caches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

STATE_DIR_NAME = ".medledger"


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


@dataclass(frozen=True)
class StackPaths:
    """The layout under MEDLEDGER_HOME (default ``<repo>/.medledger``)."""

    home: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        override = os.environ.get("MEDLEDGER_HOME")
        home = Path(override).expanduser() if override else repo_root() / STATE_DIR_NAME
        return cls(home.resolve())

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
