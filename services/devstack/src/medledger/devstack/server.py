"""What every component of the local stack has in common: ports, a process, a health probe."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path

from medledger.devstack.probes import Health
from medledger.devstack.process import ManagedProcess, ensure_ports_free


class Server(abc.ABC):
    """A real server run as a child process; subclasses say how to start it and probe it."""

    component: str
    host = "127.0.0.1"

    def __init__(
        self,
        *,
        log_file: Path,
        pid_file: Path | None,
        start_timeout: float,
        die_with_parent: bool = False,
    ) -> None:
        """die_with_parent: stop the server when the starting process dies (test fixtures)."""
        self.log_file = log_file
        self.pid_file = pid_file
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self._process: ManagedProcess | None = None

    @property
    @abc.abstractmethod
    def ports(self) -> Sequence[int]:
        """Every port the server binds (checked free before it starts)."""

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where clients reach it, as they would write it in their configuration."""

    @abc.abstractmethod
    def argv(self) -> list[str]:
        """The command line that starts it."""

    @abc.abstractmethod
    def health(self) -> Health:
        """Probe it once."""

    def env(self) -> dict[str, str] | None:
        """The environment for the process (None: inherit ours)."""
        return None

    def cwd(self) -> Path | None:
        """The working directory for the process (None: ours)."""
        return None

    def prepare(self) -> None:
        """Create what the server needs on disk before it starts (default: nothing)."""
        return None

    def after_start(self) -> None:
        """Finish bringing it up once its process runs (e.g. unseal); default: wait for health."""
        self.process.wait_ready(lambda: self.health() is Health.SERVING, timeout=self.start_timeout)

    @property
    def process(self) -> ManagedProcess:
        if self._process is None:
            self._process = ManagedProcess(
                self.component,
                log_file=self.log_file,
                pid_file=self.pid_file,
                die_with_parent=self.die_with_parent,
            )
        return self._process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.is_running()

    def adopt(self) -> bool:
        """Take over the server recorded in our pid file when that process still runs."""
        return self.process.adopt()

    def check_ports(self) -> None:
        ensure_ports_free(self.component, self.ports, self.host)

    def start(self) -> None:
        """Start the server and return once it serves; on failure nothing is left running."""
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Check its ports, prepare its files and start its process, without waiting."""
        self.check_ports()
        self.prepare()
        self.process.start(self.argv(), env=self.env(), cwd=self.cwd())

    def wait_started(self) -> None:
        """Wait until a launched server serves; stop it if it does not."""
        try:
            self.after_start()
        except BaseException:
            self.process.stop()
            raise

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop it by its own pid; returns whether a running process was stopped."""
        if not self.is_running():
            self.adopt()
        return self.process.stop(timeout)
