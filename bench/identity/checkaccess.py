"""``python -m bench.identity.checkaccess [--consents N] [--patients P] [--decisions D]``

CheckAccess latency with 10,000 consents stored across 1,000 patients, in one run against
the same MongoDB-compatible server:

(a) ``ConsentRpcs.CheckAccess`` in-process (validation, scopes, purposes, the consent
    query, the decision), as the record service's calls reach it minus the network hop and
    the token check (``--sections verify`` measures that): the caller is the record
    service's client as the auth interceptor leaves it, holding ``medledger/check-access``,
    so the ``patient_organization`` it asserts is honoured;
(b) the baseline: one bare indexed ``find_one`` on the same collection, same keys.

The ratio (a)/(b) is what the decision costs over the one read it cannot avoid.
Target (issue #5): CheckAccess p99 < 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from bench import add_keep_state, bench_state
from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.interceptors import Principal, current_principal
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import SERVICE_CLIENT_SCOPES, service_client_id
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_port
from medledger.identity.adapters.consent_store import CONSENTS, ConsentStore, consent_document
from medledger.identity.adapters.ledger_events import LedgerEvents
from medledger.identity.adapters.mongo_store import IdentityStore
from medledger.identity.consent_rpc import ConsentRpcs
from medledger.identity.domain.access import AccessControl
from medledger.identity.domain.consent import (
    Consent,
    ConsentTerms,
    Grantee,
    GranteeKind,
    Purpose,
    new_object_id,
    to_millis,
)
from medledger.identity.domain.consent_registry import ConsentRegistry

RESOURCE_TYPES = ("Observation", "Condition", "DiagnosticReport", "MedicationRequest", "Encounter")
ORGANIZATIONS = tuple(f"org-{n}" for n in range(20))
PURPOSE_CODES = (purpose_pb2.PURPOSE_OF_USE_TREAT, purpose_pb2.PURPOSE_OF_USE_HRESCH)
# The caller of every CheckAccess: the record service's own client, as identity's auth
# interceptor sets it from the service's token.
RECORD_SERVICE = Principal(
    service_client_id("record"),
    "medledger",
    service_client_id("record"),
    frozenset(SERVICE_CLIENT_SCOPES["record"]),
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def synthetic_consents(count: int, patients: int, rng: random.Random) -> list[Consent]:
    """Consents to organisations (and a few clients), some revoked, some expired."""
    now = to_millis(datetime.now(UTC))
    consents = []
    for n in range(count):
        kind = GranteeKind.CLIENT if n % 10 == 0 else GranteeKind.ORGANIZATION
        grantee_id = f"app-{rng.randrange(50)}" if kind is GranteeKind.CLIENT else ""
        terms = ConsentTerms(
            patient_id=f"pat-{n % patients}",
            grantee=Grantee(kind, grantee_id or rng.choice(ORGANIZATIONS)),
            resource_types=tuple(rng.sample(RESOURCE_TYPES, rng.randint(1, 3))),
            categories=(),
            purposes=(Purpose.TREAT,) if rng.random() < 0.8 else (Purpose.HRESCH,),
            period_start=now - timedelta(days=rng.randint(1, 400)),
            period_end=now + timedelta(days=rng.randint(-30, 365)) if n % 3 == 0 else None,
            granted_by=f"user-{n % patients}",
        )
        revoked = now - timedelta(days=1) if n % 17 == 0 else None
        consents.append(Consent(new_object_id(now), terms, now, terms.granted_by, revoked))
    return consents


def decision_request(rng: random.Random, patients: int) -> identity_pb2.CheckAccessRequest:
    """A partner organisation's client, its token for both purposes, reads one patient's
    data through the record service (org-a holds every patient)."""
    organization = rng.choice(ORGANIZATIONS)
    client = f"app-{rng.randrange(50)}"
    return identity_pb2.CheckAccessRequest(
        principal_id=client,
        organization=organization,
        client_id=client,
        scopes=["system/*.rs"],
        patient_id=f"pat-{rng.randrange(patients)}",
        resource_type=rng.choice(RESOURCE_TYPES),
        action=identity_pb2.ACTION_READ,
        purpose=rng.choice(PURPOSE_CODES),
        purposes=PURPOSE_CODES,
        patient_organization="org-a",
    )


async def bench_checkaccess(
    mongo_uri: str, *, consents: int = 10_000, patients: int = 1_000, decisions: int = 2_000
) -> dict[str, float]:
    """Stores ``consents`` consents in bulk, then measures ``decisions`` CheckAccess calls
    and as many bare ``find_one`` reads; latencies in milliseconds."""
    rng = random.Random(5)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, tz_aware=True)
    database = f"bench_consent_{os.getpid()}"
    await client.drop_database(database)
    store = ConsentStore(client, database)
    await store.ensure_indexes()
    started = time.perf_counter()
    documents = [
        consent_document(c, ledgered=True) for c in synthetic_consents(consents, patients, rng)
    ]
    collection = client[database][CONSENTS]
    for chunk in range(0, len(documents), 1000):
        await collection.insert_many(documents[chunk : chunk + 1000])
    load_seconds = time.perf_counter() - started

    # Wired as identity's runtime wires them. Decisions without break-glass never reach the
    # ledger or Vault, nor the directory (the caller names the patient's organisation, and
    # a client is no patient): these stay unopened.
    unused_vault = VaultTransit(VaultSettings(addr="http://127.0.0.1:9", token="unused"))
    ledger = LedgerClient(f"127.0.0.1:{free_port()}", ServiceSettings())
    leaves = MongoPatientLeafStore(client, database, "identity")
    patient_log = PatientLog(
        ledger, SubjectHasher(unused_vault), leaves, unused_vault, "identity-secrets"
    )
    events = LedgerEvents(ledger, patient_log)
    directory = IdentityStore(client, database)
    access = AccessControl(store, store, events, directory)
    rpcs = ConsentRpcs(ConsentRegistry(store, store, events, directory, access), access)
    requests = [decision_request(rng, patients) for _ in range(decisions)]
    latencies: list[float] = []
    permits = 0
    caller = current_principal.set(RECORD_SERVICE)
    try:
        for request in requests[:200]:  # warm-up: connections, caches, code paths
            await rpcs.CheckAccess(request, None)
        for request in requests:
            begun = time.perf_counter()
            response = await rpcs.CheckAccess(request, None)
            latencies.append(time.perf_counter() - begun)
            permits += response.decision == identity_pb2.DECISION_PERMIT
    finally:
        current_principal.reset(caller)

    bare: list[float] = []
    for request in requests:
        begun = time.perf_counter()
        await collection.find_one(
            {
                "patient_id": request.patient_id,
                "grantee_key": f"organization:{request.organization}",
            }
        )
        bare.append(time.perf_counter() - begun)

    await ledger.aclose()
    await client.drop_database(database)
    await client.close()
    figures = {
        "consents": float(consents),
        "load_seconds": load_seconds,
        "checkaccess_p50_ms": percentile(latencies, 0.5) * 1000,
        "checkaccess_p99_ms": percentile(latencies, 0.99) * 1000,
        "find_one_p50_ms": percentile(bare, 0.5) * 1000,
        "find_one_p99_ms": percentile(bare, 0.99) * 1000,
        "permit_share": permits / len(requests),
    }
    figures["ratio_p50"] = figures["checkaccess_p50_ms"] / figures["find_one_p50_ms"]
    figures["ratio_p99"] = figures["checkaccess_p99_ms"] / figures["find_one_p99_ms"]
    return figures


async def main(workdir: Path, consents: int, patients: int, decisions: int) -> None:
    mongo = MongoServer(
        port=free_port(),
        storage_path=workdir / "mongo",
        log_file=workdir / "mongo.log",
        die_with_parent=True,
    )
    mongo.start()
    try:
        print(f"# CheckAccess benchmark — cores: {os.cpu_count()}, state: {workdir}")
        f = await bench_checkaccess(
            mongo.uri, consents=consents, patients=patients, decisions=decisions
        )
        print(
            f"    {consents:,} consents across {patients:,} patients, bulk load "
            f"{f['load_seconds']:.1f} s; {decisions:,} decisions, {f['permit_share']:.0%} permit"
        )
        print(
            f"    CheckAccess      p50 {f['checkaccess_p50_ms']:6.2f} ms  "
            f"p99 {f['checkaccess_p99_ms']:6.2f} ms  (target p99 < 5 ms)"
        )
        print(
            f"    bare find_one    p50 {f['find_one_p50_ms']:6.2f} ms  "
            f"p99 {f['find_one_p99_ms']:6.2f} ms"
        )
        print(f"    ratio            p50 {f['ratio_p50']:6.2f}x    p99 {f['ratio_p99']:6.2f}x")
    finally:
        mongo.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--consents", type=int, default=10_000)
    parser.add_argument("--patients", type=int, default=1_000)
    parser.add_argument("--decisions", type=int, default=2_000)
    add_keep_state(parser)
    args = parser.parse_args()
    with bench_state("bench-identity-", keep=args.keep_state) as workdir:
        asyncio.run(main(workdir, args.consents, args.patients, args.decisions))
