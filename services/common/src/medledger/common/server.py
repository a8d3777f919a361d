"""The one server bootstrap every medledger service runs.

``grpc.aio`` server with: tracing, RPC metrics, error mapping, authentication and request
decoding interceptors (in that order, outermost first), ``grpc.health.v1`` driven by
dependency probes, a Prometheus ``/metrics`` endpoint on ``MEDLEDGER_METRICS_PORT``,
reflection (v1 and v1alpha), message size limits, keepalive, TLS/mTLS when certificates
are set, and a graceful stop on SIGTERM/SIGINT that lets in-flight calls finish within the
grace period.

It fails closed: a service without a token verifier, or with a method of its services
that declares no policy, does not start (exit 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import start_http_server

from medledger.common.config import ConfigError, ServiceSettings
from medledger.common.health import (
    LIVENESS,
    NOT_SERVING,
    SERVING,
    DependencyProbe,
    HealthMonitor,
)
from medledger.common.interceptors import (
    AuthInterceptor,
    ErrorInterceptor,
    RequestDecodingInterceptor,
    TokenVerifier,
)
from medledger.common.policy import ServiceAccess, policies_by_path, undeclared_methods
from medledger.common.reflection import enable_reflection
from medledger.common.telemetry import configure_logging, server_interceptors, setup_telemetry

log = logging.getLogger("medledger.server")


class Service(Protocol):
    """What a service gives the bootstrap: its servicers, its dependencies, its lifecycle."""

    name: str
    settings: ServiceSettings

    def add_to_server(self, server: grpc.aio.Server) -> Sequence[str]:
        """Registers the servicers; returns their full gRPC service names."""
        ...

    def probes(self) -> Sequence[DependencyProbe]: ...

    @property
    def verifier(self) -> TokenVerifier | None:
        """Verifies bearer tokens; the server will not start without one."""
        ...

    @property
    def access(self) -> Sequence[ServiceAccess]:
        """Who may call each method of each service ``add_to_server`` registers."""
        ...

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...


def server_options(settings: ServiceSettings) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", settings.keepalive_time_seconds * 1000),
        ("grpc.keepalive_timeout_ms", settings.keepalive_timeout_seconds * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.so_reuseport", 0),
    ]


def server_credentials(settings: ServiceSettings) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    pair = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    if settings.tls_ca_file is None:
        return grpc.ssl_server_credentials([pair])
    return grpc.ssl_server_credentials(
        [pair],
        root_certificates=settings.tls_ca_file.read_bytes(),
        require_client_auth=True,
    )


class ServiceServer:
    """A running service: start it, read its port, stop it gracefully."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.settings = service.settings
        self._server: grpc.aio.Server | None = None
        self._health_server: grpc.aio.Server | None = None
        self._metrics_server: WSGIServer | None = None
        self._monitor: HealthMonitor | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self.port = 0

    @property
    def health(self) -> HealthMonitor:
        assert self._monitor is not None, "server not started"
        return self._monitor

    def _authenticator(self) -> AuthInterceptor:
        """The auth interceptor, or ConfigError naming why the service must not serve."""
        verifier = self.service.verifier
        if verifier is None:
            raise ConfigError(f"{self.service.name} has no token verifier; it serves no one")
        problems = undeclared_methods(self.service.access)
        if problems:
            raise ConfigError(
                "every method needs a declared policy (public, or what the token must hold): "
                + "; ".join(problems)
            )
        return AuthInterceptor(verifier, policies_by_path(self.service.access))

    async def start(self) -> int:
        """Starts serving; health stays NOT_SERVING until the first probe round passes."""
        settings = self.settings
        server = grpc.aio.server(
            interceptors=[
                *server_interceptors(),
                ErrorInterceptor(self.service.name),
                self._authenticator(),
                RequestDecodingInterceptor(),
            ],
            options=server_options(settings),
        )
        await self.service.start()
        names = list(self.service.add_to_server(server))
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ["", *names]:
            await health_servicer.set(name, NOT_SERVING)
        await health_servicer.set(LIVENESS, SERVING)
        enable_reflection([*names, health.SERVICE_NAME], server)
        credentials = server_credentials(settings)
        if credentials is None:
            self.port = server.add_insecure_port(settings.listen_address)
        else:
            self.port = server.add_secure_port(settings.listen_address, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.listen_address}")
        await server.start()
        self._server = server
        if settings.health_port:
            self._health_server = await self._start_health_port(health_servicer)
        if settings.metrics_port:
            # A thread of prometheus_client's: a scrape never waits on the event loop.
            self._metrics_server, _ = start_http_server(
                settings.metrics_port, addr=settings.grpc_host
            )
        self._monitor = HealthMonitor(
            health_servicer,
            names,
            self.service.probes(),
            interval_seconds=settings.health_interval_seconds,
            timeout_seconds=settings.dependency_timeout_seconds,
        )
        self._monitor_task = asyncio.create_task(self._monitor.run(), name="health-monitor")
        log.info("serving", extra={"address": settings.listen_address, "port": self.port})
        return self.port

    async def _start_health_port(self, health_servicer: Any) -> grpc.aio.Server:
        """Plaintext health-only listener for probes that cannot do mTLS."""
        health_server = grpc.aio.server(options=server_options(self.settings))
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        host = self.settings.listen_address.rsplit(":", 1)[0]
        if health_server.add_insecure_port(f"{host}:{self.settings.health_port}") == 0:
            raise OSError(f"cannot listen on health port {self.settings.health_port}")
        await health_server.start()
        return health_server

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, refuse new calls, let running calls finish for ``grace``
        seconds (the configured grace by default), then release dependencies."""
        if self._server is None:
            return
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        log.info("shutting down", extra={"grace_seconds": grace})
        if self._monitor is not None:
            await self._monitor.shutdown()
        if self._monitor_task is not None:
            self._monitor_task.cancel()
        await self._server.stop(grace)
        self._server = None
        if self._health_server is not None:
            await self._health_server.stop(0)
            self._health_server = None
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None
        await self.service.aclose()
        log.info("stopped")

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _serve_until_signalled(build: Callable[[], Service]) -> None:
    service = build()  # inside the loop: async clients bind to it
    logging.getLogger().setLevel(service.settings.log_level)
    server = ServiceServer(service)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    await stop.wait()
    await server.stop()


def run_service(name: str, build: Callable[[], Service]) -> None:
    """Entry point of a service process: telemetry, config, serve until SIGTERM.

    Telemetry comes first so the clients ``build`` creates are instrumented. A
    configuration mistake prints one message naming every bad variable and exits 2.
    """
    configure_logging(name)
    telemetry = setup_telemetry(name)
    try:
        asyncio.run(_serve_until_signalled(build))
    except ConfigError as exc:
        print(f"medledger-{name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        raise SystemExit(1) from None
    finally:
        telemetry.shutdown()
