"""``python -m bench.record [--resources N] [--seconds S]``

In one run, against one MongoDB-compatible server (secantusdb, fsync on commit, as the local
stack runs it), OpenBao, and identity with its ledger (the testkit platform, in this
process), the record service running as its own process (``python -m medledger.record``, as
deployed: callers' tokens checked against identity's JWKS, its own client token for
CheckAccess and the ledger, default ``RECORD_*`` settings):

(a) ``CreateResource`` (validation, encryption under the patient's data key, CheckAccess,
    the ledger's receipt) from 1, 8 and 32 concurrent clients, against raw single-document
    ``insert_one`` of the same documents (copies of stored sealed versions, into a
    collection without secondary indexes) from as many clients: creates/s, p50/p99, ratio.
    Target: at least 0.25x the raw inserts at 8 clients.
(b) ``GetResource`` (latest version of a random stored resource; its RECORD_READ ledgered
    before it answers) and ``SearchResources`` (one patient's Observations with one LOINC
    code) with ``--resources`` resources stored, from 1, 8 and 32 clients: p50/p99.
    Target: GetResource p99 < 50 ms at 8 clients.
(c) the record process's peak RSS: VmHWM of that process (/proc/<pid>/status), read after
    (a) and (b). Target: < 300 MiB with 100,000 resources and 32 clients.
(d) where a call's time goes (CheckAccess, Vault, Mongo, the ledger): the same calls from
    8 clients through the record's domain wired in this process with timed ports
    (``bench/record/timing.py``).
(e) where the machine's cores go: the CPU time each process (Mongo, Vault, the record
    process, this one with identity, the ledger and the clients) spent per call in (a) and
    (b), and the most calls per second the cores allow at that cost (``bench/cpu.py``),
    against what each target needs (a p99 under 50 ms from 8 clients needs 160 calls/s).

The stored resources are bulk-loaded through the record's storage layer with the real
Vault and Mongo; ``bench/record/loader.py`` says what the loader skips. Timings are
printed, never asserted: a target missed prints MISS and the run still succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias

import bson
import grpc
from pymongo import AsyncMongoClient
from rich.console import Console
from rich.table import Table

from bench import add_keep_state, bench_state
from bench.cpu import PLATFORM_PROCESS, CpuMeter, ceiling, per_call_ms, stack_meter
from bench.record import corpus, loader
from bench.record.timing import LEDGER_PARTS, PORTS, InstrumentedRecord, instrumented_record
from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.config import VaultSettings
from medledger.common.errors import MedledgerError
from medledger.common.interceptors import Principal
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import service_client_id
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import RECORD_PATIENT_KEK
from medledger.devstack.mongo import MongoServer, mongod_cache_size
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import SERVICE_PORTS, ServiceServer, StackEndpoints, service_env
from medledger.devstack.vault import DevVault
from medledger.record.adapters.identity_access import IdentityPatientDirectory
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.domain.peers import Requester
from medledger.record.runtime import SERVICE_SCOPES
from medledger.testkit.fhir_samples import LOINC
from medledger.testkit.platform import Platform, authed_channel, start_platform

ORGANIZATION: Final = "bench-hospital"
DATABASE: Final = "bench_record"
SCOPE: Final = "system/*.cruds"
TREAT: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
# Oplog room per stored resource: the load writes a few entries for each (its version,
# pointer, index and log documents), the measurements more.
OPLOG_ENTRIES_PER_RESOURCE: Final = 20
CLIENTS: Final = (1, 8, 32)
BREAKDOWN_CLIENTS: Final = 8
WARM_UP: Final = 8  # calls at once after the first, before each measured section
RAW_TEMPLATES: Final = 1000
MIB: Final = 1024 * 1024
# The targets.
CREATE_RATIO_TARGET: Final = 0.25
GET_P99_TARGET_MS: Final = 50.0
RSS_TARGET_MIB: Final = 300.0

# Wide enough for the tables when the output is a file or a pipe (rich's default is 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


@dataclass
class Run:
    """One closed-loop measurement: completed calls' latencies (s) and failures by code."""

    clients: int
    seconds: float
    latencies: list[float]
    errors: Counter[str] = field(default_factory=Counter)
    # CPU seconds each metered process spent during the run (empty when not metered).
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def calls(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    def ms(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def failures(self) -> str:
        return ", ".join(f"{code} x{n}" for code, n in sorted(self.errors.items())) or "-"

    def cpu_ms(self, process: str | None = None) -> float:
        """CPU milliseconds per completed call in ``process`` (None: all metered ones)."""
        return per_call_ms(self.cpu, len(self.latencies), process)


Operation = Callable[[int], Awaitable[object]]


async def closed_loop(
    clients: int, seconds: float, operation: Operation, meter: CpuMeter | None = None
) -> Run:
    """``clients`` loops calling ``operation`` for ``seconds`` (each finishes its last call);
    with a ``meter``, the CPU time its processes spent meanwhile."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    counter = iter(range(10**12))
    stop = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                await operation(next(counter))
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1
            except MedledgerError as error:
                errors[error.reason or type(error).__name__] += 1
            else:
                latencies.append(time.perf_counter() - started)

    before = meter.read() if meter is not None else {}
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    cpu = CpuMeter.spent(before, meter.read()) if meter is not None else {}
    return Run(clients, elapsed, latencies, errors, cpu)


async def warm_up(operation: Operation) -> None:
    """Connections, caches and code paths, unmeasured (the first call must succeed)."""
    await operation(0)
    await asyncio.gather(*(operation(n) for n in range(WARM_UP)), return_exceptions=True)


class BenchRecord(ServiceServer):
    """The record service as deployed: its own process, on the platform's identity and
    ledger, with its own database."""

    def __init__(
        self, endpoints: StackEndpoints, log_file: Path, database: str, platform: Platform
    ) -> None:
        super().__init__("record", endpoints=endpoints, log_file=log_file, die_with_parent=True)
        self.database = database
        self.platform = platform

    def env(self) -> dict[str, str]:
        env = service_env("record", self.endpoints)
        env |= {
            "MEDLEDGER_MONGODB_DATABASE": self.database,
            "MEDLEDGER_IDENTITY_ADDR": self.platform.identity_address,
            "MEDLEDGER_LEDGER_ADDR": self.platform.ledger_address,
        }
        return env


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a process, in KiB."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            figures[name] = int(value.split()[0])
    return figures


def principal(token: str) -> Principal:
    """The caller the record's auth interceptor makes of ``token`` (already verified by
    the record process for the same token)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return Principal(
        subject=claims["sub"],
        organization=claims.get("org", ""),
        client_id=claims.get("client_id", ""),
        scopes=frozenset(claims.get("scope", "").split()),
        purposes=frozenset(claims.get("purposes", [])),
        claims=claims,
    )


# -- (a) creates against raw inserts --------------------------------------------------------


async def raw_inserts(
    uri: str, database: str, skip: int, seconds: float, meter: CpuMeter
) -> tuple[dict[int, Run], float]:
    """Single-document inserts of copies of stored sealed versions; returns the runs and
    the copies' mean BSON size."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
    templates = (
        await client[database]["record_versions"].find({}, skip=skip, limit=RAW_TEMPLATES).to_list()
    )
    collection = client["bench_raw"]["record_versions"]
    await collection.drop()

    async def insert(n: int) -> None:
        document = dict(templates[n % len(templates)])
        document["_id"] = uuid.uuid4().hex
        await collection.insert_one(document)

    runs = {}
    await warm_up(insert)
    for clients in CLIENTS:
        runs[clients] = await closed_loop(clients, seconds, insert, meter)
    await client.close()
    return runs, statistics.mean(len(bson.encode(doc)) for doc in templates)


Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"  # in the .pyi only
Stubs = Callable[[], AbstractAsyncContextManager[Stub]]


async def measure(
    stubs: Stubs, seconds: float, make: Callable[[Stub], Operation], meter: CpuMeter
) -> dict[int, Run]:
    """A warm-up, then a run from each number of clients, each on a channel with a fresh
    token (the platform's tokens live five minutes)."""
    async with stubs() as stub:
        await warm_up(make(stub))
    runs = {}
    for clients in CLIENTS:
        async with stubs() as stub:
            runs[clients] = await closed_loop(clients, seconds, make(stub), meter)
    return runs


async def creates(
    stubs: Stubs, patients: list[str], seconds: float, meter: CpuMeter
) -> dict[int, Run]:
    rng = random.Random(7)

    def operation(stub: Stub) -> Operation:
        async def create(_n: int) -> None:
            patient_id = rng.choice(patients)
            document = corpus.clinical(rng, corpus.clinical_type(rng), patient_id)
            await stub.CreateResource(
                record_pb2.CreateResourceRequest(
                    resource_json=corpus.without_id(document), purpose=TREAT
                )
            )

        return create

    return await measure(stubs, seconds, operation, meter)


# -- (b) reads --------------------------------------------------------------------------------


@dataclass
class ReadOperations:
    """GetResource and SearchResources on random stored resources and patients."""

    loaded: loader.Loaded
    rng: random.Random = field(default_factory=lambda: random.Random(9))
    searches: int = 0
    found: int = 0  # resources the searches returned

    def target(self) -> loader.Stored:
        return self.rng.choice(self.loaded.resources)

    def query(self) -> tuple[str, str]:
        """A patient and an Observation code (``system|code``)."""
        code = self.rng.choice(corpus.OBSERVATION_CODES)[0]
        return self.rng.choice(self.loaded.patients), f"{LOINC}|{code}"

    def get(self, stub: Stub) -> Operation:
        async def get(_n: int) -> None:
            stored = self.target()
            await stub.GetResource(
                record_pb2.GetResourceRequest(
                    resource_type=stored.resource_type, id=stored.resource_id, purpose=TREAT
                )
            )

        return get

    def search(self, stub: Stub) -> Operation:
        async def search(_n: int) -> None:
            patient_id, code = self.query()
            reply = await stub.SearchResources(
                record_pb2.SearchResourcesRequest(
                    resource_type="Observation",
                    params=[
                        record_pb2.SearchParam(name="patient", value=patient_id),
                        record_pb2.SearchParam(name="code", value=code),
                    ],
                    purpose=TREAT,
                )
            )
            self.searches += 1
            self.found += len(reply.resources)

        return search


async def reads(
    stubs: Stubs, operations: ReadOperations, seconds: float, meter: CpuMeter
) -> tuple[dict[str, dict[int, Run]], float]:
    """The runs of each call, and the mean number of resources a search found."""
    gets = await measure(stubs, seconds, operations.get, meter)
    searches = await measure(stubs, seconds, operations.search, meter)
    found = operations.found / max(1, operations.searches)
    return {"GetResource": gets, "SearchResources": searches}, found


# -- (d) where the time goes ---------------------------------------------------------------


@dataclass
class Breakdown:
    run: Run
    per_call_ms: dict[str, float]
    per_call: dict[str, float]  # round trips (Vault calls, Mongo commands) per call


async def breakdown(
    record: InstrumentedRecord, requester: Requester, operations: ReadOperations, seconds: float
) -> dict[str, Breakdown]:
    service = record.service
    rng = random.Random(11)

    async def create(_n: int) -> None:
        patient_id = rng.choice(operations.loaded.patients)
        document = corpus.clinical(rng, corpus.clinical_type(rng), patient_id)
        await service.create(requester, corpus.without_id(document))

    async def get(_n: int) -> None:
        stored = operations.target()
        await service.get(requester, stored.resource_type, stored.resource_id)

    async def search(_n: int) -> None:
        patient_id, code = operations.query()
        await service.search(
            requester,
            "Observation",
            [("patient", patient_id), ("code", code)],
            page_size=0,
            page_token="",
        )

    results = {}
    for name, operation in (
        ("CreateResource", create),
        ("GetResource", get),
        ("SearchResources", search),
    ):
        await warm_up(operation)
        record.times.reset()
        run = await closed_loop(BREAKDOWN_CLIENTS, seconds, operation)
        calls = max(1, run.calls)
        per_call_ms = {port: s * 1000 / calls for port, s in record.times.seconds.items()}
        per_call = {port: n / calls for port, n in record.times.calls.items()}
        results[name] = Breakdown(run, per_call_ms, per_call)
    return results


# -- the report ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def report_creates(raw: dict[int, Run], api: dict[int, Run], document_bytes: float) -> None:
    table = Table(
        title=f"(a) CreateResource vs raw insert_one of the stored documents "
        f"(~{document_bytes:,.0f} B each)"
    )
    for column in (
        "clients",
        "raw docs/s",
        "raw p50 ms",
        "raw p99 ms",
        "creates/s",
        "p50 ms",
        "p99 ms",
        "ratio",
        "failed",
    ):
        table.add_column(column, justify="right", no_wrap=column == "call")
    for clients in CLIENTS:
        r, a = raw[clients], api[clients]
        table.add_row(
            str(clients),
            f"{r.rate:,.0f}",
            f"{r.ms(0.5):.2f}",
            f"{r.ms(0.99):.2f}",
            f"{a.rate:,.1f}",
            f"{a.ms(0.5):.1f}",
            f"{a.ms(0.99):.1f}",
            f"{a.rate / r.rate:.3f}",
            a.failures(),
        )
    console.print(table)


def report_reads(results: dict[str, dict[int, Run]], stored: int, found: float) -> None:
    table = Table(title=f"(b) reads with {stored:,} resources stored (each read ledgered)")
    for column in ("call", "clients", "calls/s", "p50 ms", "p99 ms", "failed"):
        table.add_column(column, justify="right", no_wrap=column == "call")
    for name, runs in results.items():
        for clients, run in runs.items():
            table.add_row(
                name,
                str(clients),
                f"{run.rate:,.1f}",
                f"{run.ms(0.5):.1f}",
                f"{run.ms(0.99):.1f}",
                run.failures(),
            )
    console.print(table)
    console.print(f"    SearchResources found {found:.1f} resources per search on average")


def round_trips(per_call: dict[str, float], port: str) -> str:
    """``own + in the ledger append`` per call (and failed Mongo commands: retries)."""
    text = f"{per_call.get(port, 0.0):.1f} + {per_call.get(f'ledger {port}', 0.0):.1f}"
    failed = per_call.get(f"{port} failed", 0.0)
    return text + (f" ({failed:.1f} failed)" if failed else "")


def report_breakdown(results: dict[str, Breakdown]) -> None:
    table = Table(
        title=f"(d) mean ms per call at {BREAKDOWN_CLIENTS} clients, record domain in-process "
        "with timed ports"
    )
    columns = (
        "call",
        "calls/s",
        "latency",
        *PORTS,
        *LEDGER_PARTS,
        "other",
        "Mongo cmds",
        "Vault calls",
        "failed",
    )
    for column in columns:
        table.add_column(column, justify="right", no_wrap=column == "call")
    for name, result in results.items():
        run, ms = result.run, result.per_call_ms
        mean = statistics.mean(run.latencies) * 1000 if run.latencies else float("nan")
        spent = sum(ms.get(port, 0.0) for port in PORTS)
        table.add_row(
            name,
            f"{run.rate:,.1f}",
            f"{mean:.1f}",
            *(f"{ms.get(port, 0.0):.1f}" for port in PORTS),
            *(f"{ms.get(part, 0.0):.1f}" for part in LEDGER_PARTS),
            f"{mean - spent:.1f}",
            round_trips(result.per_call, "Mongo"),
            round_trips(result.per_call, "Vault"),
            run.failures(),
        )
    console.print(table)
    console.print(
        "    ledger = the whole patient-log append (its RPC, Vault and Mongo parts shown "
        "after it); Vault and Mongo = the rest of the call's; other = validation, JSON, "
        "crypto, event loop; round trips: the call's own + its ledger append's"
    )


def report_cpu(results: dict[str, dict[int, Run]]) -> None:
    processes = next(iter(next(iter(results.values())).values())).cpu
    table = Table(
        title=f"(e) CPU-ms per call by process, and the most calls/s {os.cpu_count()} cores "
        "allow at that cost"
    )
    for column in ("call", "clients", *processes, "total", "cores busy", "calls/s", "ceiling"):
        table.add_column(column, justify="right", no_wrap=column == "call")
    cores = os.cpu_count() or 1
    for name, runs in results.items():
        for clients, run in runs.items():
            busy = sum(run.cpu.values()) / run.seconds / cores
            table.add_row(
                name,
                str(clients),
                *(f"{run.cpu_ms(process):.1f}" for process in processes),
                f"{run.cpu_ms():.1f}",
                f"{busy:.0%}",
                f"{run.rate:,.1f}",
                f"{ceiling(run.cpu_ms()):,.0f}",
            )
    console.print(table)
    console.print(
        f"    {PLATFORM_PROCESS} = this process: identity and the ledger (the testkit "
        "platform) and the clients; ceiling = cores x 1000 / total CPU-ms per call"
    )


# -- the run ---------------------------------------------------------------------------------


async def main(workdir: Path, resources: int, seconds: float) -> None:
    mongo = MongoServer(
        port=free_port(),
        storage_path=workdir / "mongo",
        log_file=workdir / "mongo.log",
        die_with_parent=True,
        # Past its entry cap (100,000 by default), the server prunes its oplog every 1,000
        # writes, inside the write (profiles of a large load showed it). mongod sizes its
        # oplog by disk (5% of it); this gives the run room for everything it writes.
        oplog_max_entries=max(OPLOG_ENTRIES_PER_RESOURCE * resources, 100_000),
        # Its default cache (1 GiB) holds about 60,000 loaded resources; past that, every
        # call evicts pages and the load crawled. mongod's default is half the memory.
        cache_size=mongod_cache_size(),
    )
    vault = DevVault(
        port=free_port(with_next=True), log_file=workdir / "vault.log", die_with_parent=True
    )
    mongo.start()
    vault.start()
    vault.provision()
    console.print(
        f"# record benchmark — cores: {os.cpu_count()}, resources: {resources:,}, "
        f"{seconds:g} s per measurement, state: {workdir}"
    )
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    endpoints = StackEndpoints(mongo.uri, vault.addr, vault.service_tokens, "", ports)
    platform, stop_platform = await start_platform(
        mongo.uri,
        identity_vault=VaultSettings(addr=vault.addr, token=vault.token_for("identity")),
        ledger_vault=VaultSettings(addr=vault.addr, token=vault.token_for("ledger")),
    )
    token = await platform.token(SCOPE, ORGANIZATION, [TREAT])
    record = BenchRecord(endpoints, workdir / "record.log", DATABASE, platform)
    await asyncio.to_thread(record.start)  # this loop serves identity meanwhile
    record_pid = record.pid
    assert record_pid is not None
    record_vault = VaultSettings(addr=vault.addr, token=vault.token_for("record"))
    transit = VaultTransit(record_vault)

    @asynccontextmanager
    async def stubs() -> AsyncIterator[Stub]:
        fresh = await platform.token(SCOPE, ORGANIZATION, [TREAT])
        async with authed_channel(record.address, fresh) as channel:
            yield record_pb2_grpc.RecordServiceStub(channel)

    try:
        async with stubs() as stub:
            first = await stub.CreateResource(
                record_pb2.CreateResourceRequest(
                    resource_json=corpus.without_id(corpus.patient(random.Random(1))),
                    purpose=TREAT,
                )
            )
            receipt = first.resource.receipt.SerializeToString()
        console.print(f"(load) {resources:,} resources through the record's storage layer")
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
        # The record's own client token and identity's patient directory, as it uses them.
        tokens = ServiceTokenSource(
            transit,
            RecordConfig().client_key,
            service_client_id("record"),
            platform.identity_address,
            RecordSettings(),
            scope=SERVICE_SCOPES,
        )
        directory = IdentityPatientDirectory(platform.identity_address, RecordSettings(), tokens)
        # The record's patient log, for the patients' key rows and scan secrets (the loader
        # appends nothing to the ledger).
        ledger = LedgerClient(platform.ledger_address, RecordSettings(), token=tokens)
        patient_log = PatientLog(
            ledger,
            SubjectHasher(transit),
            MongoPatientLeafStore(client, DATABASE, "record"),
            transit,
            RECORD_PATIENT_KEK,
        )
        try:
            loaded = await loader.load(
                client,
                DATABASE,
                VaultPatientKeys(transit),
                directory,
                patient_log,
                count=resources,
                holder=ORGANIZATION,
                receipt=receipt,
            )
            # The load leaves gigabytes of the server's cache dirty: fsync writes a
            # checkpoint before anything is measured, as one settles mongod. (It did not
            # speed up the raw-insert baseline at 100,000 resources: table (e) shows each
            # insert costing secantusdb about 15 CPU-ms there, against about 2 at 2,000 or
            # 20,000, so read the create ratio against that.)
            settle = time.perf_counter()
            await client.admin.command("fsync")
            console.print(
                f"    checkpoint after the load (fsync): {time.perf_counter() - settle:.0f} s"
            )
        finally:
            await directory.aclose()
            await ledger.aclose()
            await tokens.aclose()
            await client.close()
        console.print(
            f"    {len(loaded.patients):,} patients, {len(loaded.resources):,} clinical "
            f"resources in {loaded.seconds:.0f} s ({resources / loaded.seconds:.0f}/s); "
            + ", ".join(f"{n:,} {c}" for c, n in sorted(loaded.documents.items()))
        )
        console.print(
            "    skipped by the loader: CheckAccess, ledger appends (each version's receipt "
            "is a copy of one real receipt), idempotency records, RecordStore's per-write "
            "round trips (documents written with insert_many)"
        )
        after_load = memory_kib(record_pid)

        console.print("(a) raw inserts, then CreateResource")
        assert mongo.pid is not None
        assert vault.pid is not None
        meter = stack_meter(mongo=mongo.pid, vault=vault.pid, record=record_pid)
        raw, document_bytes = await raw_inserts(
            mongo.uri, DATABASE, len(loaded.patients) + 1, seconds, meter
        )
        api = await creates(stubs, loaded.patients, seconds, meter)
        console.print("(b) GetResource and SearchResources")
        operations = ReadOperations(loaded)
        read_runs, found = await reads(stubs, operations, seconds, meter)
        peak = memory_kib(record_pid)
        console.print(f"(d) the same calls in-process, {BREAKDOWN_CLIENTS} clients, timed ports")
        instrumented = instrumented_record(
            mongo.uri, DATABASE, record_vault, platform.identity_address, platform.ledger_address
        )
        try:
            split = await breakdown(
                instrumented, Requester(principal(token), TREAT), operations, seconds
            )
        finally:
            await instrumented.close()
    finally:
        transit.close()
        record.stop()
        await stop_platform()
        mongo.stop()
        vault.stop()

    console.print()
    report_creates(raw, api, document_bytes)
    report_reads(read_runs, resources, found)
    report_breakdown(split)
    report_cpu({"raw insert_one": raw, "CreateResource": api, **read_runs})
    console.print(
        f"(c) record process (pid {record_pid}, its own process) VmHWM {peak['VmHWM'] / 1024:.0f}"
        f" MiB, VmRSS {peak['VmRSS'] / 1024:.0f} MiB after (a) and (b); after the load "
        f"VmHWM {after_load['VmHWM'] / 1024:.0f} MiB"
    )
    ratio = api[8].rate / raw[8].rate
    get_p99 = read_runs["GetResource"][8].ms(0.99)
    rss = peak["VmHWM"] / 1024
    console.print(
        f"target create at 8 clients vs raw single-document inserts: {ratio:.3f}x "
        f"(target >= {CREATE_RATIO_TARGET}x) {verdict(ratio >= CREATE_RATIO_TARGET)}"
    )
    console.print(
        f"target GetResource p99 at 8 clients, ledgered read included: {get_p99:.1f} ms "
        f"(target < {GET_P99_TARGET_MS:.0f} ms) {verdict(get_p99 < GET_P99_TARGET_MS)}"
    )
    get_cpu = read_runs["GetResource"][8].cpu_ms()
    console.print(
        f"    at 8 clients, a p99 under {GET_P99_TARGET_MS:.0f} ms needs at least "
        f"{8 * 1000 / GET_P99_TARGET_MS:.0f} GetResource/s (8 calls in flight, each under "
        f"{GET_P99_TARGET_MS:.0f} ms); at the {get_cpu:.1f} CPU-ms each took here, this "
        f"machine's {os.cpu_count()} cores allow at most {ceiling(get_cpu):.0f}/s"
    )
    create_cpu, raw_cpu = api[8].cpu_ms(), raw[8].cpu_ms()
    console.print(
        f"    at the CPU-ms each took here at 8 clients ({create_cpu:.1f} a create, "
        f"{raw_cpu:.1f} a raw insert), this machine allows at most {ceiling(create_cpu):.0f} "
        f"creates/s and {ceiling(raw_cpu):.0f} raw inserts/s: "
        f"{ceiling(create_cpu) / ceiling(raw_cpu):.3f}x"
    )
    console.print(
        f"target record process peak RSS with {resources:,} resources and 32 clients: "
        f"{rss:.0f} MiB (target < {RSS_TARGET_MIB:.0f} MiB) {verdict(rss < RSS_TARGET_MIB)}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.record", description=__doc__)
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    add_keep_state(parser)
    args = parser.parse_args()
    if args.resources < 2 * corpus.PER_PATIENT:
        parser.error(f"--resources must be at least {2 * corpus.PER_PATIENT}")
    with bench_state("bench-record-", keep=args.keep_state) as workdir:
        asyncio.run(main(workdir, args.resources, args.seconds))
