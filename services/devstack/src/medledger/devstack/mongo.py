"""The MongoDB-compatible server (secantusdb) for the local stack and the tests."""

from __future__ import annotations

from pathlib import Path

from medledger.devstack.probes import Health, mongo_health
from medledger.devstack.process import find_executable
from medledger.devstack.server import Server


class MongoServer(Server):
    """``secantusd-py`` on one loopback port with its data in ``storage_path``.

    ``stop()`` then ``start()`` reopens the same data on the same port (restart tests).
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
    ) -> None:
        """sync_on_commit: fsync the log on each commit, so an acknowledged write survives a
        crash (the local stack); tests may turn it off for speed since they stop cleanly."""
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.port = port
        self.storage_path = storage_path
        self.sync_on_commit = sync_on_commit

    @property
    def ports(self) -> list[int]:
        return [self.port]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def uri(self) -> str:
        # The server reports itself as a one-member replica set; talk to it directly.
        return f"mongodb://{self.host}:{self.port}/?directConnection=true"

    def argv(self) -> list[str]:
        argv = [
            find_executable("secantusd-py"),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--storage-path",
            str(self.storage_path),
        ]
        if self.sync_on_commit:
            argv.append("--sync-on-commit")
        return argv

    def cwd(self) -> Path:
        # secantusd-py reads ./secantusd.toml when present: keep a stray one from applying.
        return self.storage_path

    def prepare(self) -> None:
        self.storage_path.mkdir(parents=True, exist_ok=True)

    def health(self) -> Health:
        return mongo_health(self.uri)
