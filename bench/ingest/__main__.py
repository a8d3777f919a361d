"""``python -m bench.ingest [--rows N] [--messages M] [--patients P] [--seconds S] [--per-file F]``

In one run, against one MongoDB-compatible server (secantusdb, fsync on commit, as the local
stack runs it), OpenBao, and identity with its ledger (the testkit platform, in this
process), the record service running as its own process (``python -m medledger.record``, as
deployed, default ``RECORD_*`` settings):

(a) the baseline: ``CreateResource`` of a laboratory Observation (the very JSON a CSV row
    becomes), one call at a time from 1 client, and from 8 clients at once, for ``--seconds``
    each: resources/s, every one acknowledged with its receipt;
(b) ``IngestCsvLabResultsStream`` of a file of ``--rows`` valid rows over ``--patients``
    patients (Patient ids), from 1 client: rows/s written, each with its receipt (chunks of
    500 rows, one ledger step each);
(c) ``IngestHl7V2`` of ``--messages`` ORU^R01 messages (one OBR, five NM OBX: five
    Observations and a DiagnosticReport each), one at a time from 1 client: messages/s and
    resources/s;
(d) ``IngestHl7V2Batch`` of as many other such messages, in HL7 batch files (FHS/BHS ...
    BTS/FTS) of ``--per-file`` messages, one file at a time from 1 client, as a laboratory
    sends a day's results: each message still atomic and idempotent on its own, many in one
    ledger step.

Each bulk path's resources/s against the baseline's from 1 client is the ratio the issue's
target is about (at least 5x faster per resource than single creates: PASS/MISS); the ratio
against 8 clients is printed too. Every written resource's receipt is counted (one for each,
all of a chunk or message on one checkpoint). MongoDB operations per resource (the server's
opcounters, when it reports them) and the CPU time each process spent per resource
(Mongo, Vault, the record process, this one) say where the time goes. Timings are printed, never
asserted: a missed target prints MISS and the run still succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

from pymongo import AsyncMongoClient
from rich.console import Console
from rich.table import Table

from bench import add_keep_state, bench_state
from bench.cpu import PLATFORM_PROCESS, CpuMeter, per_call_ms, stack_meter
from bench.record.__main__ import (
    WARM_UP,
    BenchRecord,
    Run,
    closed_loop,
    verdict,
    warm_up,
)
from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.config import VaultSettings
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import SERVICE_PORTS, StackEndpoints
from medledger.devstack.vault import DevVault
from medledger.record.domain.csv_labs import LabRow, observation
from medledger.testkit.platform import authed_channel, start_platform

ORGANIZATION: Final = "bench-hospital"
DATABASE: Final = "bench_ingest"
SCOPE: Final = "system/*.cruds"
TREAT: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
TARGET: Final = 5.0
CLIENTS: Final = (1, 8)
STAMP: Final = "20240301083000+0000"
WHEN: Final = "2024-03-01T08:30:00Z"
# (LOINC code, UCUM unit, typical value) of the results the file and messages carry.
RESULTS: Final = (
    ("2345-7", "mmol/L", 5.4),
    ("718-7", "g/dL", 13.5),
    ("2160-0", "umol/L", 80.0),
    ("4548-4", "%", 6.1),
    ("2093-3", "mmol/L", 4.8),
)
PIECE_BYTES: Final = 256 * 1024

console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"  # in the .pyi only


@dataclass(frozen=True)
class Caller:
    """A stub on a channel with a fresh token, and that token as call metadata (the
    testkit's channel adds it to unary-request calls only, not to the CSV stream)."""

    stub: Stub
    metadata: tuple[tuple[str, str], ...]


Callers = Callable[[], AbstractAsyncContextManager[Caller]]


@dataclass(frozen=True)
class Patient:
    patient_id: str
    mrn: str


@dataclass(frozen=True)
class Bulk:
    """One bulk load: what it wrote, in how long, and its receipts' checkpoints."""

    name: str
    units: int  # rows or messages
    resources: int
    seconds: float
    checkpoints: int  # distinct checkpoints among the receipts (one per ledger step)
    receipts: int
    mongo_ops: float | None  # per resource
    cpu: dict[str, float]  # CPU seconds each process spent on it

    def cpu_ms(self, process: str | None = None) -> float:
        """CPU milliseconds per resource in ``process`` (None: all metered ones)."""
        return per_call_ms(self.cpu, self.resources, process)

    @property
    def rate(self) -> float:
        return self.resources / self.seconds


# -- inputs -----------------------------------------------------------------------------------


def lab_row(rng: random.Random, patient: Patient, row: int) -> LabRow:
    code, unit, typical = rng.choice(RESULTS)
    value = round(typical * rng.uniform(0.7, 1.3), 2)
    return LabRow(row, patient.patient_id, code, value, "", unit, WHEN)


def csv_file(rng: random.Random, patients: list[Patient], rows: int) -> bytes:
    lines = ["patient_id,loinc,value,unit,effective"]
    for n in range(1, rows + 1):
        row = lab_row(rng, rng.choice(patients), n)
        lines.append(f"{row.patient},{row.code},{row.value},{row.unit},{row.effective}")
    return ("\r\n".join(lines) + "\r\n").encode()


def adt(patient: Patient, control: str) -> str:
    return "\r".join(
        [
            f"MSH|^~\\&|ADT1|HOSP-A|MEDLEDGER|ML|{STAMP}||ADT^A01^ADT_A01|{control}|P|2.5.1",
            f"EVN|A01|{STAMP}",
            f"PID|1||{patient.mrn}^^^HOSP-A^MR||Bench^Patient||19790412|F",
            f"PV1|1|I|WARD1^101^A||||||||||||||||V{control}",
        ]
    )


def oru(rng: random.Random, patient: Patient, control: str) -> str:
    segments = [
        f"MSH|^~\\&|LAB|HOSP-A|MEDLEDGER|ML|{STAMP}||ORU^R01^ORU_R01|{control}|P|2.5.1",
        f"PID|1||{patient.mrn}^^^HOSP-A^MR||Bench^Patient",
        f"OBR|1||ACC-{control}|24323-8^Metabolic panel^LN|||{STAMP}|||||||||||||||||F",
    ]
    for n, (code, unit, typical) in enumerate(RESULTS, start=1):
        value = round(typical * rng.uniform(0.7, 1.3), 2)
        segments.append(f"OBX|{n}|NM|{code}^Result^LN||{value}|{unit}|||||F|||{STAMP}")
    return "\r".join(segments)


# -- measurements -----------------------------------------------------------------------------


async def mongo_ops(client: AsyncMongoClient[dict[str, Any]]) -> int | None:
    """The server's insert+update+delete+query+command count, when it reports one."""
    try:
        status = await client.admin.command("serverStatus")
    except Exception:  # noqa: BLE001 - a server without serverStatus: no diagnostic
        return None
    counters = status.get("opcounters")
    if not isinstance(counters, dict):
        return None
    return sum(int(counters.get(k, 0)) for k in ("insert", "query", "update", "delete", "command"))


async def per_resource(
    client: AsyncMongoClient[dict[str, Any]], before: int | None, resources: int
) -> float | None:
    after = await mongo_ops(client)
    if before is None or after is None or not resources:
        return None
    return (after - before) / resources


async def create_patients(callers: Callers, count: int) -> list[Patient]:
    """Patients admitted by ADT^A01 (unmeasured), each with an MRN the ORU messages name."""
    patients = []
    async with callers() as caller:
        for _ in range(count):
            mrn = f"BENCH{uuid.uuid4().hex[:10]}"
            reply = await caller.stub.IngestHl7V2(
                record_pb2.IngestHl7V2Request(
                    message=adt(Patient("", mrn), uuid.uuid4().hex[:16]), purpose=TREAT
                )
            )
            (patient,) = [w for w in reply.written if w.resource_type == "Patient"]
            patients.append(Patient(patient.id, mrn))
    return patients


async def single_creates(
    callers: Callers, patients: list[Patient], seconds: float, meter: CpuMeter
) -> dict[int, Run]:
    rng = random.Random(3)

    def operation(stub: Stub) -> Callable[[int], Awaitable[object]]:
        async def create(n: int) -> None:
            patient = rng.choice(patients)
            document = observation(lab_row(rng, patient, n), patient.patient_id)
            reply = await stub.CreateResource(
                record_pb2.CreateResourceRequest(resource_json=json.dumps(document), purpose=TREAT)
            )
            assert reply.resource.receipt.checkpoint

        return create

    async with callers() as caller:
        await warm_up(operation(caller.stub))
    runs = {}
    for clients in CLIENTS:
        async with callers() as caller:
            runs[clients] = await closed_loop(clients, seconds, operation(caller.stub), meter)
    return runs


async def csv_requests(data: bytes) -> AsyncIterator[record_pb2.IngestCsvLabResultsStreamRequest]:
    yield record_pb2.IngestCsvLabResultsStreamRequest(
        idempotency_key=f"bench-{uuid.uuid4().hex}", purpose=TREAT
    )
    for start in range(0, len(data), PIECE_BYTES):
        yield record_pb2.IngestCsvLabResultsStreamRequest(csv=data[start : start + PIECE_BYTES])


async def measured(
    name: str,
    units: int,
    mongo: AsyncMongoClient[dict[str, Any]],
    meter: CpuMeter,
    send: Callable[[], Awaitable[list[record_pb2.WrittenResource]]],
) -> Bulk:
    """One bulk load timed and metered: what ``send`` wrote, in how long, at what cost."""
    before = await mongo_ops(mongo)
    cpu_before = meter.read()
    started = time.perf_counter()
    written = await send()
    seconds = time.perf_counter() - started
    cpu = CpuMeter.spent(cpu_before, meter.read())
    return Bulk(
        name,
        units,
        len(written),
        seconds,
        len({w.receipt.checkpoint for w in written}),
        sum(1 for w in written if w.receipt.leaf_hash),
        await per_resource(mongo, before, len(written)),
        cpu,
    )


async def csv_load(
    callers: Callers,
    mongo: AsyncMongoClient[dict[str, Any]],
    data: bytes,
    rows: int,
    meter: CpuMeter,
) -> Bulk:
    async with callers() as caller:

        async def send() -> list[record_pb2.WrittenResource]:
            written: list[record_pb2.WrittenResource] = []
            last = record_pb2.IngestCsvLabResultsStreamResponse()
            call = caller.stub.IngestCsvLabResultsStream(
                csv_requests(data), metadata=caller.metadata, timeout=3600
            )
            async for reply in call:
                written += reply.written
                last = reply
            if not last.done or last.rows_accepted != rows or last.issues:
                raise SystemExit(f"the CSV load wrote {last.rows_accepted} of {rows} rows")
            return written

        return await measured("CSV rows (IngestCsvLabResultsStream)", rows, mongo, meter, send)


async def hl7_load(
    callers: Callers,
    mongo: AsyncMongoClient[dict[str, Any]],
    patients: list[Patient],
    count: int,
    meter: CpuMeter,
) -> Bulk:
    rng = random.Random(5)
    messages = [oru(rng, rng.choice(patients), uuid.uuid4().hex[:16]) for _ in range(count)]
    async with callers() as caller:

        async def send() -> list[record_pb2.WrittenResource]:
            written: list[record_pb2.WrittenResource] = []
            for message in messages:
                reply = await caller.stub.IngestHl7V2(
                    record_pb2.IngestHl7V2Request(message=message, purpose=TREAT)
                )
                if not reply.written:
                    raise SystemExit("an ORU^R01 message was refused: " + str(list(reply.issues)))
                written += reply.written
            return written

        return await measured("HL7 v2 ORU^R01 messages (IngestHl7V2)", count, mongo, meter, send)


def batch_file(messages: list[str]) -> str:
    """An HL7 batch file of ``messages``: FHS, BHS, the messages, BTS and FTS with counts."""
    return "\r".join(
        [
            "FHS|^~\\&|LAB|BENCH",
            "BHS|^~\\&|LAB|BENCH",
            *messages,
            f"BTS|{len(messages)}",
            "FTS|1",
        ]
    )


async def hl7_batch_load(
    callers: Callers,
    mongo: AsyncMongoClient[dict[str, Any]],
    patients: list[Patient],
    count: int,
    per_file: int,
    meter: CpuMeter,
) -> Bulk:
    rng = random.Random(6)
    messages = [oru(rng, rng.choice(patients), uuid.uuid4().hex[:16]) for _ in range(count)]
    files = [batch_file(messages[i : i + per_file]) for i in range(0, count, per_file)]
    async with callers() as caller:

        async def send() -> list[record_pb2.WrittenResource]:
            written: list[record_pb2.WrittenResource] = []
            for batch in files:
                reply = await caller.stub.IngestHl7V2Batch(
                    record_pb2.IngestHl7V2BatchRequest(batch=batch, purpose=TREAT)
                )
                if reply.issues or any(not m.written for m in reply.messages):
                    raise SystemExit("a batch or its message was refused: " + str(reply)[:400])
                written += [w for m in reply.messages for w in m.written]
            return written

        return await measured(
            f"HL7 v2 ORU^R01 batch files of {per_file} (IngestHl7V2Batch)",
            count,
            mongo,
            meter,
            send,
        )


# -- the report -------------------------------------------------------------------------------


def report(singles: dict[int, Run], single_ops: float | None, bulks: list[Bulk]) -> None:
    table = Table(title="resources written with receipts, per second, in this run")
    for column in (
        "path",
        "clients",
        "units",
        "resources",
        "seconds",
        "resources/s",
        "vs 1 client",
        "vs 8 clients",
        "ledger steps",
        "Mongo ops/resource",
        "failed",
    ):
        table.add_column(column, justify="right", no_wrap=column == "path")
    base = singles[1].rate
    for clients, run in singles.items():
        table.add_row(
            "single CreateResource",
            str(clients),
            "-",
            f"{len(run.latencies):,}",
            f"{run.seconds:.1f}",
            f"{run.rate:,.1f}",
            f"{run.rate / base:.2f}x",
            f"{run.rate / singles[8].rate:.2f}x",
            f"{len(run.latencies):,}",
            "-" if single_ops is None else f"{single_ops:.1f}",
            run.failures(),
        )
    for bulk in bulks:
        table.add_row(
            bulk.name,
            "1",
            f"{bulk.units:,}",
            f"{bulk.resources:,}",
            f"{bulk.seconds:.1f}",
            f"{bulk.rate:,.1f}",
            f"{bulk.rate / base:.2f}x",
            f"{bulk.rate / singles[8].rate:.2f}x",
            f"{bulk.checkpoints:,}",
            "-" if bulk.mongo_ops is None else f"{bulk.mongo_ops:.1f}",
            "-",
        )
    console.print(table)
    for bulk in bulks:
        unit = "rows" if bulk.name.startswith("CSV") else "messages"
        ratio = bulk.rate / base
        console.print(
            f"{bulk.name}: {bulk.units / bulk.seconds:,.1f} {unit}/s, {bulk.rate:,.1f} "
            f"resources/s with {bulk.receipts:,} receipts; per resource {ratio:.2f}x single "
            f"creates from 1 client (target >= {TARGET:g}x) {verdict(ratio >= TARGET)}"
        )


def report_cpu(singles: dict[int, Run], bulks: list[Bulk]) -> None:
    processes = list(singles[1].cpu)
    table = Table(title="CPU-ms per resource written, by process")
    for column in ("path", "clients", *processes, "total"):
        table.add_column(column, justify="right", no_wrap=column == "path")
    for clients, run in singles.items():
        table.add_row(
            "single CreateResource",
            str(clients),
            *(f"{run.cpu_ms(process):.1f}" for process in processes),
            f"{run.cpu_ms():.1f}",
        )
    for bulk in bulks:
        table.add_row(
            bulk.name,
            "1",
            *(f"{bulk.cpu_ms(process):.1f}" for process in processes),
            f"{bulk.cpu_ms():.1f}",
        )
    console.print(table)
    console.print(
        f"    {PLATFORM_PROCESS} = this process: identity and the ledger (the testkit "
        "platform) and the clients"
    )


# -- the run ----------------------------------------------------------------------------------


async def main(
    workdir: Path, rows: int, messages: int, patients_count: int, seconds: float, per_file: int
) -> None:
    mongo = MongoServer(
        port=free_port(),
        storage_path=workdir / "mongo",
        log_file=workdir / "mongo.log",
        die_with_parent=True,
    )
    vault = DevVault(
        port=free_port(with_next=True), log_file=workdir / "vault.log", die_with_parent=True
    )
    mongo.start()
    vault.start()
    vault.provision()
    console.print(
        f"# ingest benchmark — cores: {os.cpu_count()}, {rows:,} CSV rows, {messages:,} ORU "
        f"messages, {patients_count} patients, {seconds:g} s per baseline run, state: {workdir}"
    )
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    endpoints = StackEndpoints(mongo.uri, vault.addr, vault.service_tokens, "", ports)
    platform, stop_platform = await start_platform(
        mongo.uri,
        identity_vault=VaultSettings(addr=vault.addr, token=vault.token_for("identity")),
        ledger_vault=VaultSettings(addr=vault.addr, token=vault.token_for("ledger")),
    )
    record = BenchRecord(endpoints, workdir / "record.log", DATABASE, platform)
    await asyncio.to_thread(record.start)  # this loop serves identity meanwhile
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri)

    @asynccontextmanager
    async def callers() -> AsyncIterator[Caller]:
        fresh = await platform.token(SCOPE, ORGANIZATION, [TREAT])
        async with authed_channel(record.address, fresh) as channel:
            yield Caller(
                record_pb2_grpc.RecordServiceStub(channel),
                (("authorization", f"Bearer {fresh}"),),
            )

    assert mongo.pid is not None
    assert vault.pid is not None
    assert record.pid is not None
    meter = stack_meter(mongo=mongo.pid, vault=vault.pid, record=record.pid)
    try:
        console.print(f"(setup) {patients_count} patients admitted by ADT^A01")
        patients = await create_patients(callers, patients_count)
        console.print("(a) single CreateResource, 1 and 8 clients")
        before = await mongo_ops(client)
        singles = await single_creates(callers, patients, seconds, meter)
        created = 1 + WARM_UP + sum(len(r.latencies) for r in singles.values())
        single_ops = await per_resource(client, before, created)
        console.print(f"(b) a CSV file of {rows:,} rows, streamed")
        data = csv_file(random.Random(4), patients, rows)
        csv = await csv_load(callers, client, data, rows, meter)
        console.print(f"(c) {messages:,} ORU^R01 messages, one at a time")
        hl7 = await hl7_load(callers, client, patients, messages, meter)
        console.print(f"(d) {messages:,} other ORU^R01 messages, in batch files of {per_file}")
        batches = await hl7_batch_load(callers, client, patients, messages, per_file, meter)
    finally:
        await client.close()
        record.stop()
        await stop_platform()
        mongo.stop()
        vault.stop()
    console.print()
    report(singles, single_ops, [csv, hl7, batches])
    report_cpu(singles, [csv, hl7, batches])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--per-file", type=int, default=100)
    add_keep_state(parser)
    args = parser.parse_args()
    if min(args.rows, args.messages, args.patients, args.per_file) < 1:
        parser.error("--rows, --messages, --patients and --per-file must be at least 1")
    with bench_state("bench-ingest-", keep=args.keep_state) as workdir:
        asyncio.run(
            main(workdir, args.rows, args.messages, args.patients, args.seconds, args.per_file)
        )
