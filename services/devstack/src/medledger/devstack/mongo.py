"""The MongoDB-compatible server (secantusdb) for the local stack and the tests.

With ``users``, the server runs with authentication (``--auth``, SCRAM-SHA-256 and mongod's
built-in roles): each user may read and write its own database and nothing else, and an admin
user (role ``root``) exists only to create them. secantusdb creates users only through
``createUser`` on a running server, so the first start with authentication runs the server
once without it, on the loopback interface only, just long enough to create the admin user;
every later user is created by that admin while authentication is on. Passwords are random,
kept in files readable by their owner only (0600).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import quote_plus

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from medledger.common.keyfiles import restrict, write_private
from medledger.devstack.paths import make_private_tree
from medledger.devstack.probes import Health, mongo_health
from medledger.devstack.process import StackError
from medledger.devstack.server import Server

ADMIN_USER: Final = "medledger-admin"
ADMIN_DATABASE: Final = "admin"
_TIMEOUT_MS: Final = 5000
_USER_NOT_FOUND: Final = 11


def mongod_cache_size(memory_bytes: int | None = None) -> str:
    """The cache mongod would give its storage engine on this machine (half of the memory
    less 1 GiB, at least 256 MiB), as a ``cache_size``. secantusdb's own default is 1 GiB
    whatever the machine, and a store that outgrows its cache crawls."""
    if memory_bytes is None:
        memory_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mib = max(256, (memory_bytes // (1024 * 1024) - 1024) // 2)
    return f"{mib}M"


class MongoServer(Server):
    """``secantusd-py`` on one loopback port with its data in ``storage_path``.

    ``stop()`` then ``start()`` reopens the same data on the same port (restart tests).
    With ``users`` (user name -> its database) and ``credentials_dir`` (where their passwords
    are kept), it requires authentication: see the module's docstring.
    """

    component = "mongo"

    def __init__(
        self,
        *,
        port: int,
        storage_path: Path,
        log_file: Path,
        pid_file: Path | None = None,
        sync_on_commit: bool = True,
        die_with_parent: bool = False,
        start_timeout: float = 60.0,
        users: Mapping[str, str] | None = None,
        credentials_dir: Path | None = None,
        oplog_max_entries: int | None = None,
        cache_size: str | None = None,
    ) -> None:
        """sync_on_commit: fsync the log on each commit, so an acknowledged write survives a
        crash (the local stack); tests may turn it off for speed since they stop cleanly.
        oplog_max_entries: the oplog's entry cap (the server's default, 100,000, when None),
        as one sizes mongod's oplog; entries past an hour are pruned whatever the cap. A
        benchmark that loads more than the cap raises it: past the cap, the server prunes
        the oldest entries every thousand writes, inside the write that triggers it.
        cache_size: the storage engine's cache (``"4G"``; the server's default, 1 GiB, when
        None), as mongod sizes it (half the memory less 1 GiB by default). Once the data
        outgrows the cache, every call also evicts pages, and a large load crawls."""
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        if (users is None) != (credentials_dir is None):
            raise ValueError("users and credentials_dir come together")
        if users is not None and ADMIN_USER in users:
            raise ValueError(f"{ADMIN_USER} is the admin's name")
        self.port = port
        self.storage_path = storage_path
        self.sync_on_commit = sync_on_commit
        if oplog_max_entries is not None and oplog_max_entries < 1:
            raise ValueError("oplog_max_entries is at least 1")
        self.oplog_max_entries = oplog_max_entries
        if cache_size is not None and not re.fullmatch(r"[1-9][0-9]*[MG]", cache_size):
            raise ValueError("cache_size is a size such as 512M or 4G")
        self.cache_size = cache_size
        self.users: Mapping[str, str] = MappingProxyType(dict(users or {}))
        self.credentials_dir = credentials_dir
        self._without_auth = False

    @property
    def auth(self) -> bool:
        """Whether clients must authenticate."""
        return self.credentials_dir is not None

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        """The server's address, without credentials (with auth, only ``ping`` passes)."""
        # The server reports itself as a one-member replica set; talk to it directly.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def password_file(self, user: str) -> Path:
        assert self.credentials_dir is not None, "no authentication configured"
        return self.credentials_dir / f"mongo-{user}.password"

    def _uri(self, user: str, database: str) -> str:
        password = self.password_file(user).read_text(encoding="utf-8").strip()
        return (
            f"mongodb://{quote_plus(user)}:{quote_plus(password)}@{self.host}:{self.port}"
            f"/?directConnection=true&authSource={database}"
        )

    def uri_for(self, user: str) -> str:
        """The connection string of ``user`` (its password included); without auth, ``uri``."""
        if not self.auth:
            return self.uri
        return self._uri(user, self.users[user])

    @property
    def admin_uri(self) -> str:
        """The admin's connection string (role root); without auth, ``uri``."""
        return self._uri(ADMIN_USER, ADMIN_DATABASE) if self.auth else self.uri

    def user_uris(self) -> dict[str, str]:
        """``uri_for`` each user whose password exists yet (all of them after ``provision``)."""
        return {
            user: self.uri_for(user)
            for user in self.users
            if not self.auth or self.password_file(user).is_file()
        }

    def argv(self) -> list[str]:
        # secantusd-py's own main, with its retryable-write bookkeeping fixed (secantusd.py).
        if importlib.util.find_spec("secantus") is None:
            raise StackError(f"secantusdb is not installed beside {sys.executable}; run `uv sync`")
        argv = [
            sys.executable,
            "-m",
            "medledger.devstack.secantusd",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
        ]
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        if self.oplog_max_entries is not None:
            argv += ["--oplog-max-entries", str(self.oplog_max_entries)]
        if self.cache_size is not None:
            argv += ["--cache-size", self.cache_size]
        if self.auth and not self._without_auth:
            argv.append("--auth")
        return argv

    def runs_with_auth(self) -> bool:
        """Whether the running server (ours or adopted) was started with ``--auth``."""
        return "--auth" in self.process.argv

    def cwd(self) -> Path:
        # secantusd-py reads ./secantusd.toml when present: keep a stray one from applying.
        return self.storage_path

    def prepare(self) -> None:
        # Its files are its user's only, including those an older stack left readable.
        make_private_tree(self.storage_path)

    def health(self) -> Health:
        return mongo_health(self.uri)

    def start(self) -> None:
        """Start the server; with auth, first create the admin user if there is none yet."""
        if self.auth and not self._admin_exists():
            self._create_admin()
        super().start()

    def _admin_exists(self) -> bool:
        """Whether our admin's password is kept and the data it was set in is still there."""
        fresh = not (self.storage_path / "WiredTiger").exists()
        return not fresh and self.password_file(ADMIN_USER).is_file()

    def _create_admin(self) -> None:
        """Run the server once without authentication (loopback only) and create or reset
        the admin user, its password kept in a 0600 file."""
        self._without_auth = True
        try:
            super().start()
            try:
                write_private(self.password_file(ADMIN_USER), secrets.token_urlsafe(32) + "\n")
                password = self.password_file(ADMIN_USER).read_text(encoding="utf-8").strip()
                with _client(self.uri) as client:
                    _ensure_user(client, ADMIN_USER, ADMIN_DATABASE, password, "root")
            finally:
                self.stop()
        finally:
            self._without_auth = False

    def provision(self) -> list[str]:
        """Make sure every user exists with the password in its file (made when missing),
        allowed readWrite on its own database only; returns the users it created."""
        if not self.auth:
            return []
        created = []
        try:
            with _client(self.admin_uri) as client:
                for user, database in self.users.items():
                    password_file = self.password_file(user)
                    if not password_file.is_file():
                        write_private(password_file, secrets.token_urlsafe(32) + "\n")
                    restrict(password_file)
                    password = password_file.read_text(encoding="utf-8").strip()
                    if _ensure_user(client, user, database, password, "readWrite"):
                        created.append(user)
        except PyMongoError as error:
            raise StackError(
                f"mongo: cannot provision its users as {ADMIN_USER} "
                f"({type(error).__name__}: {error}); if {self.password_file(ADMIN_USER)} no "
                "longer matches the server, remove it and start the stack again to reset it"
            ) from error
        return created


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, serverSelectionTimeoutMS=_TIMEOUT_MS, connectTimeoutMS=_TIMEOUT_MS)


def _ensure_user(
    client: MongoClient[dict[str, Any]], user: str, database: str, password: str, role: str
) -> bool:
    """Create ``user`` in ``database``, or reset its password and roles; True when created."""
    roles = [{"role": role, "db": database}]
    try:
        client[database].command("updateUser", user, pwd=password, roles=roles)
    except OperationFailure as error:
        if error.code != _USER_NOT_FOUND:
            raise
        client[database].command("createUser", user, pwd=password, roles=roles)
        return True
    return False
