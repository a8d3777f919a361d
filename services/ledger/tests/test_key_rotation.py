"""Rotating the checkpoint key in Vault: new checkpoints use the new key, both keys are
published, and receipts issued before the rotation still verify."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import LEDGER_CHECKPOINT_KEY
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.errors import TlogError
from medledger.tlog.verify import verify_inclusion


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[DevVault]:
    """A Vault of its own: this test rotates the key every other test trusts."""
    vault = DevVault(
        port=free_port(with_next=True), log_file=tmp_path / "vault.log", die_with_parent=True
    )
    vault.start()
    vault.provision()
    yield vault
    vault.stop()


def entry() -> ledger_pb2.LedgerEntry:
    now = Timestamp()
    now.GetCurrentTime()
    return ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_KEY_ROTATED, actor="ops", organization="org-a", time=now
    )


def check(receipt: ledger_pb2.Receipt, vkeys: list[str]) -> None:
    checkpoint = verify_checkpoint(receipt.checkpoint, vkeys, [], 0)
    verify_inclusion(
        receipt.leaf_hash,
        receipt.leaf_index,
        checkpoint.size,
        list(receipt.inclusion_proof),
        checkpoint.root_hash,
    )


async def test_rotation_keeps_old_checkpoints_verifiable(
    mongo_server: Any, own_vault: DevVault
) -> None:
    settings = VaultSettings(addr=own_vault.addr, token=own_vault.token_for("ledger"))
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0),
        LedgerConfig(origin="rotation.test/ledger", lease_ttl_seconds=2),
        MongoSettings(
            MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"r{uuid.uuid4().hex[:8]}"
        ),
        settings,
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    try:
        async with TEST_TOKENS.channel(f"127.0.0.1:{server.port}") as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            for _ in range(100):
                try:
                    before = (await stub.Append(ledger_pb2.AppendRequest(entry=entry()))).receipt
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.1)
            old_key = (await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
            # Rotation is the operators' (no service's token may rotate a key).
            assert own_vault.operator_token is not None
            operator = VaultSettings(addr=own_vault.addr, token=own_vault.operator_token)
            await VaultTransit(operator).rotate(LEDGER_CHECKPOINT_KEY)
            after = (await stub.Append(ledger_pb2.AppendRequest(entry=entry()))).receipt
            keys = await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
    finally:
        await server.stop(0)
    assert keys.vkey != old_key
    assert list(keys.previous_vkeys) == [old_key]
    check(before, [old_key])
    check(after, [keys.vkey])
    with pytest.raises(TlogError):
        check(after, [old_key])  # really signed by the new key
    check(before, [keys.vkey, *keys.previous_vkeys])  # a verifier holding both keys
