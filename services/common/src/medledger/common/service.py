"""The common shape of a medledger service process, so each service only says what
differs: its servicers and which dependencies it owns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from pymongo import AsyncMongoClient

from medledger.common.config import ServiceSettings
from medledger.common.health import DependencyProbe
from medledger.common.interceptors import TokenVerifier
from medledger.common.mongo import MongoProbe
from medledger.common.policy import ServiceAccess
from medledger.common.vault import VaultTransit


@dataclass(frozen=True)
class Servicer:
    """A servicer instance, the generated ``add_..._to_server`` function, and who may call
    each method of its service (declared beside the servicer's class)."""

    implementation: object
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    access: ServiceAccess

    @property
    def descriptor(self) -> ServiceDescriptor:
        return self.access.service


@dataclass
class ServiceRuntime:
    """Implements :class:`medledger.common.server.Service` from parts.

    Dependencies given here are probed for health and closed on shutdown.
    """

    name: str
    settings: ServiceSettings
    servicers: Sequence[Servicer]
    mongo: AsyncMongoClient[dict[str, Any]] | None = None
    vault: VaultTransit | None = None
    extra_probes: Sequence[DependencyProbe] = field(default_factory=list)
    # Background work the service runs while serving (e.g. the ledger's sequencer).
    startup: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    shutdown: Sequence[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Verifies the tokens of every RPC the servicers' declarations do not make public; the
    # server refuses to start without one (tests give it theirs).
    verifier: TokenVerifier | None = None

    @property
    def access(self) -> list[ServiceAccess]:
        return [s.access for s in self.servicers]

    def add_to_server(self, server: grpc.aio.Server) -> list[str]:
        for servicer in self.servicers:
            servicer.add_to_server(servicer.implementation, server)
        return [s.descriptor.full_name for s in self.servicers]

    def probes(self) -> list[DependencyProbe]:
        probes: list[DependencyProbe] = []
        if self.mongo is not None:
            probes.append(MongoProbe(self.mongo))
        if self.vault is not None:
            probes.append(self.vault)
        return [*probes, *self.extra_probes]

    async def start(self) -> None:
        """Connections open lazily, so a dependency that is down at start-up only keeps
        health NOT_SERVING instead of crashing the process; startup hooks must not block on
        dependencies either."""
        for hook in self.startup:
            await hook()

    async def aclose(self) -> None:
        for hook in self.shutdown:
            await hook()
        if self.mongo is not None:
            await self.mongo.close()
        if self.vault is not None:
            self.vault.close()
