"""Start, watch and stop one server process of the local stack.

A server runs in its own session (so a Ctrl-C in the terminal that started it does not reach it),
writes stdout and stderr to one log file, and is remembered in a pid file that also records the
process start time: a pid file whose process has gone and whose pid was reused never makes us
signal a stranger.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medledger.devstack.paths import PRIVATE_DIR_MODE, PRIVATE_UMASK

LOG_TAIL_LINES = 20
_LOG_TAIL_BYTES = 16 * 1024
_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A component of the local stack could not be started, reached or stopped."""


class ComponentStartError(StackError):
    """A component did not become ready; the message names it and its log file."""

    def __init__(self, component: str, log_file: Path | None, reason: str) -> None:
        self.component = component
        self.log_file = log_file
        message = f"{component}: {reason}"
        if log_file is not None:
            message += f" (log: {log_file})"
            tail = log_tail(log_file)
            if tail:
                message += "\n--- last lines of the log ---\n" + tail
        super().__init__(message)


class PortBusyError(StackError):
    """A port a component needs is already taken by a process that is not ours."""

    def __init__(self, component: str, port: int, host: str = "127.0.0.1") -> None:
        self.component = component
        self.port = port
        super().__init__(
            f"{component}: port {host}:{port} is already in use by another program. "
            f"Stop that program (find it with `ss -ltnp 'sport = :{port}'`), "
            "or, if it is a medledger stack from another checkout or MEDLEDGER_HOME, "
            "run `medledger dev down` there."
        )


def log_tail(log_file: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, or "" when it cannot be read."""
    try:
        with log_file.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - _LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind host:port now (a listener on 0.0.0.0 also makes it busy)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers set it, so a port in TIME_WAIT counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class PortReservations:
    """Holds ports (bound, not listening) until their servers are about to take them.

    The stack's gRPC ports (50051-50056) lie in Linux's ephemeral range (32768-60999): an
    outbound connection of any process, e.g. a service's first one to Vault, may get one as
    its local port, and the service meant to listen there then fails to bind. The kernel
    never picks a port that a socket has bound, so ``up`` reserves them first and releases
    each just before its service starts.
    """

    def __init__(self, ports: Sequence[int], host: str = "127.0.0.1") -> None:
        self._held: dict[int, socket.socket] = {}
        for port in ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind((host, port))
            except OSError:
                sock.close()  # busy already: the server's own check reports it
                continue
            self._held[port] = sock

    def release(self, port: int) -> None:
        held = self._held.pop(port, None)
        if held is not None:
            held.close()

    def release_all(self) -> None:
        for port in list(self._held):
            self.release(port)


def wait_listening(
    port: int, host: str, within: float, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Whether something listens on host:port within ``within`` seconds (False at once when
    ``alive`` says the process meant to listen there has gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and alive():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports that are free now (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
    return ports


def free_port(host: str = "127.0.0.1", *, with_next: bool = False) -> int:
    """A port that is free now; with_next also demands port + 1 (Vault's cluster port)."""
    for _ in range(100):
        (port,) = free_ports(1, host)
        if not with_next or is_port_free(port + 1, host):
            return port
    raise StackError("no free port pair found on the loopback interface")


def ensure_ports_free(component: str, ports: Sequence[int], host: str = "127.0.0.1") -> None:
    """Raise PortBusyError naming the component for the first busy port."""
    for port in ports:
        if not is_port_free(port, host):
            raise PortBusyError(component, port, host)


def _process_start_time(pid: int) -> int | None:
    """Start time of a live process in clock ticks since boot; None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after the last ")".
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in {"Z", "X"}:
        return None
    return int(fields[19])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists and is not a zombie."""
    if Path("/proc").is_dir():
        return _process_start_time(pid) is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds: enough to tell our process from a later one with the same pid."""

    pid: int
    start_time: int | None
    argv: tuple[str, ...]

    def is_running(self) -> bool:
        if not pid_alive(self.pid):
            return False
        if self.start_time is None:
            return True
        return _process_start_time(self.pid) == self.start_time

    def write(self, pid_file: Path) -> None:
        pid_file.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        payload = {"pid": self.pid, "start_time": self.start_time, "argv": list(self.argv)}
        tmp = pid_file.with_suffix(".tmp")
        descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(payload) + "\n")
        tmp.replace(pid_file)

    @classmethod
    def read(cls, pid_file: Path) -> PidRecord | None:
        """The record in a pid file, or None when there is none or it is unreadable."""
        try:
            data = json.loads(pid_file.read_text(encoding="utf-8"))
            start = data.get("start_time")
            return cls(
                pid=int(data["pid"]),
                start_time=None if start is None else int(start),
                argv=tuple(str(a) for a in data.get("argv", [])),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _die_with_parent() -> None:
    """Run in the child before exec: get SIGTERM when the process that started us dies."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def signal_group_and_wait(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by pid, wait up to timeout, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    # Helpers the server forked (Triton's Python backend stubs) share its group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ManagedProcess:
    """One server process: start it detached with a log and pid file, stop it by its own pid."""

    def __init__(
        self,
        component: str,
        *,
        log_file: Path,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.component = component
        self.log_file = log_file
        self.pid_file = pid_file
        self.die_with_parent = die_with_parent
        self._popen: subprocess.Popen[bytes] | None = None
        self._record: PidRecord | None = None

    @property
    def pid(self) -> int | None:
        return self._record.pid if self._record is not None else None

    @property
    def argv(self) -> tuple[str, ...]:
        """The command line of the process we started or adopted; () when there is none."""
        return self._record.argv if self._record is not None else ()

    def adopt(self) -> bool:
        """Take over a process recorded in our pid file if it is still the same process."""
        if self.pid_file is None:
            return False
        record = PidRecord.read(self.pid_file)
        if record is None or not record.is_running():
            return False
        self._record = record
        return True

    def start(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> int:
        """Start the process (appending to its log) and record its pid; returns the pid."""
        if self.is_running():
            raise StackError(f"{self.component}: already running (pid {self.pid})")
        self.log_file.parent.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
        # Logs may hold what the servers were asked: their owner's only.
        descriptor = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(env) if env is not None else None,
                    cwd=cwd,
                    start_new_session=True,
                    # What the server writes (data, logs of its own) is its owner's only.
                    umask=PRIVATE_UMASK,
                    preexec_fn=_die_with_parent if self.die_with_parent else None,  # noqa: PLW1509
                )
            except OSError as exc:
                raise ComponentStartError(
                    self.component, self.log_file, f"cannot run {argv[0]}: {exc}"
                ) from exc
        pid = self._popen.pid
        self._record = PidRecord(pid, _process_start_time(pid), tuple(argv))
        if self.pid_file is not None:
            self._record.write(self.pid_file)
        return pid

    def is_running(self) -> bool:
        if self._popen is not None:
            # Our own child: poll() reaps it, so a dead server is never seen as a zombie.
            return self._popen.poll() is None
        return self._record is not None and self._record.is_running()

    def exit_code(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def wait_ready(
        self,
        ready: Callable[[], bool],
        *,
        timeout: float,
        what: str = "did not become ready",
        interval: float = 0.1,
    ) -> None:
        """Poll ready() until true; raise ComponentStartError on timeout or if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.is_running():
                code = self.exit_code()
                detail = f" with code {code}" if code is not None else ""
                raise ComponentStartError(
                    self.component, self.log_file, f"exited during start-up{detail}"
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise ComponentStartError(
                    self.component, self.log_file, f"{what} within {timeout:.0f}s"
                )
            time.sleep(interval)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop the process (SIGTERM, wait, SIGKILL) and remove its pid file.

        Returns whether a running process was stopped.
        """
        stopped = False
        if self.is_running() and self._record is not None:
            signal_group_and_wait(self._record.pid, timeout)
            stopped = True
        if self._popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=timeout)
            self._popen = None
        self._record = None
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return stopped


def find_executable(name: str) -> str:
    """An executable installed beside the running Python (the workspace venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found beside {sys.executable} or on PATH; run `uv sync`")
    return found
