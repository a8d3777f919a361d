"""Vault stopped under a serving record service: writes and reads answer UNAVAILABLE (with
RetryInfo, never INTERNAL), and nothing becomes visible, in the database or in the ledger.

The record server here keeps its data keys in a Vault of the test's own (which the test
stops); it presents a token of the platform's identity for its own calls, so CheckAccess and
the ledger keep answering.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.auth import service_verifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import from_rpc_error
from medledger.common.scopes import CHECK_ACCESS, LEDGER_APPEND, LEDGER_READ, PATIENT_DIRECTORY
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import record_runtime
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import Platform
from medledger.testkit.tokens import authed_channel

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
ORG = "hospital-vault-down"


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[DevVault]:
    vault = DevVault(
        port=free_port(with_next=True), log_file=tmp_path / "vault.log", die_with_parent=True
    )
    vault.start()
    vault.provision()
    yield vault
    vault.stop()


@pytest.fixture
async def served(
    auth_platform: Platform, mongo_server: Any, own_vault: DevVault
) -> AsyncIterator[tuple[str, Any]]:
    platform = auth_platform
    scopes = f"{LEDGER_APPEND} {LEDGER_READ} {CHECK_ACCESS} {PATIENT_DIRECTORY}"

    async def service_token() -> str:
        return await platform.token(scopes, "medledger")

    settings = RecordSettings(grpc_port=0)
    verifier, jwks = service_verifier(settings, platform.identity_address)
    database = f"vaultdown{uuid.uuid4().hex[:8]}"
    runtime = record_runtime(
        settings,
        # Data keys cached for 50 ms only: a read after that must ask Vault.
        RecordConfig(key_cache_ttl_seconds=0.05),
        MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
        VaultSettings(addr=own_vault.addr, token=own_vault.token_for("record")),
        PeerSettings(identity_addr=platform.identity_address, ledger_addr=platform.ledger_address),
        verifier=verifier,
        service_token=service_token,
    )
    server = ServiceServer(runtime)
    await server.start()
    try:
        yield f"127.0.0.1:{server.port}", own_vault
    finally:
        await server.stop(0)
        await jwks.aclose()


def _size(checkpoint: bytes) -> int:
    """The tree size of a C2SP checkpoint (its second line)."""
    return int(checkpoint.split(b"\n")[1])


def _resource(resource_type: str, patient_id: str = "") -> str:
    document = sample(resource_type)
    document.pop("id", None)
    if patient_id:
        document["subject"] = {"reference": f"Patient/{patient_id}"}
    return json.dumps(document)


async def test_with_vault_stopped_nothing_is_written_or_read(
    served: tuple[str, DevVault], auth_platform: Platform
) -> None:
    address, vault = served
    token = await auth_platform.token("system/*.cruds", ORG, [TREAT])
    reader = await auth_platform.token("ledger.read", ORG)
    async with (
        authed_channel(address, token) as channel,
        authed_channel(auth_platform.ledger_address, reader) as ledger_channel,
    ):
        stub = record_pb2_grpc.RecordServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(ledger_channel)
        patient = (
            await stub.CreateResource(
                record_pb2.CreateResourceRequest(resource_json=_resource("Patient"), purpose=TREAT)
            )
        ).resource
        head = await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())

        vault.stop()
        await asyncio.sleep(0.1)  # past the key cache's TTL
        calls = {
            "create Patient": stub.CreateResource(
                record_pb2.CreateResourceRequest(resource_json=_resource("Patient"), purpose=TREAT)
            ),
            "create Observation": stub.CreateResource(
                record_pb2.CreateResourceRequest(
                    resource_json=_resource("Observation", patient.id), purpose=TREAT
                )
            ),
            "get": stub.GetResource(
                record_pb2.GetResourceRequest(resource_type="Patient", id=patient.id, purpose=TREAT)
            ),
        }
        for what, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            error = from_rpc_error(raised.value)
            assert error.code == grpc.StatusCode.UNAVAILABLE, what
            assert error.retry_delay_seconds is not None, what
        entries = await ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=_size(head.checkpoint), page_size=1000)
        )
        written = [e for e in entries.entries if e.entry.organization == ORG]
        assert written == []  # nothing ledgered: no write, no read
