"""The record service wired from its settings: adapters, domain, servicer, runtime."""

from __future__ import annotations

from datetime import timedelta

from medledger.api.record.v1 import record_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.interceptors import TokenVerifier
from medledger.common.key_cache import DataKeyCache
from medledger.common.ledger_client import LedgerClient, TokenSource
from medledger.common.mongo import create_mongo_client
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.scopes import (
    CHECK_ACCESS,
    LEDGER_APPEND,
    LEDGER_READ,
    PATIENT_DIRECTORY,
    service_client_id,
)
from medledger.common.service import Servicer, ServiceRuntime
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import RECORD_PATIENT_KEK
from medledger.record.adapters.identity_access import (
    IdentityAccessChecks,
    IdentityPatientDirectory,
)
from medledger.record.adapters.ledger_events import PatientLogLedger
from medledger.record.adapters.ledger_reads import GrpcLedgerReads
from medledger.record.adapters.mongo_store import RecordStore
from medledger.record.adapters.vault_keys import VaultPatientKeys
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.domain.access_report import AccessReports
from medledger.record.domain.bulk_writes import BulkWrites
from medledger.record.domain.csv_ingest import CsvLabIngestion
from medledger.record.domain.duplicates import DuplicateFinder, DuplicatePatients, PatientLinker
from medledger.record.domain.hl7_ingest import Hl7Ingestion
from medledger.record.domain.patient_rights import PatientRights
from medledger.record.domain.record_audit import RecordAudit
from medledger.record.domain.records import EncryptedRecords
from medledger.record.domain.resources import ResourceService
from medledger.record.domain.sweeper import PendingSweeper
from medledger.record.domain.transaction_bundles import TransactionBundles
from medledger.record.server import RECORD_ACCESS, Ingestion, RecordServiceServicer

# What the record's own token asks identity for: appends and reads of the ledger (proofs for
# exports and access logs), access decisions it may ask about any principal (identity then
# honours its word on the patient's organisation), and telling identity who holds a patient.
SERVICE_SCOPES = f"{LEDGER_APPEND} {LEDGER_READ} {CHECK_ACCESS} {PATIENT_DIRECTORY}"


def record_runtime(
    settings: RecordSettings,
    config: RecordConfig,
    mongo_settings: MongoSettings,
    vault_settings: VaultSettings,
    peers: PeerSettings,
    *,
    verifier: TokenVerifier,
    service_token: TokenSource | None = None,
) -> ServiceRuntime:
    """The record service, checking callers' tokens with ``verifier`` and presenting
    ``service_token`` to identity and the ledger (default: its own client token, from its
    Vault key, as :func:`from_settings` runs it)."""
    mongo = create_mongo_client(mongo_settings, app_name="medledger-record")
    vault = VaultTransit(vault_settings)
    shutdown = []
    if service_token is None:
        tokens = ServiceTokenSource(
            vault,
            config.client_key,
            service_client_id("record"),
            peers.identity_addr,
            settings,
            scope=SERVICE_SCOPES,
            audience=settings.token_audience,
        )
        shutdown.append(tokens.aclose)
        service_token = tokens
    store = RecordStore(mongo, mongo_settings.mongodb_database)
    records = EncryptedRecords(
        store,
        VaultPatientKeys(vault),
        cache=DataKeyCache(
            max_keys=config.key_cache_size, ttl_seconds=config.key_cache_ttl_seconds
        ),
        pending_timeout=timedelta(seconds=config.pending_timeout_seconds),
    )
    ledger = LedgerClient(peers.ledger_addr, settings, token=service_token)
    leaves = MongoPatientLeafStore(mongo, mongo_settings.mongodb_database, "record")
    subjects = SubjectHasher(vault)
    patient_log = PatientLog(ledger, subjects, leaves, vault, RECORD_PATIENT_KEK)
    access = IdentityAccessChecks(
        peers.identity_addr, settings, service_token, timeout=config.access_timeout_seconds
    )
    directory = IdentityPatientDirectory(
        peers.identity_addr, settings, service_token, timeout=config.access_timeout_seconds
    )
    record_ledger = PatientLogLedger(patient_log, timeout=config.ledger_timeout_seconds)
    ledger_reads = GrpcLedgerReads(
        peers.ledger_addr, settings, service_token, timeout=config.ledger_timeout_seconds
    )
    resources = ResourceService(records, access, record_ledger, directory=directory)
    bulk = BulkWrites(records, access, record_ledger, directory=directory)
    rights = PatientRights(records, access, record_ledger, ledger_reads, record_ledger, directory)
    reports = AccessReports(records, access, record_ledger, ledger_reads, record_ledger, subjects)
    sweeper = PendingSweeper(records, config.sweep_interval_seconds)
    return ServiceRuntime(
        name="record",
        settings=settings,
        servicers=[
            Servicer(
                RecordServiceServicer(
                    resources,
                    rights,
                    RecordAudit(records, ledger_reads),
                    reports,
                    ingestion=Ingestion(
                        bulk,
                        Hl7Ingestion(bulk),
                        CsvLabIngestion(bulk, records, access, chunk_rows=config.csv_chunk_rows),
                        TransactionBundles(bulk, records),
                    ),
                    duplicates=DuplicatePatients(
                        DuplicateFinder(records, access, record_ledger),
                        PatientLinker(resources, records, access),
                    ),
                ),
                record_pb2_grpc.add_RecordServiceServicer_to_server,
                RECORD_ACCESS,
            )
        ],
        mongo=mongo,
        vault=vault,
        startup=[sweeper.start],
        shutdown=[
            sweeper.stop,
            access.aclose,
            directory.aclose,
            ledger_reads.aclose,
            ledger.aclose,
            *shutdown,
        ],
        verifier=verifier,
    )


def from_settings(
    settings: RecordSettings,
    mongo: MongoSettings,
    vault: VaultSettings,
    peers: PeerSettings,
    config: RecordConfig | None = None,
) -> ServiceRuntime:
    """The record service as ``python -m medledger.record`` runs it: tokens verified
    against identity's JWKS, its own calls made with its client token."""
    verifier, jwks = service_verifier(settings, peers.identity_addr)
    runtime = record_runtime(
        settings, config or RecordConfig(), mongo, vault, peers, verifier=verifier
    )
    runtime.shutdown = [*runtime.shutdown, jwks.aclose]
    return runtime
