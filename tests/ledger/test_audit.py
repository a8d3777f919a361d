"""``medledger ledger audit`` against the live ledger: a clean log passes; tampering with any
stored entry, tile or checkpoint, directly in Mongo, fails the audit at the right place.

Every tampering test changes one stored document and puts it back afterwards, so the tests
share one log of a few hundred entries and several checkpoints.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from medledger.common.scopes import LEDGER_READ
from medledger.devstack.mongo import MongoServer
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog import Cosigner, Ed25519Signer

ENTRIES = 300
ROUNDS = 6


@dataclass(frozen=True)
class AuditedLog:
    address: str
    database: str
    vkeys: list[str]
    checkpoint_sizes: list[int]

    def audit_args(self, *extra: str, ledger: str | None = None) -> list[str]:
        options = [option for vkey in self.vkeys for option in ("--vkey", vkey)]
        return ["ledger", "audit", "--ledger", ledger or self.address, *options, *extra]


@pytest.fixture(scope="module")
async def log(serve_ledger: Any, mongo_server: MongoServer) -> AsyncIterator[AuditedLog]:
    async with serve_ledger() as ledger:
        await ledger.append(ENTRIES, rounds=ROUNDS)
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
        try:
            cursor = client[ledger.database]["ledger_checkpoints"].find({}, {"_id": 1})
            sizes = sorted([int(doc["_id"]) async for doc in cursor])
        finally:
            await client.close()
        yield AuditedLog(ledger.address, ledger.database, await ledger.vkeys(), sizes)


Tamper = Callable[[str, Any, str, Callable[[bytes], bytes]], Awaitable[None]]


@pytest.fixture
async def tamper(log: AuditedLog, mongo_server: MongoServer) -> AsyncIterator[Tamper]:
    """``await tamper(collection, _id, field, change)``; restored after the test."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri)
    database = client[log.database]
    originals: list[tuple[str, Any, str, bytes]] = []

    async def change(collection: str, key: Any, field: str, how: Callable[[bytes], bytes]) -> None:
        document = await database[collection].find_one({"_id": key})
        assert document is not None, (collection, key)
        value = bytes(document[field])
        originals.append((collection, key, field, value))
        await database[collection].update_one({"_id": key}, {"$set": {field: how(value)}})

    try:
        yield change
    finally:
        for collection, key, field, value in reversed(originals):
            await database[collection].update_one({"_id": key}, {"$set": {field: value}})
        await client.close()


def flip(offset: int, mask: int = 0x01) -> Callable[[bytes], bytes]:
    return lambda value: value[:offset] + bytes([value[offset] ^ mask]) + value[offset + 1 :]


def test_the_log_has_several_checkpoints(log: AuditedLog) -> None:
    assert log.checkpoint_sizes[0] == 0
    assert log.checkpoint_sizes[-1] == ENTRIES
    assert len(log.checkpoint_sizes) >= ROUNDS + 1


async def test_clean_log_passes(log: AuditedLog, run_cli: Any) -> None:
    code, output = await run_cli(*log.audit_args())
    assert code == 0, output
    assert "ledger audit passed" in output
    assert f"entries {ENTRIES}" in output
    issued = len(log.checkpoint_sizes) - 1  # the empty tree's checkpoint is not listed
    assert f"checkpoints {issued} signed and matching the recomputed roots" in output
    assert f"{issued - 1} consistency proofs verified" in output
    assert f"{ENTRIES} inclusion proofs verified" in output


async def test_empty_log_passes(serve_ledger: Any, run_cli: Any) -> None:
    async with serve_ledger() as ledger:
        (vkey, *_) = await ledger.vkeys()
        code, output = await run_cli("ledger", "audit", "--ledger", ledger.address, "--vkey", vkey)
    assert code == 0, output
    assert "entries 0" in output


async def test_sampled_audit_passes(log: AuditedLog, run_cli: Any) -> None:
    token = TEST_TOKENS.token([LEDGER_READ], subject="another-auditor")
    code, output = await run_cli(*log.audit_args("--sample", "25", "--token", token))
    assert code == 0, output
    assert "25 inclusion proofs verified" in output


async def test_changed_entry_names_its_leaf(log: AuditedLog, run_cli: Any, tamper: Tamper) -> None:
    # Byte 10 of leaf 123's data is inside its 32-byte subject: still a valid LedgerEntry.
    await tamper("ledger_entries", 123, "data", flip(10))
    code, output = await run_cli(*log.audit_args())
    assert code == 1, output
    assert "ledger audit FAILED" in output
    assert "leaf 123: inclusion proof against checkpoint 300 does not verify" in output
    assert "the entry was changed after it was logged" in output


async def test_changed_entry_found_by_roots_when_sampling(
    log: AuditedLog, run_cli: Any, tamper: Tamper
) -> None:
    await tamper("ledger_entries", 123, "data", flip(10))
    code, output = await run_cli(*log.audit_args("--sample", "1"))
    assert code == 1, output
    # Found at the first checkpoint above the leaf (or by the sampled proof, if it was drawn).
    assert "leaf 123: inclusion proof against checkpoint" in output
    assert "the entry was changed after it was logged" in output


async def test_unreadable_entry_names_its_leaf(
    log: AuditedLog, run_cli: Any, tamper: Tamper
) -> None:
    # Byte 0 is the first field's tag: the entry no longer decodes. The ledger still serves
    # its exact bytes, so the audit pins the change on that leaf.
    await tamper("ledger_entries", 77, "data", flip(0, 0xFF))
    code, output = await run_cli(*log.audit_args())
    assert code == 1, output
    assert "leaf 77: inclusion proof against checkpoint" in output
    assert "the entry was changed after it was logged" in output


async def test_changed_tile_hash_names_the_tile(
    log: AuditedLog, serve_ledger: Any, run_cli: Any, tamper: Tamper
) -> None:
    # Tile 0/0 holds the leaf hashes of leaves 0..255; change the stored hash of leaf 10.
    await tamper("ledger_tiles", "0/0", "hashes", flip(10 * 32 + 7))
    # The running ledger caches full tiles; a replica started now reads what is stored.
    async with serve_ledger(log.database) as replica:
        code, output = await run_cli(*log.audit_args(ledger=replica.address))
    assert code == 1, output
    assert "does not verify" in output
    assert "tile 0/0" in output
    assert "holds a wrong hash" in output


async def test_changed_partial_tile_is_seen_at_once(
    log: AuditedLog, run_cli: Any, tamper: Tamper
) -> None:
    # Tile 0/1 (leaves 256..299) is partial: the ledger reads it for every proof.
    await tamper("ledger_tiles", "0/1", "hashes", flip(5 * 32))
    code, output = await run_cli(*log.audit_args())
    assert code == 1, output
    assert "tile 0/1" in output
    assert "holds a wrong hash" in output


async def test_changed_checkpoint_note_fails_its_signature(
    log: AuditedLog, run_cli: Any, tamper: Tamper
) -> None:
    size = log.checkpoint_sizes[len(log.checkpoint_sizes) // 2]

    def change_root(note: bytes) -> bytes:
        origin, tree_size, root, rest = note.split(b"\n", 3)
        digest = bytearray(base64.b64decode(root))
        digest[0] ^= 0x01
        return b"\n".join([origin, tree_size, base64.b64encode(bytes(digest)), rest])

    await tamper("ledger_checkpoints", size, "note", change_root)
    code, output = await run_cli(*log.audit_args())
    assert code == 1, output
    assert f"checkpoint {size}: signature check failed: invalid signature by key" in output


async def test_wrong_vkey_fails_at_the_latest_checkpoint(log: AuditedLog, run_cli: Any) -> None:
    stranger = str(Ed25519Signer.generate("test.medledger/ledger").verifier_key)
    code, output = await run_cli(
        "ledger", "audit", "--ledger", log.address, "--vkey", stranger
    )  # fmt: skip
    assert code == 1, output
    assert "latest checkpoint (GetCheckpoint): note has no valid signature" in output


async def test_unmet_witness_quorum_fails(log: AuditedLog, run_cli: Any) -> None:
    witness = str(Cosigner.generate("witness.org-b.example").verifier_key)
    code, output = await run_cli(*log.audit_args("--witness-vkey", witness, "--quorum", "1"))
    assert code == 1, output
    assert f"no checkpoint up to size {ENTRIES} has 1 valid cosignatures" in output


async def test_unreachable_ledger(run_cli: Any, log: AuditedLog) -> None:
    code, output = await run_cli(
        "ledger", "audit", "--ledger", "127.0.0.1:1", "--vkey", log.vkeys[0], "--timeout", "2"
    )  # fmt: skip
    assert code == 1
    assert "GetCheckpoint at 127.0.0.1:1: UNAVAILABLE" in output


async def test_usage_error_exits_2(run_cli: Any, log: AuditedLog) -> None:
    code, output = await run_cli("ledger", "audit", "--ledger", log.address, "--vkey", "nonsense")
    assert code == 2, output
