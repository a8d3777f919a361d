"""Services record events through LedgerClient: pseudonymous subject, time and trace id
filled in, receipt returned; a ledger that is down is a retryable error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from opentelemetry import trace

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.config import MongoSettings, ServiceSettings, VaultSettings
from medledger.common.errors import Unavailable
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.scopes import LEDGER_APPEND
from medledger.common.server import ServiceServer
from medledger.common.subject import SubjectHasher
from medledger.common.telemetry import setup_telemetry
from medledger.common.vault import VaultTransit
from medledger.devstack.process import free_port
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS


async def test_subject_pseudonym_is_stable_keyed_and_shared(vault_server: Any) -> None:
    settings = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    first, second = SubjectHasher(VaultTransit(settings)), SubjectHasher(VaultTransit(settings))
    a = await first.subject("patient-123")
    assert len(a) == 32
    assert await second.subject("patient-123") == a  # one key per deployment, from Vault
    assert await first.subject("patient-124") != a
    assert b"patient-123" not in a


async def test_append_fills_time_and_trace_and_returns_the_receipt(
    mongo_server: Any, vault_server: Any
) -> None:
    setup_telemetry("test")
    vault_settings = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger"))
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0),
        LedgerConfig(origin="client.test/ledger", lease_ttl_seconds=2),
        MongoSettings(
            MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"c{uuid.uuid4().hex[:8]}"
        ),
        vault_settings,
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    client = LedgerClient(
        f"127.0.0.1:{server.port}", ServiceSettings(), token=TEST_TOKENS.source([LEDGER_APPEND])
    )
    hasher = SubjectHasher(
        VaultTransit(VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")))
    )
    event = LedgerEvent(
        kind=ledger_pb2.EVENT_KIND_CONSENT_GRANTED,
        actor="user-7",
        organization="org-a",
        subject=await hasher.subject("patient-123"),
        resource_type="Consent",
        resource_id="c-1",
        resource_version=1,
    )
    try:
        with trace.get_tracer("test").start_as_current_span("grant") as span:
            receipt = None
            for _ in range(50):  # until the sequencer holds its lease
                try:
                    receipt = await client.append(event, idempotency_key="grant-c-1")
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
            assert receipt is not None
            trace_id = span.get_span_context().trace_id.to_bytes(16, "big")
        stored = runtime.servicers[0].implementation
        entry = (
            await stored.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=receipt.leaf_index), None)
        ).entry
        assert entry.trace_id == trace_id
        assert entry.subject == await hasher.subject("patient-123")
        assert entry.HasField("time")
    finally:
        await client.aclose()
        await asyncio.wait_for(server.stop(0), 20)


async def test_ledger_down_is_unavailable() -> None:
    client = LedgerClient(f"127.0.0.1:{free_port()}", ServiceSettings())
    with pytest.raises(Unavailable):
        await client.append(
            LedgerEvent(kind=ledger_pb2.EVENT_KIND_KEY_ROTATED, actor="ops", organization="org-a"),
            timeout=2,
        )
    await client.aclose()


async def test_a_refused_service_token_is_retryable_not_internal(
    mongo_server: Any, vault_server: Any
) -> None:
    """The ledger refusing this service's own token (PERMISSION_DENIED, UNAUTHENTICATED) is
    nothing the caller did: Unavailable with reason LEDGER_REFUSED, never a bare INTERNAL."""
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0),
        LedgerConfig(origin="client.test/ledger", lease_ttl_seconds=2),
        MongoSettings(
            MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"r{uuid.uuid4().hex[:8]}"
        ),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await asyncio.wait_for(server.start(), 20)
    # A valid token without ledger.append: the ledger answers PERMISSION_DENIED.
    client = LedgerClient(
        f"127.0.0.1:{server.port}", ServiceSettings(), token=TEST_TOKENS.source([])
    )
    try:
        with pytest.raises(Unavailable) as refused:
            await client.append(
                LedgerEvent(kind=ledger_pb2.EVENT_KIND_KEY_ROTATED, actor="ops", organization="o"),
                timeout=5,
            )
        assert refused.value.reason == "LEDGER_REFUSED"
        assert refused.value.metadata["dependency"] == "ledger"
    finally:
        await client.aclose()
        await asyncio.wait_for(server.stop(0), 20)
