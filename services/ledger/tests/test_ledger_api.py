"""The ledger API against real MongoDB and OpenBao: receipts verified by the independent
verifier, idempotency, bad input, reads, proofs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.errors import from_rpc_error
from medledger.common.server import ServiceServer
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS, authed_channel
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.errors import ProofError
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.verify import verify_consistency, verify_inclusion

ORIGIN = "test.medledger/ledger"


def entry(n: int = 0, **overrides: Any) -> ledger_pb2.LedgerEntry:
    now = Timestamp()
    now.GetCurrentTime()
    fields: dict[str, Any] = {
        "kind": ledger_pb2.EVENT_KIND_RECORD_READ,
        "subject": n.to_bytes(32, "big"),
        "resource": ledger_pb2.ResourceRef(type="Observation", id=f"obs-{n}", version=1),
        "content_commitment": bytes(32),
        "actor": "client-1",
        "organization": "org-a",
        "time": now,
        "trace_id": bytes(16),
    }
    fields.update(overrides)
    return ledger_pb2.LedgerEntry(**fields)


async def start_ledger(
    mongo_server: Any, vault_server: Any, database: str, **config: Any
) -> ServiceServer:
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0, health_interval_seconds=0.2),
        LedgerConfig(origin=ORIGIN, lease_ttl_seconds=2, **config),
        MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    return server


@pytest.fixture
async def ledger_server(mongo_server: Any, vault_server: Any) -> AsyncIterator[ServiceServer]:
    server = await start_ledger(mongo_server, vault_server, f"t{uuid.uuid4().hex[:12]}")
    yield server
    await server.stop(0)


@pytest.fixture
async def ledger(ledger_server: ServiceServer) -> AsyncIterator[Any]:
    server = ledger_server
    channel = TEST_TOKENS.channel(f"127.0.0.1:{server.port}")
    stub = ledger_pb2_grpc.LedgerServiceStub(channel)
    for _ in range(100):  # until the sequencer holds the lease and the log has a checkpoint
        try:
            await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.1)
    yield stub
    await channel.close()


async def vkey_of(stub: Any) -> str:
    return str((await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey)


def check_receipt(receipt: ledger_pb2.Receipt, vkey: str, data: bytes | None = None) -> Checkpoint:
    """Verification with public material only, by code that shares nothing with the
    service's proof builder (tlog.verify follows the RFC's algorithm text)."""
    checkpoint = verify_checkpoint(receipt.checkpoint, [vkey], [], 0, origin=ORIGIN)
    verify_inclusion(
        receipt.leaf_hash,
        receipt.leaf_index,
        checkpoint.size,
        list(receipt.inclusion_proof),
        checkpoint.root_hash,
    )
    if data is not None:
        assert receipt.leaf_hash == leaf_hash(data)
    return checkpoint


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    return [v.field for v in from_rpc_error(error).violations]


async def test_concurrent_appends_get_distinct_verifiable_receipts(ledger: Any) -> None:
    vkey = await vkey_of(ledger)
    responses = await asyncio.gather(
        *(ledger.Append(ledger_pb2.AppendRequest(entry=entry(n))) for n in range(40))
    )
    receipts = [r.receipt for r in responses]
    assert sorted(r.leaf_index for r in receipts) == list(range(40))
    for n, receipt in enumerate(receipts):
        data = (
            await ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=receipt.leaf_index))
        ).entry_bytes
        check_receipt(receipt, vkey, data)
        fetched = await ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=receipt.leaf_index))
        assert fetched.entry.subject == n.to_bytes(32, "big")
    # A tampered proof fails.
    tampered = ledger_pb2.Receipt()
    tampered.CopyFrom(receipts[3])
    tampered.inclusion_proof[0] = bytes(32)
    with pytest.raises(ProofError):
        check_receipt(tampered, vkey)


async def test_callers_giving_up_do_not_fail_the_others_in_their_batch(ledger: Any) -> None:
    """Appends whose callers time out at once (their entries may be integrated all the same)
    share batches with others; those others all get their receipts. Before, a caller's
    deadline cancelled its waiter's future, the batch's set_result on it raised
    InvalidStateError, and every append of the batch failed, committed or not."""

    async def hasty(n: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            # Deadlines from 2 to 40 ms: some expire while the append waits for its batch.
            deadline = 0.002 * (1 + n % 20)
            await ledger.Append(ledger_pb2.AppendRequest(entry=entry(1000 + n)), timeout=deadline)

    async def patient(n: int) -> ledger_pb2.AppendResponse:
        return await ledger.Append(ledger_pb2.AppendRequest(entry=entry(n)))

    for round_ in range(3):
        answered = await asyncio.gather(
            *(hasty(round_ * 100 + n) for n in range(20)),
            *(patient(round_ * 100 + n) for n in range(20)),
        )
        receipts = [a.receipt for a in answered if a is not None]
        assert len(receipts) == 20
        assert len({r.leaf_index for r in receipts}) == 20
    after = await patient(999)
    assert after.receipt.leaf_hash


async def test_idempotency_key_returns_the_same_receipt(ledger: Any) -> None:
    original = entry(1)
    first = await ledger.Append(ledger_pb2.AppendRequest(entry=original, idempotency_key="req-1"))
    await ledger.Append(ledger_pb2.AppendRequest(entry=entry(2)))
    again = await ledger.Append(ledger_pb2.AppendRequest(entry=original, idempotency_key="req-1"))
    assert again.receipt == first.receipt
    latest = await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
    assert Checkpoint.parse(latest.checkpoint.split(b"\n\n")[0] + b"\n").size == 2
    with pytest.raises(grpc.aio.AioRpcError) as reused:
        await ledger.Append(ledger_pb2.AppendRequest(entry=entry(9), idempotency_key="req-1"))
    assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_idempotency_keys_are_each_callers_own(ledger: Any, ledger_server: Any) -> None:
    """A key another holder of ledger.append can predict (identity's keys name the event and
    the resource) neither blocks the owner's append nor hands its receipt to someone else."""
    key = "identity:key-rotated:identity-token:2"
    address = f"127.0.0.1:{ledger_server.port}"
    squatter = TEST_TOKENS.token(["ledger.append"], subject="hospital-b-app")
    owner = TEST_TOKENS.token(["ledger.append"], subject="medledger-identity")
    async with authed_channel(address, squatter) as first, authed_channel(address, owner) as second:
        squatted = await ledger_pb2_grpc.LedgerServiceStub(first).Append(
            ledger_pb2.AppendRequest(entry=entry(1), idempotency_key=key)
        )
        mine = entry(2)
        owned = await ledger_pb2_grpc.LedgerServiceStub(second).Append(
            ledger_pb2.AppendRequest(entry=mine, idempotency_key=key)
        )
        retried = await ledger_pb2_grpc.LedgerServiceStub(second).Append(
            ledger_pb2.AppendRequest(entry=mine, idempotency_key=key)
        )
    assert squatted.receipt.leaf_index != owned.receipt.leaf_index
    assert retried.receipt == owned.receipt
    listed = await ledger.ListEntries(ledger_pb2.ListEntriesRequest())
    assert [e.entry.subject for e in listed.entries] == [entry(1).subject, mine.subject]


async def test_same_key_in_one_batch_gives_one_leaf(ledger: Any) -> None:
    same = entry(7)
    responses = await asyncio.gather(
        *(
            ledger.Append(ledger_pb2.AppendRequest(entry=same, idempotency_key="same"))
            for _ in range(5)
        )
    )
    assert len({r.receipt.leaf_index for r in responses}) == 1
    listed = await ledger.ListEntries(ledger_pb2.ListEntriesRequest())
    assert len(listed.entries) == 1


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"subject": b"short"}, ["entry.subject"]),
        ({"kind": 0}, ["entry.kind"]),
        ({"actor": "Jane Doe"}, ["entry.actor"]),
        ({"organization": ""}, ["entry.organization"]),
        (
            {"content_commitment": b"x" * 31, "trace_id": b"x"},
            ["entry.content_commitment", "entry.trace_id"],
        ),
        ({"nonce": b"n" * 15}, ["entry.nonce"]),
        ({"nonce": b"n" * 33}, ["entry.nonce"]),
        ({"subject": b"", "nonce": b"n" * 16}, ["entry.nonce"]),
        (
            {"resource": ledger_pb2.ResourceRef(type="observation", id="a b", version=-1)},
            ["entry.resource.type", "entry.resource.id", "entry.resource.version"],
        ),
    ],
)
async def test_bad_entries_are_refused_naming_the_field(
    ledger: Any, overrides: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.Append(ledger_pb2.AppendRequest(entry=entry(0, **overrides)))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == fields
    assert "Jane" not in (refused.value.details() or "")
    listed = await ledger.ListEntries(ledger_pb2.ListEntriesRequest())
    assert list(listed.entries) == []


async def test_missing_time_unknown_fields_and_bad_key(ledger: Any) -> None:
    no_time = entry(0)
    no_time.ClearField("time")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.Append(ledger_pb2.AppendRequest(entry=no_time))
    assert bad_fields(refused.value) == ["entry.time"]
    smuggled = ledger_pb2.LedgerEntry()
    smuggled.ParseFromString(entry(0).SerializeToString() + b"\xfa\x07\x04name")  # field 127
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.Append(ledger_pb2.AppendRequest(entry=smuggled))
    assert bad_fields(refused.value) == ["entry"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.Append(ledger_pb2.AppendRequest(entry=entry(0), idempotency_key="a b"))
    assert bad_fields(refused.value) == ["idempotency_key"]


async def test_reads_pages_and_proofs(ledger: Any) -> None:
    vkey = await vkey_of(ledger)
    sizes = []
    for batch in range(3):
        await asyncio.gather(
            *(
                ledger.Append(ledger_pb2.AppendRequest(entry=entry(batch * 10 + n)))
                for n in range(10)
            )
        )
        note = (await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
        sizes.append(verify_checkpoint(note, [vkey], [], 0).size)
    assert sizes[-1] == 30
    # Pagination walks every entry once, in order.
    seen: list[int] = []
    token = ""
    while True:
        page = await ledger.ListEntries(
            ledger_pb2.ListEntriesRequest(page_size=7, page_token=token)
        )
        seen.extend(e.leaf_index for e in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(30))
    # Every issued checkpoint is listed, and each is consistent with the latest.
    issued: list[int] = []
    token = ""
    while True:
        listed = await ledger.ListCheckpoints(
            ledger_pb2.ListCheckpointsRequest(page_size=2, page_token=token)
        )
        for item in listed.checkpoints:
            assert verify_checkpoint(item.checkpoint, [vkey], [], 0).size == item.tree_size
            issued.append(item.tree_size)
        token = listed.next_page_token
        if not token:
            break
    assert issued == sorted(set(issued))
    assert set(sizes) <= set(issued)
    latest = verify_checkpoint(
        (await ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint, [vkey], [], 0
    )
    for size in sizes[:-1]:
        old = verify_checkpoint(
            (
                await ledger.GetInclusionProof(
                    ledger_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=size)
                )
            ).checkpoint,
            [vkey],
            [],
            0,
        )
        proof = await ledger.GetConsistencyProof(
            ledger_pb2.GetConsistencyProofRequest(first_size=size, second_size=latest.size)
        )
        verify_consistency(
            old.size, latest.size, list(proof.hashes), old.root_hash, latest.root_hash
        )
    # An inclusion proof by leaf hash.
    data = (await ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=17))).entry_bytes
    by_hash = await ledger.GetInclusionProof(
        ledger_pb2.GetInclusionProofRequest(leaf_hash=leaf_hash(data))
    )
    assert by_hash.leaf_index == 17
    verify_inclusion(leaf_hash(data), 17, by_hash.tree_size, list(by_hash.hashes), latest.root_hash)
    # Asking past the end, or for a size with no checkpoint, is a clear error.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await ledger.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=30))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_checkpoint:
        await ledger.GetInclusionProof(
            ledger_pb2.GetInclusionProofRequest(leaf_index=0, tree_size=29)
        )
    assert no_checkpoint.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await ledger.ListEntries(ledger_pb2.ListEntriesRequest(page_token="nonsense"))
    assert bad_fields(bad_token.value) == ["page_token"]


BEYOND_INT64 = 2**63


@pytest.mark.parametrize(
    ("method", "request_message", "field"),
    [
        (
            "GetInclusionProof",
            ledger_pb2.GetInclusionProofRequest(tree_size=BEYOND_INT64),
            "tree_size",
        ),
        (
            "GetConsistencyProof",
            ledger_pb2.GetConsistencyProofRequest(first_size=BEYOND_INT64),
            "first_size",
        ),
        (
            "GetConsistencyProof",
            ledger_pb2.GetConsistencyProofRequest(second_size=2**64 - 1),
            "second_size",
        ),
        (
            "ListCheckpoints",
            ledger_pb2.ListCheckpointsRequest(after_size=BEYOND_INT64),
            "after_size",
        ),
        ("ListEntries", ledger_pb2.ListEntriesRequest(start_index=BEYOND_INT64), "start_index"),
        ("GetEntry", ledger_pb2.GetEntryRequest(leaf_index=BEYOND_INT64), "leaf_index"),
    ],
)
async def test_sizes_and_indices_from_2_to_the_63_are_invalid_argument(
    ledger: Any, method: str, request_message: Any, field: str
) -> None:
    """uint64 on the wire, int64 in storage: never an OverflowError (INTERNAL) from Mongo."""
    if method == "GetInclusionProof":
        request_message.leaf_index = 0
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await getattr(ledger, method)(request_message)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == [field]


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(253_402_300_800, 0), (-62_135_596_801, 0), (0, -1), (0, 10**9)]
)
async def test_an_entry_time_out_of_timestamp_range_is_invalid_argument(
    ledger: Any, seconds: int, nanos: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.Append(
            ledger_pb2.AppendRequest(entry=entry(0, time=Timestamp(seconds=seconds, nanos=nanos)))
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_fields(refused.value) == ["entry.time"]
