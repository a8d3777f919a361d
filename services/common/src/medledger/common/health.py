"""Health that means something: SERVING only while every dependency answers.

A monitor task probes the service's dependencies (Mongo, Vault, Triton, …) every few
seconds and flips ``grpc.health.v1`` between SERVING and NOT_SERVING, for the overall
service ("") and for each of the service's gRPC services, so Kubernetes stops routing
to a pod whose database is gone and routes to it again once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, Protocol

from grpc_health.v1 import health_pb2

from medledger.common.errors import MedledgerError

log = logging.getLogger("medledger.health")

# Health service name that reports only "the process is alive and not draining", for
# liveness probes: a database outage must take a pod out of rotation, not restart it.
LIVENESS = "liveness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class DependencyProbe(Protocol):
    """A dependency the service cannot work without; ``check`` raises when it is down."""

    name: str

    async def check(self) -> None: ...


class HealthMonitor:
    def __init__(
        self,
        servicer: Any,  # grpc_health.v1.health.aio.HealthServicer (untyped)
        service_names: Sequence[str],
        probes: Sequence[DependencyProbe],
        *,
        interval_seconds: float,
        timeout_seconds: float,
    ) -> None:
        self._servicer = servicer
        self._names = ["", *service_names]
        self._probes = list(probes)
        self._interval = interval_seconds
        self._timeout = timeout_seconds
        self._serving: bool | None = None
        self._down: list[str] = []
        self._stopping = False

    @property
    def serving(self) -> bool:
        return bool(self._serving)

    @property
    def unavailable_dependencies(self) -> list[str]:
        return list(self._down)

    async def _probe(self, probe: DependencyProbe) -> bool:
        try:
            await asyncio.wait_for(probe.check(), self._timeout)
        except (TimeoutError, MedledgerError, OSError, ConnectionError):
            return False
        except asyncio.CancelledError:
            # Only this monitor being cancelled (shutdown) ends it. A driver may cancel its
            # own pending work (a pool cleared when its server went away) and let that
            # CancelledError out: had it ended the monitor, health would stay NOT_SERVING
            # for good after the dependency came back.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.debug("probe cancelled itself", extra={"dependency": probe.name})
            return False
        except Exception:  # a driver's own error type: still "down", not a crash
            log.debug("probe raised", extra={"dependency": probe.name}, exc_info=True)
            return False
        return True

    async def _publish(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in self._names:
            await self._servicer.set(name, status)

    async def evaluate(self) -> bool:
        """Probes every dependency once and publishes the result; returns SERVING or not."""
        results = await asyncio.gather(*(self._probe(p) for p in self._probes))
        down = [p.name for p, ok in zip(self._probes, results, strict=True) if not ok]
        serving = not down and not self._stopping
        if serving != self._serving or down != self._down:
            log.log(
                logging.INFO if serving else logging.WARNING,
                "health changed",
                extra={"serving": serving, "unavailable": down},
            )
        self._down = down
        if self._stopping:
            return False
        if serving != self._serving:
            self._serving = serving
            await self._publish(serving)
        return serving

    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.evaluate()
            except Exception:  # never end the monitor: health would freeze where it is
                log.exception("health evaluation failed")
            await asyncio.sleep(self._interval)

    async def shutdown(self) -> None:
        """NOT_SERVING for good: the server is draining."""
        self._stopping = True
        self._serving = False
        await self._servicer.enter_graceful_shutdown()
