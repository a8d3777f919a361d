"""``python -m bench.duplicates [--patients N] [--calls K] [--seed S] [--one M]``

Duplicate patients, measured end to end. In one run, against one MongoDB-compatible server
(secantusdb), OpenBao, identity with its ledger (the testkit platform, in this process) and the
record service as its own process (``python -m medledger.record``, default ``RECORD_*``
settings):

(a) a generated population (``medledger.testkit.patient_population``: deterministic for the
    seed; about 9% of the records are second or third records of a person, each carrying one
    to three faults: a nickname, the birth date's day and month transposed, a mistyped digit
    of it, a one-letter typo in the family or given name, missing fields, a new address and
    phone; households and twins among the others) is written through ``CreateResource``, 8
    at once, as a registration desk would;
(b) ``FindDuplicatePatients`` at the default threshold, every page, ``--calls`` times: the
    pairs found against the known ones (precision and recall; targets precision >= 0.95 and
    recall >= 0.90), the recall of each fault, and the time per call (the first, with the
    record's key cache cold, apart);
(d) ``FindDuplicatePatients`` for one patient (``patient_id``, what FHIR's Patient/$match asks)
    for ``--one`` patients (half of them in a listed pair): the time per call against a whole
    listing's, and whether each answer is exactly that patient's pairs in the listing;
(c) the same work on the clear population in this process (blocking in memory, scoring):
    the baseline the service's time is compared with, as a ratio (the service adds the
    blocking index, decryption, CheckAccess per patient and the ledgered reads); and scoring
    every pair instead of the blocked ones, timed on a sample and extrapolated.

Timings are printed, never asserted; a missed target prints MISS and the run succeeds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

import grpc
from rich.console import Console
from rich.table import Table

from bench import add_keep_state, bench_state
from medledger.api.common.v1 import purpose_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.config import VaultSettings
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import SERVICE_PORTS, ServiceServer, StackEndpoints, service_env
from medledger.devstack.vault import DevVault
from medledger.record.domain.patient_matching import (
    DEFAULT_MIN_SCORE,
    block_in_memory,
    candidate_pairs,
    patient_facts,
    score_pair,
    score_pairs,
)
from medledger.testkit.patient_population import FAULTS, Population, accuracy, population
from medledger.testkit.platform import authed_channel, start_platform

ORGANIZATION: Final = "bench-hospital"
DATABASE: Final = "bench_duplicates"
SCOPE: Final = "system/Patient.crus"
TREAT: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
AT_ONCE: Final = 8
PAGE_SIZE: Final = 1000
ALL_PAIRS_SAMPLE: Final = 20_000
# The targets.
PRECISION_TARGET: Final = 0.95
RECALL_TARGET: Final = 0.90
THRESHOLDS: Final = (0.5, 0.8, 0.9, 0.95, 0.99)

Stub: TypeAlias = "record_pb2_grpc.RecordServiceAsyncStub"  # in the .pyi only
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


class BenchRecord(ServiceServer):
    """The record service as deployed: its own process, on the platform's identity and
    ledger, with its own database."""

    def __init__(self, endpoints: StackEndpoints, log_file: Path, peers: dict[str, str]) -> None:
        super().__init__("record", endpoints=endpoints, log_file=log_file, die_with_parent=True)
        self.peers = peers

    def env(self) -> dict[str, str]:
        env = service_env(self.component, self.endpoints)
        env["MEDLEDGER_MONGODB_DATABASE"] = DATABASE
        env |= {f"MEDLEDGER_{peer.upper()}_ADDR": addr for peer, addr in self.peers.items()}
        return env


@dataclass
class Found:
    """One full listing: every page's pairs, and how long it took."""

    pairs: list[record_pb2.DuplicateCandidate]
    seconds: float
    pages: int
    retried: int = 0


async def write_population(stub: Stub, generated: Population) -> tuple[list[str], float]:
    """Creates every Patient (``AT_ONCE`` at a time); the ids, in population order."""
    ids: list[str] = [""] * len(generated.patients)
    queue = list(enumerate(generated.patients))
    started = time.perf_counter()
    done = 0

    async def worker() -> None:
        nonlocal done
        while queue:
            index, patient = queue.pop()
            for attempt in range(4):
                try:
                    reply = await stub.CreateResource(
                        record_pb2.CreateResourceRequest(
                            resource_json=json.dumps(patient),
                            purpose=TREAT,
                            idempotency_key=f"bench-dup-{index}",
                        ),
                        timeout=30,
                    )
                    ids[index] = reply.resource.id
                    break
                except grpc.aio.AioRpcError as error:
                    if attempt == 3 or error.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
            done += 1
            if done % 250 == 0:
                spent = time.perf_counter() - started
                console.print(f"    {done:,} patients in {spent:.0f} s ({done / spent:.1f}/s)")

    await asyncio.gather(*(worker() for _ in range(AT_ONCE)))
    return ids, time.perf_counter() - started


async def find_all(stub: Stub, min_score: float = 0.0) -> Found:
    """Every page; a page the service could not ledger (UNAVAILABLE: the ledger, on this
    machine's two cores, did not answer in time) is asked again, and counted."""
    pairs: list[record_pb2.DuplicateCandidate] = []
    token, pages, retried = "", 0, 0
    started = time.perf_counter()
    while True:
        request = record_pb2.FindDuplicatePatientsRequest(
            min_score=min_score, page_size=PAGE_SIZE, page_token=token, purpose=TREAT
        )
        try:
            reply = await stub.FindDuplicatePatients(request, timeout=300)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or retried >= 3:
                raise
            retried += 1
            console.print(f"    (UNAVAILABLE: {error.details()}; asked again)")
            continue
        pages += 1
        pairs += reply.candidates
        token = reply.next_page_token
        if not token:
            return Found(pairs, time.perf_counter() - started, pages, retried)


@dataclass(frozen=True)
class OnePatient:
    seconds: list[float]
    agreeing: int  # answers that were exactly the patient's pairs in the full listing


def _pair(candidate: record_pb2.DuplicateCandidate) -> frozenset[str]:
    return frozenset((candidate.first_patient_id, candidate.second_patient_id))


async def one_patient_calls(stub: Stub, ids: list[str], listed: Found, count: int) -> OnePatient:
    rng = random.Random(7)
    paired = sorted({p for c in listed.pairs for p in _pair(c)})
    chosen = rng.sample(paired, min(count // 2, len(paired)))
    chosen += rng.sample(sorted(set(ids) - set(chosen)), min(count - len(chosen), len(ids)))
    expected: dict[str, set[frozenset[str]]] = {p: set() for p in chosen}
    for candidate in listed.pairs:
        for patient in _pair(candidate) & expected.keys():
            expected[patient].add(_pair(candidate))
    seconds, agreeing = [], 0
    for patient in chosen:
        request = record_pb2.FindDuplicatePatientsRequest(
            patient_id=patient, page_size=PAGE_SIZE, purpose=TREAT
        )
        started = time.perf_counter()
        reply = await stub.FindDuplicatePatients(request, timeout=60)
        seconds.append(time.perf_counter() - started)
        agreeing += {_pair(c) for c in reply.candidates} == expected[patient]
    return OnePatient(seconds, agreeing)


def in_process(generated: Population) -> tuple[float, int, float]:
    """The scoring on the clear population: (seconds for blocking + scoring, blocked
    pairs, estimated seconds to score every pair)."""
    started = time.perf_counter()
    people = {str(i): patient_facts(p) for i, p in enumerate(generated.patients)}
    blocked = candidate_pairs(block_in_memory(people))
    score_pairs(blocked, people, DEFAULT_MIN_SCORE)
    seconds = time.perf_counter() - started
    rng = random.Random(1)
    ids = list(people)
    sample = [tuple(rng.sample(ids, 2)) for _ in range(ALL_PAIRS_SAMPLE)]
    started = time.perf_counter()
    for a, b in sample:
        score_pair(people[a], people[b])
    per_pair = (time.perf_counter() - started) / len(sample)
    every = len(ids) * (len(ids) - 1) // 2
    return seconds, len(blocked), per_pair * every


def verdict(ok: bool) -> str:
    return "[green]PASS[/green]" if ok else "[red]MISS[/red]"


def found_pairs(
    pairs: list[record_pb2.DuplicateCandidate], index: dict[str, int], min_score: float
) -> list[tuple[int, int]]:
    return [
        (index[p.first_patient_id], index[p.second_patient_id])
        for p in pairs
        if p.score >= min_score
    ]


def report(
    generated: Population,
    ids: list[str],
    runs: list[Found],
    wide: Found,
    baseline: tuple[float, int, float],
    one: OnePatient,
) -> None:
    index = {patient_id: n for n, patient_id in enumerate(ids)}
    default = runs[0]
    measured = accuracy(found_pairs(default.pairs, index, 0.0), generated.truth)
    table = Table(title=f"duplicates found at the default threshold ({DEFAULT_MIN_SCORE})")
    for column in ("", "measured", "target", ""):
        table.add_column(column)
    table.add_row(
        "precision", f"{measured.precision:.3f}", f">= {PRECISION_TARGET}",
        verdict(measured.precision >= PRECISION_TARGET),
    )  # fmt: skip
    table.add_row(
        "recall", f"{measured.recall:.3f}", f">= {RECALL_TARGET}",
        verdict(measured.recall >= RECALL_TARGET),
    )  # fmt: skip
    table.add_row(
        "pairs",
        f"{measured.true_positives} right, {measured.false_positives} wrong, "
        f"{measured.false_negatives} missed of {len(generated.truth)}",
        "",
        "",
    )
    console.print(table)

    thresholds = Table(title="precision and recall by threshold (one listing at 0.5)")
    for column in ("min_score", "pairs", "precision", "recall"):
        thresholds.add_column(column, justify="right")
    for threshold in THRESHOLDS:
        at = accuracy(found_pairs(wide.pairs, index, threshold), generated.truth)
        thresholds.add_row(
            f"{threshold:g}",
            str(at.true_positives + at.false_positives),
            f"{at.precision:.3f}",
            f"{at.recall:.3f}",
        )
    console.print(thresholds)

    hit = {frozenset(p) for p in found_pairs(default.pairs, index, 0.0)}
    by_fault: Counter[str] = Counter()
    caught: Counter[str] = Counter()
    for duplicate, original, carried in generated.duplicates:
        for fault in carried:
            by_fault[fault] += 1
            caught[fault] += frozenset((duplicate, original)) in hit
    faults = Table(title="recall by fault (a duplicate and its original; faults combine)")
    for column in ("fault", "duplicates", "found", "recall"):
        faults.add_column(column, justify="right")
    for fault in FAULTS:
        if by_fault[fault]:
            faults.add_row(
                fault,
                str(by_fault[fault]),
                str(caught[fault]),
                f"{caught[fault] / by_fault[fault]:.3f}",
            )
    console.print(faults)

    seconds, blocked, every = baseline
    warm = [run.seconds for run in runs[1:]] or [runs[0].seconds]
    timing = Table(title=f"time per FindDuplicatePatients listing ({len(ids):,} patients)")
    for column in ("", "seconds", "vs in-process"):
        timing.add_column(column, justify="right")
    timing.add_row(
        "first call (cold key cache)", f"{runs[0].seconds:.3f}", f"{runs[0].seconds / seconds:.1f}x"
    )
    timing.add_row(
        f"next {len(warm)} calls, median", f"{statistics.median(warm):.3f}",
        f"{statistics.median(warm) / seconds:.1f}x",
    )  # fmt: skip
    ordered = sorted(one.seconds)
    one_median = statistics.median(ordered)
    timing.add_row(
        f"one patient's pairs (patient_id), median of {len(ordered)} "
        f"(p99 {ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]:.3f} s)",
        f"{one_median:.3f}",
        f"{one_median / seconds:.2f}x",
    )
    timing.add_row(
        f"in process, clear data: blocking, scoring {blocked:,} blocked pairs",
        f"{seconds:.3f}",
        "1.0x",
    )
    timing.add_row(
        "in process, every pair scored (estimated)", f"{every:.1f}", f"{every / seconds:.0f}x"
    )
    console.print(timing)
    console.print(
        f"pages per listing: {default.pages}; pairs listed at the default threshold: "
        f"{len(default.pairs)}; pages asked again after UNAVAILABLE: "
        f"{sum(run.retried for run in runs)}"
    )
    console.print(
        f"one patient's pairs: {statistics.median(warm) / one_median:.0f}x faster than a whole "
        f"listing; {one.agreeing} of {len(one.seconds)} answers exactly that patient's pairs "
        f"in the listing {verdict(one.agreeing == len(one.seconds))}"
    )


async def main(workdir: Path, count: int, calls: int, seed: int, one_count: int) -> None:
    console.print(
        f"# duplicates benchmark — cores: {os.cpu_count()}, patients: {count:,}, seed {seed}, "
        f"state: {workdir}"
    )
    generated = population(count, seed=seed)
    console.print(
        f"    {len(generated.patients):,} Patients, {len(generated.duplicates)} of them "
        f"duplicates, {len(generated.truth)} pairs of records of one person"
    )
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
    ports = dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True))
    endpoints = StackEndpoints(mongo.uri, vault.addr, vault.service_tokens, "", ports)
    platform, stop_platform = await start_platform(
        mongo.uri,
        identity_vault=VaultSettings(addr=vault.addr, token=vault.token_for("identity")),
        ledger_vault=VaultSettings(addr=vault.addr, token=vault.token_for("ledger")),
    )
    peers = {"identity": platform.identity_address, "ledger": platform.ledger_address}
    record = BenchRecord(endpoints, workdir / "record.log", peers)
    await asyncio.to_thread(record.start)  # this loop serves identity meanwhile
    channel = authed_channel(record.address, await platform.token(SCOPE, ORGANIZATION, [TREAT]))
    try:
        stub: Stub = record_pb2_grpc.RecordServiceStub(channel)
        console.print("(a) the population through CreateResource")
        ids, spent = await write_population(stub, generated)
        console.print(f"    {len(ids):,} Patients in {spent:.0f} s ({len(ids) / spent:.1f}/s)")
        console.print(f"(b) FindDuplicatePatients, {calls} listings at the default threshold")
        runs = []
        for _ in range(calls):
            runs.append(await find_all(stub))
            console.print(f"    {len(runs[-1].pairs)} pairs in {runs[-1].seconds:.3f} s")
        wide = await find_all(stub, 0.5)
        console.print(f"(d) FindDuplicatePatients for one patient, {one_count} patients")
        one = await one_patient_calls(stub, ids, runs[0], one_count)
    finally:
        await channel.close(None)
        record.stop()
        await stop_platform()
        mongo.stop()
        vault.stop()
    console.print("(c) the same on the clear population, in this process")
    baseline = await asyncio.to_thread(in_process, generated)
    console.print()
    report(generated, ids, runs, wide, baseline, one)


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.duplicates")
    parser.add_argument("--patients", type=int, default=1000, help="population size")
    parser.add_argument("--calls", type=int, default=5, help="listings timed")
    parser.add_argument("--seed", type=int, default=14, help="the population's seed")
    parser.add_argument("--one", type=int, default=50, help="patients asked about one by one")
    add_keep_state(parser)
    args = parser.parse_args(argv)
    with bench_state("bench-duplicates-", keep=args.keep_state) as workdir:
        asyncio.run(main(workdir, args.patients, max(1, args.calls), args.seed, max(1, args.one)))


if __name__ == "__main__":
    run()
