"""Where a record call's time goes: the record service's domain wired in the benchmark's
process as ``medledger.record.runtime`` wires it (same adapters, same settings, the same
database, Vault, identity and ledger as the record process), with each dependency timed:

- ``CheckAccess``: the ``AccessChecks`` port (identity's CheckAccess over gRPC);
- ``ledger``: the ``RecordLedger`` port, the whole patient-log append: the patient's
  pseudonym, its leaf-index key (a Vault decrypt), two leaf-index writes to Mongo, and the
  ledger's durable ``Append`` (``ledger RPC``);
- ``Vault``: every transit/KV call of the service's ``VaultTransit``;
- ``Mongo``: every command of its Mongo client (PyMongo's command monitoring: from send
  to reply).

Vault and Mongo time spent inside a ledger append is reported with the ledger (``ledger
Vault``, ``ledger Mongo``) and not again under Vault and Mongo, so the columns add up; the
rest of a call (validation, canonical JSON, AES-GCM, HMACs, waiting for the event loop) is
``other``. Each figure is the mean per call, in milliseconds. The calls go straight to
``ResourceService`` (no gRPC server, token check or message conversion in front), on the
benchmark's event loop, which also serves identity and the ledger.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeVar

import hvac
from pymongo import AsyncMongoClient, monitoring

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.config import VaultSettings
from medledger.common.key_cache import DataKeyCache
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import service_client_id
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import RECORD_PATIENT_KEK
from medledger.record.adapters.identity_access import (
    IdentityAccessChecks,
    IdentityPatientDirectory,
)
from medledger.record.adapters.ledger_events import PatientLogLedger
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.domain.peers import AccessChecks, AccessQuery, AccessVerdict, RecordEvent
from medledger.record.domain.peers import RecordLedger as RecordLedgerPort
from medledger.record.domain.records import EncryptedRecords
from medledger.record.domain.resources import ResourceService
from medledger.record.runtime import SERVICE_SCOPES

T = TypeVar("T")
PORTS: Final = ("CheckAccess", "Vault", "Mongo", "ledger")
LEDGER_PARTS: Final = ("ledger RPC", "ledger Vault", "ledger Mongo")
_in_ledger: ContextVar[bool] = ContextVar("in_ledger", default=False)


@dataclass
class PortTimes:
    """Seconds spent in each dependency, summed over calls."""

    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    calls: Counter[str] = field(default_factory=Counter)

    def add(self, port: str, seconds: float) -> None:
        if _in_ledger.get() and port in ("Vault", "Mongo"):
            port = f"ledger {port}"
        self.seconds[port] += seconds
        self.calls[port] += 1

    @contextmanager
    def timing(self, port: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(port, time.perf_counter() - started)

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


class TimedVault(VaultTransit):
    def __init__(self, settings: VaultSettings, times: PortTimes) -> None:
        super().__init__(settings)
        self._times = times

    async def _run(self, name: str, operation: Callable[[hvac.Client], T]) -> T:
        # Every public call goes through here (and waits here for the client's lock).
        with self._times.timing("Vault"):
            return await super()._run(name, operation)


class MongoTimes(monitoring.CommandListener):
    def __init__(self, times: PortTimes) -> None:
        self._times = times

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._times.add("Mongo", event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._times.add("Mongo", event.duration_micros / 1e6)
        self._times.calls["Mongo failed"] += 1


class TimedLedgerClient(LedgerClient):
    def __init__(self, times: PortTimes, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._times = times

    async def append_entry(
        self, entry: ledger_pb2.LedgerEntry, *, idempotency_key: str = "", timeout: float = 10.0
    ) -> ledger_pb2.Receipt:
        with self._times.timing("ledger RPC"):
            return await super().append_entry(
                entry, idempotency_key=idempotency_key, timeout=timeout
            )


@dataclass
class TimedAccess:
    inner: AccessChecks
    times: PortTimes

    async def check(self, query: AccessQuery) -> AccessVerdict:
        with self.times.timing("CheckAccess"):
            return await self.inner.check(query)


@dataclass
class TimedLedger:
    inner: RecordLedgerPort
    times: PortTimes

    async def append(
        self, patient_id: str, event: RecordEvent, *, idempotency_key: str = ""
    ) -> bytes:
        inside = _in_ledger.set(True)
        try:
            with self.times.timing("ledger"):
                return await self.inner.append(patient_id, event, idempotency_key=idempotency_key)
        finally:
            _in_ledger.reset(inside)

    async def append_many(self, events: Sequence[tuple[str, RecordEvent, str]]) -> list[bytes]:
        inside = _in_ledger.set(True)
        try:
            with self.times.timing("ledger"):
                return await self.inner.append_many(events)
        finally:
            _in_ledger.reset(inside)

    async def new_scan_secret(self, patient_id: str) -> bytes:
        return await self.inner.new_scan_secret(patient_id)


@dataclass
class InstrumentedRecord:
    service: ResourceService
    times: PortTimes
    close: Callable[[], Awaitable[None]]


def instrumented_record(
    mongo_uri: str,
    database: str,
    vault: VaultSettings,
    identity_addr: str,
    ledger_addr: str,
) -> InstrumentedRecord:
    """``record_runtime``'s wiring (default ``RECORD_*`` settings), each port timed."""
    settings, config = RecordSettings(), RecordConfig()
    times = PortTimes()
    # As create_mongo_client makes it, with the command listener.
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri,
        appname="bench-record",
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        connectTimeoutMS=5000,
        retryWrites=True,
        event_listeners=[MongoTimes(times)],
    )
    transit = TimedVault(vault, times)
    tokens = ServiceTokenSource(
        transit,
        config.client_key,
        service_client_id("record"),
        identity_addr,
        settings,
        scope=SERVICE_SCOPES,
        audience=settings.token_audience,
    )
    records = EncryptedRecords(
        RecordStore(mongo, database),
        VaultPatientKeys(transit),
        cache=DataKeyCache(
            max_keys=config.key_cache_size, ttl_seconds=config.key_cache_ttl_seconds
        ),
        pending_timeout=timedelta(seconds=config.pending_timeout_seconds),
    )
    ledger = TimedLedgerClient(times, ledger_addr, settings, token=tokens)
    leaves = MongoPatientLeafStore(mongo, database, "record")
    patient_log = PatientLog(ledger, SubjectHasher(transit), leaves, transit, RECORD_PATIENT_KEK)
    access = IdentityAccessChecks(
        identity_addr, settings, tokens, timeout=config.access_timeout_seconds
    )
    directory = IdentityPatientDirectory(
        identity_addr, settings, tokens, timeout=config.access_timeout_seconds
    )
    service = ResourceService(
        records,
        TimedAccess(access, times),
        TimedLedger(PatientLogLedger(patient_log, timeout=config.ledger_timeout_seconds), times),
        directory=directory,
    )

    async def close() -> None:
        await access.aclose()
        await directory.aclose()
        await ledger.aclose()
        await tokens.aclose()
        await mongo.close()
        transit.close()

    return InstrumentedRecord(service, times, close)
