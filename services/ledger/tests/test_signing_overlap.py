"""The sequencer has a batch's checkpoint signed while the storage writes the batch (the
step starts before the signature is back), and a signing that fails leaves nothing of the
batch written: its appends fail, and the next batch takes the same indexes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from medledger.common.errors import Unavailable
from medledger.ledger.adapters.mongo_store import LedgerStore
from medledger.ledger.domain.ports import Batch
from medledger.ledger.domain.sequencer import Sequencer, SequencerConfig
from medledger.tlog.note import Ed25519Signer


class GatedSigner:
    """Signs once ``may_sign`` is set; with ``fail``, raises as Vault down does."""

    def __init__(self) -> None:
        self.inner = Ed25519Signer.generate("overlap.test/log")
        self.may_sign = asyncio.Event()
        self.fail = False

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def key_id(self) -> bytes:
        return self.inner.key_id

    async def sign(self, message: bytes) -> bytes:
        await self.may_sign.wait()
        if self.fail:
            raise Unavailable("vault")
        return await self.inner.sign(message)


class WatchedStore(LedgerStore):
    """Lets the signer sign only once a commit has started, noting whether the batch's
    checkpoint was still unsigned then."""

    def __init__(self, client: Any, database: str, signer: GatedSigner) -> None:
        super().__init__(client, database)
        self.signer = signer
        self.started_unsigned: list[bool] = []

    async def commit(self, batch: Batch, *, token: int) -> None:
        self.started_unsigned.append(not batch.signed.done())
        self.signer.may_sign.set()
        await super().commit(batch, token=token)


@pytest.fixture
async def sequenced(mongo_server: Any) -> AsyncIterator[tuple[Sequencer, WatchedStore]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    signer = GatedSigner()
    signer.may_sign.set()  # the new log's empty checkpoint, and a first batch
    store = WatchedStore(client, f"overlap{uuid.uuid4().hex[:8]}", signer)
    sequencer = Sequencer(
        store, signer, SequencerConfig(origin="overlap.test/log", owner="a", address="a:1")
    )
    await sequencer.start()
    try:
        assert await sequencer.wait_until_leader(10)
        await sequencer.append(b"first", "")
        yield sequencer, store
    finally:
        await sequencer.stop()
        await client.close()


async def test_the_checkpoint_is_signed_while_the_batch_is_written(
    sequenced: tuple[Sequencer, WatchedStore],
) -> None:
    sequencer, store = sequenced
    store.signer.may_sign.clear()
    # Signing before writing would wait for a commit that never starts.
    receipt = await asyncio.wait_for(sequencer.append(b"second", ""), 10)
    assert receipt.leaf_index == 1
    assert store.started_unsigned[-1] is True
    assert (await store.latest_checkpoint()).size == 2  # type: ignore[union-attr]


async def test_a_failed_signature_writes_nothing_of_the_batch(
    sequenced: tuple[Sequencer, WatchedStore],
) -> None:
    sequencer, store = sequenced
    store.signer.may_sign.clear()
    store.signer.fail = True
    with pytest.raises(Unavailable):
        await asyncio.wait_for(sequencer.append(b"lost", ""), 10)
    assert await store.tree_size() == 1
    assert await store.entry(1) is None
    assert (await store.latest_checkpoint()).size == 1  # type: ignore[union-attr]
    store.signer.fail = False
    receipt = await asyncio.wait_for(sequencer.append(b"kept", ""), 10)
    assert receipt.leaf_index == 1
    assert await store.entry(1) == b"kept"
