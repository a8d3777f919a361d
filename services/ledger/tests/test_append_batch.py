"""AppendBatch against real MongoDB and OpenBao: one durable step for many entries (one
checkpoint, contiguous leaves, every receipt verifiable), all or none, retries, bad input."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.errors import from_rpc_error
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.cosignature import verify_checkpoint

from . import test_ledger_api
from .test_ledger_api import ORIGIN, bad_fields, check_receipt, entry, start_ledger, vkey_of

# The module's own instances of the ledger fixtures (a fresh ledger for this module).
ledger = test_ledger_api.ledger
ledger_server = test_ledger_api.ledger_server


def batch(entries: list[ledger_pb2.LedgerEntry], keys: list[str] | None = None) -> Any:
    keys = keys or [""] * len(entries)
    return ledger_pb2.AppendBatchRequest(
        entries=[
            ledger_pb2.AppendRequest(entry=e, idempotency_key=k)
            for e, k in zip(entries, keys, strict=True)
        ]
    )


async def tree_size(stub: Any) -> int:
    note = (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
    return Checkpoint.parse(note.split(b"\n\n", 1)[0] + b"\n").size


async def test_a_batch_is_one_checkpoint_of_contiguous_verifiable_leaves(ledger: Any) -> None:
    vkey = await vkey_of(ledger)
    before = await tree_size(ledger)
    # More than the sequencer's batch size (256): a bulk append is never split.
    entries = [entry(n) for n in range(300)]
    # Single appends racing with the batch must not land inside it.
    singles = [ledger.Append(ledger_pb2.AppendRequest(entry=entry(1000 + n))) for n in range(20)]
    response, *_ = await asyncio.gather(ledger.AppendBatch(batch(entries)), *singles)
    receipts = list(response.receipts)
    assert len(receipts) == 300
    indices = [r.leaf_index for r in receipts]
    assert indices == list(range(indices[0], indices[0] + 300))
    assert indices[0] >= before
    assert len({r.checkpoint for r in receipts}) == 1
    for position, receipt in enumerate(receipts[::37]):
        data = (
            await ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=receipt.leaf_index))
        ).entry_bytes
        assert data == entries[position * 37].SerializeToString(deterministic=True)
        check_receipt(receipt, vkey, data)


async def test_a_retried_batch_adds_nothing_and_returns_the_first_receipts(ledger: Any) -> None:
    entries = [entry(n) for n in range(5)]
    keys = [f"batch-{uuid.uuid4().hex}" for _ in entries]
    first = await ledger.AppendBatch(batch(entries, keys))
    size = await tree_size(ledger)
    again = await ledger.AppendBatch(batch(entries, keys))
    assert [r.leaf_index for r in again.receipts] == [r.leaf_index for r in first.receipts]
    assert [r.leaf_hash for r in again.receipts] == [r.leaf_hash for r in first.receipts]
    assert await tree_size(ledger) == size
    # The same key for other bytes is refused, and nothing of that batch is written.
    other = [entry(50), entry(51)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.AppendBatch(batch(other, [keys[0], f"fresh-{uuid.uuid4().hex}"]))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert from_rpc_error(refused.value).reason == "IDEMPOTENCY_KEY_REUSED"
    assert await tree_size(ledger) == size


async def test_bad_entries_refuse_the_whole_batch_naming_each(ledger: Any) -> None:
    size = await tree_size(ledger)
    entries = [entry(1), entry(2, kind=0), entry(3), entry(4, subject=b"short")]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.AppendBatch(batch(entries))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == ["entries[1].entry.kind", "entries[3].entry.subject"]
    with pytest.raises(grpc.aio.AioRpcError) as repeated:
        await ledger.AppendBatch(batch([entry(1), entry(2)], ["same-key", "same-key"]))
    assert bad_fields(repeated.value) == ["entries[1].idempotency_key"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ledger.AppendBatch(
            ledger_pb2.AppendBatchRequest(entries=[ledger_pb2.AppendRequest()])
        )
    assert bad_fields(missing.value) == ["entries[0].entry"]
    for count in (0, 1001):
        with pytest.raises(grpc.aio.AioRpcError) as sized:
            await ledger.AppendBatch(batch([entry(n) for n in range(count)]))
        assert sized.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_fields(sized.value) == ["entries"]
    assert await tree_size(ledger) == size


@pytest.fixture
def own_vault(tmp_path: Path) -> Iterator[DevVault]:
    """A Vault of its own: this test stops it."""
    vault = DevVault(
        port=free_port(with_next=True), log_file=tmp_path / "vault.log", die_with_parent=True
    )
    vault.start()
    vault.provision()
    yield vault
    vault.stop()


@pytest.fixture
async def ledger_on_own_vault(
    mongo_server: Any, own_vault: DevVault
) -> AsyncIterator[tuple[Any, DevVault]]:
    server: ServiceServer = await start_ledger(mongo_server, own_vault, f"t{uuid.uuid4().hex[:12]}")
    channel = TEST_TOKENS.channel(f"127.0.0.1:{server.port}")
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    for _ in range(100):
        try:
            await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    yield stub, own_vault
    await channel.close()
    await server.stop(0)


async def test_vault_down_writes_nothing_of_the_batch(
    ledger_on_own_vault: tuple[Any, DevVault],
) -> None:
    stub, vault = ledger_on_own_vault
    vkey = await vkey_of(stub)
    first = await stub.AppendBatch(batch([entry(n) for n in range(3)]))
    verify_checkpoint(first.receipts[0].checkpoint, [vkey], [], 0, origin=ORIGIN)
    size = await tree_size(stub)
    vault.stop()
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.AppendBatch(batch([entry(n) for n in range(10, 20)]), timeout=20)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await tree_size(stub) == size
    listed = await stub.ListEntries(ledger_pb2.ListEntriesRequest(start_index=0, page_size=100))
    assert len(listed.entries) == size
