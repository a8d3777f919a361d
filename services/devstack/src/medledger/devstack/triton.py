"""NVIDIA Triton Inference Server (the build bundled in nvidia-pytriton), CPU here."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medledger.devstack.probes import Health, http_health
from medledger.devstack.server import Server
from medledger.devstack.triton_runtime import TritonRuntime, ensure_triton_runtime


@dataclass(frozen=True)
class TritonTls:
    """Triton's gRPC endpoint over TLS: its certificate and key, and the CA whose client
    certificates it requires (mutual TLS) when ``ca_file`` is set."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None


class TritonServer(Server):
    """``tritonserver`` bound to loopback, with a prepared Python backend and a model repository.

    The runtime (its virtualenv) is built on first start when missing; ``on_build`` is told
    before that happens.
    """

    component = "triton"

    def __init__(
        self,
        *,
        grpc_port: int,
        http_port: int,
        metrics_port: int,
        state_dir: Path,
        log_file: Path,
        model_repository: Path | None = None,
        model_control_mode: str = "none",
        venv: Path | None = None,
        pid_file: Path | None = None,
        die_with_parent: bool = False,
        start_timeout: float = 120.0,
        tls: TritonTls | None = None,
    ) -> None:
        """model_repository: default an empty ``state_dir/models``; model_control_mode: ``none``
        (load all at start) or ``poll`` (pick up changes while running); tls: serve gRPC over
        TLS (HTTP, used for health, stays plain on loopback)."""
        super().__init__(
            log_file=log_file,
            pid_file=pid_file,
            start_timeout=start_timeout,
            die_with_parent=die_with_parent,
        )
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.state_dir = state_dir
        self.model_repository = model_repository or state_dir / "models"
        self.model_control_mode = model_control_mode
        self.venv = venv
        self.tls = tls
        self._runtime: TritonRuntime | None = None

    @property
    def ports(self) -> list[int]:
        return [self.grpc_port, self.http_port, self.metrics_port]

    @property
    def grpc_url(self) -> str:
        """The TRITON_URL clients use (tritonclient.grpc takes host:port)."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def address(self) -> str:
        return self.grpc_url

    @property
    def backends_dir(self) -> Path:
        return self.state_dir / "backends"

    @property
    def runtime(self) -> TritonRuntime:
        if self._runtime is None:
            self._runtime = ensure_triton_runtime(self.venv, log_file=self.log_file)
        return self._runtime

    def ensure_runtime(self, on_build: Callable[[Path], None] | None = None) -> TritonRuntime:
        """Build the virtualenv now if needed (``on_build(venv)`` is called first)."""
        if self._runtime is None:
            self._runtime = ensure_triton_runtime(
                self.venv, log_file=self.log_file, on_build=on_build
            )
        return self._runtime

    def prepare(self) -> None:
        runtime = self.runtime
        self.model_repository.mkdir(parents=True, exist_ok=True)
        # The Python backend looks for its stub inside backends/python/: give it a copy of the
        # bundled backends with the stub built for the venv's Python.
        shutil.copytree(runtime.backends_dir, self.backends_dir, dirs_exist_ok=True)
        stub = self.backends_dir / "python" / runtime.python_backend_stub.name
        shutil.copy2(runtime.python_backend_stub, stub)

    def argv(self) -> list[str]:
        return [
            str(self.runtime.binary),
            f"--model-repository={self.model_repository.resolve()}",
            f"--backend-directory={self.backends_dir.resolve()}",
            f"--model-control-mode={self.model_control_mode}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--log-verbose=0",
            *self._tls_args(),
        ]

    def _tls_args(self) -> list[str]:
        tls = self.tls
        if tls is None:
            return []
        args = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={tls.cert_file.resolve()}",
            f"--grpc-server-key={tls.key_file.resolve()}",
        ]
        if tls.ca_file is not None:
            args += [f"--grpc-root-cert={tls.ca_file.resolve()}", "--grpc-use-ssl-mutual=true"]
        return args

    def env(self) -> dict[str, str]:
        """As pytriton's own launcher does: bundled libraries on LD_LIBRARY_PATH, the venv's
        bin first on PATH (the stub's embedded Python finds its packages from there)."""
        runtime = self.runtime
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
        }
        libs = [str(runtime.bundled_libs)]
        if runtime.base_python_lib is not None:
            libs.insert(0, str(runtime.base_python_lib))
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(runtime.venv / "bin"), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(runtime.venv)
        return env

    def health(self) -> Health:
        return http_health(f"{self.http_url}/v2/health/ready")
