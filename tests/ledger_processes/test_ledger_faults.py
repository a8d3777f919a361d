"""The ledger under faults, as real processes: Vault down, kill -9 during appends,
two replicas with the writer killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import MongoClient

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.devstack.process import free_port, free_ports
from medledger.devstack.services import (
    SERVICE_PORTS,
    ServiceServer,
    StackEndpoints,
    service_env,
)
from medledger.devstack.vault import PersistentVault
from medledger.testkit.platform import Platform, authed_channel
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.verify import verify_consistency, verify_inclusion

# The token every call carries: appends and reads (set once per module by ``token``).
TOKEN: list[str] = [""]
IDENTITY: list[str] = [""]


@pytest.fixture(autouse=True)
async def token(auth_platform: Platform) -> str:
    TOKEN[0] = await auth_platform.token("ledger.append ledger.read")
    IDENTITY[0] = auth_platform.identity_address
    return TOKEN[0]


class LedgerProcess(ServiceServer):
    """``python -m medledger.ledger`` with its own database and a short lease."""

    def __init__(
        self, endpoints: StackEndpoints, log_file: Path, database: str, identity: str
    ) -> None:
        super().__init__("ledger", endpoints=endpoints, log_file=log_file, die_with_parent=True)
        self.database = database
        self.identity = identity

    def env(self) -> dict[str, str]:
        env = service_env("ledger", self.endpoints)
        env |= {
            "MEDLEDGER_MONGODB_DATABASE": self.database,
            "LEDGER_LEASE_TTL_SECONDS": "2",
            "MEDLEDGER_HEALTH_INTERVAL_SECONDS": "0.5",
            "MEDLEDGER_SHUTDOWN_GRACE_SECONDS": "1",
            "MEDLEDGER_IDENTITY_ADDR": self.identity,
        }
        return env

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.process.is_running() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not self.process.is_running()


def entry(n: int) -> ledger_pb2.LedgerEntry:
    now = Timestamp()
    now.GetCurrentTime()
    return ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_RECORD_CREATED,
        subject=n.to_bytes(32, "big"),
        content_commitment=bytes(32),
        actor="client-1",
        organization="org-a",
        time=now,
    )


def endpoints(mongo_uri: str, vault: Any) -> StackEndpoints:
    return StackEndpoints(
        mongo_uri=mongo_uri,
        vault_addr=vault.addr,
        vault_tokens=vault.service_tokens,
        triton_url="",
        service_ports=dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True)),
    )


async def wait_for_checkpoint(address: str, within: float = 20) -> bytes:
    deadline = time.monotonic() + within
    async with authed_channel(address, TOKEN[0]) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        while True:
            try:
                reply = await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=2)
                return bytes(reply.checkpoint)
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def vkey(address: str) -> str:
    async with authed_channel(address, TOKEN[0]) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        return str((await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey)


@pytest.fixture(scope="module")
def persistent_vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PersistentVault]:
    root = tmp_path_factory.mktemp("vault")
    vault = PersistentVault(
        port=free_port(with_next=True),
        state_dir=root / "state",
        log_file=root / "vault.log",
        die_with_parent=True,
    )
    vault.start()
    vault.provision()
    yield vault
    vault.stop()


def count_entries(mongo_uri: str, database: str) -> int:
    with MongoClient(mongo_uri) as client:
        return client[database]["ledger_entries"].count_documents({})


async def test_vault_down_fails_unavailable_and_writes_nothing(
    mongo_server: Any, persistent_vault: PersistentVault, tmp_path: Path
) -> None:
    database = f"vault{uuid.uuid4().hex[:8]}"
    ledger = LedgerProcess(
        endpoints(mongo_server.uri, persistent_vault), tmp_path / "l.log", database, IDENTITY[0]
    )
    ledger.start()
    try:
        await wait_for_checkpoint(ledger.address)
        async with authed_channel(ledger.address, TOKEN[0]) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            await stub.Append(ledger_pb2.AppendRequest(entry=entry(1)))
            before = (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
            persistent_vault.stop()
            try:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Append(ledger_pb2.AppendRequest(entry=entry(2)), timeout=30)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert count_entries(mongo_server.uri, database) == 1
                after = (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
                assert after == before
            finally:
                persistent_vault.start()  # unseals; the same key is back
            receipt = (
                await stub.Append(ledger_pb2.AppendRequest(entry=entry(3)), timeout=30)
            ).receipt
            assert receipt.leaf_index == 1
            log_key = await vkey(ledger.address)
            checkpoint = verify_checkpoint(receipt.checkpoint, [log_key], [], 0)
            verify_inclusion(
                receipt.leaf_hash,
                1,
                checkpoint.size,
                list(receipt.inclusion_proof),
                checkpoint.root_hash,
            )
    finally:
        ledger.stop()


async def _append_stream(
    address: str,
    prefix: str,
    acked: dict[str, ledger_pb2.Receipt],
    stop: asyncio.Event,
    wrote: asyncio.Event,
) -> None:
    """Appends until ``stop`` is set; records every acknowledged receipt and sets ``wrote``.

    A refusal is retried as a client would on UNAVAILABLE: a ledger restarted after a crash
    answers "retry later" until the dead writer's lease has expired and it holds the lease.
    """
    async with authed_channel(address, TOKEN[0]) as ch:
        stub = ledger_pb2_grpc.LedgerServiceStub(ch)
        n = 0
        while not stop.is_set():
            key = f"{prefix}-{n}"
            try:
                reply = await stub.Append(
                    ledger_pb2.AppendRequest(entry=entry(n), idempotency_key=key), timeout=5
                )
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.05)
                continue
            acked[key] = reply.receipt
            wrote.set()
            n += 1


CRASHES = 10


async def test_kill_9_during_appends_loses_nothing_acknowledged(
    mongo_server: Any, vault_server: Any, tmp_path: Path
) -> None:
    database = f"crash{uuid.uuid4().hex[:8]}"
    where = endpoints(mongo_server.uri, vault_server)
    acked: dict[str, ledger_pb2.Receipt] = {}
    rng = random.Random(7)
    rounds_that_wrote = 0
    for round_ in range(CRASHES):
        ledger = LedgerProcess(where, tmp_path / f"ledger-{round_}.log", database, IDENTITY[0])
        ledger.start()
        await wait_for_checkpoint(ledger.address)
        stop, wrote = asyncio.Event(), asyncio.Event()
        writers = [
            asyncio.create_task(
                _append_stream(ledger.address, f"r{round_}w{w}", acked, stop, wrote)
            )
            for w in range(8)
        ]
        # Kill while appends flow: once this process has acknowledged one, at a random moment.
        # A writer killed inside its commit leaves a transaction that holds the lease and tree
        # documents until the database reaps it (mongod: transactionLifetimeLimitSeconds, 60 s;
        # secantusdb reaps only when another transaction runs): later processes cannot take
        # over until then, and are restarted and killed again without writing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wrote.wait(), 4)
        rounds_that_wrote += wrote.is_set()
        await asyncio.sleep(rng.uniform(0.05, 0.5))
        ledger.kill()
        stop.set()
        await asyncio.gather(*writers)
    ledger = LedgerProcess(where, tmp_path / "ledger-final.log", database, IDENTITY[0])
    ledger.start()
    try:
        await wait_for_checkpoint(ledger.address)
        log_key = await vkey(ledger.address)
        async with authed_channel(ledger.address, TOKEN[0]) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            latest = verify_checkpoint(
                (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint,
                [log_key],
                [],
                0,
            )
            # The stream really ran (at least the first writer appended before its kill).
            assert rounds_that_wrote >= 1
            assert len(acked) >= rounds_that_wrote
            indices = [r.leaf_index for r in acked.values()]
            assert len(set(indices)) == len(indices), "an index was acknowledged twice"
            for receipt in acked.values():
                stored = await stub.GetEntry(
                    ledger_pb2.GetEntryRequest(leaf_index=receipt.leaf_index)
                )
                assert leaf_hash(stored.entry_bytes) == receipt.leaf_hash
                issued = verify_checkpoint(receipt.checkpoint, [log_key], [], 0)
                verify_inclusion(
                    receipt.leaf_hash,
                    receipt.leaf_index,
                    issued.size,
                    list(receipt.inclusion_proof),
                    issued.root_hash,
                )
            # Every issued checkpoint is consistent with the final tree.
            token = ""
            checked = 0
            while True:
                page = await stub.ListCheckpoints(
                    ledger_pb2.ListCheckpointsRequest(page_size=500, page_token=token)
                )
                for item in page.checkpoints:
                    old = verify_checkpoint(item.checkpoint, [log_key], [], 0)
                    proof = await stub.GetConsistencyProof(
                        ledger_pb2.GetConsistencyProofRequest(
                            first_size=old.size, second_size=latest.size
                        )
                    )
                    verify_consistency(
                        old.size, latest.size, list(proof.hashes), old.root_hash, latest.root_hash
                    )
                    checked += 1
                token = page.next_page_token
                if not token:
                    break
            assert checked > 0
        assert count_entries(mongo_server.uri, database) == latest.size
    finally:
        ledger.stop()


async def test_two_replicas_one_writer_and_takeover(
    mongo_server: Any, vault_server: Any, tmp_path: Path
) -> None:
    database = f"replicas{uuid.uuid4().hex[:8]}"
    # Each replica gets its own port (its own endpoints).
    first = LedgerProcess(
        endpoints(mongo_server.uri, vault_server), tmp_path / "a.log", database, IDENTITY[0]
    )
    second = LedgerProcess(
        endpoints(mongo_server.uri, vault_server), tmp_path / "b.log", database, IDENTITY[0]
    )
    first.start()
    await wait_for_checkpoint(first.address)
    second.start()
    with MongoClient(mongo_server.uri) as client:
        lease = client[database]["ledger_state"].find_one({"_id": "sequencer"})
    assert lease is not None
    leader, follower = (first, second) if lease["address"] == first.address else (second, first)
    try:
        # Appends through either replica land in one log, written by the leader only.
        forwarded = ledger_pb2.AppendRequest(entry=entry(1), idempotency_key="once")
        async with authed_channel(follower.address, TOKEN[0]) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            via_follower = await stub.Append(forwarded, timeout=10)
        async with authed_channel(leader.address, TOKEN[0]) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            via_leader = await stub.Append(ledger_pb2.AppendRequest(entry=entry(2)), timeout=10)
            # The writer scoped the forwarded key by the same caller: a retry finds it.
            retried = await stub.Append(forwarded, timeout=10)
        assert {via_follower.receipt.leaf_index, via_leader.receipt.leaf_index} == {0, 1}
        assert retried.receipt.leaf_index == via_follower.receipt.leaf_index
        with MongoClient(mongo_server.uri) as client:
            token_before = client[database]["ledger_state"].find_one({"_id": "sequencer"})["token"]
        leader.kill()
        # The follower takes over once the lease expires, with a new fencing token.
        async with authed_channel(follower.address, TOKEN[0]) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            deadline = time.monotonic() + 20
            while True:
                try:
                    after = await stub.Append(ledger_pb2.AppendRequest(entry=entry(3)), timeout=5)
                    break
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.UNAVAILABLE
                    assert time.monotonic() < deadline, "no takeover"
                    await asyncio.sleep(0.2)
        assert after.receipt.leaf_index == 2
        with MongoClient(mongo_server.uri) as client:
            lease = client[database]["ledger_state"].find_one({"_id": "sequencer"})
        assert lease["address"] == follower.address
        assert lease["token"] > token_before
        assert count_entries(mongo_server.uri, database) == 3
    finally:
        first.stop()
        second.stop()


async def test_scopes_decide_who_appends_and_who_reads(
    mongo_server: Any, vault_server: Any, auth_platform: Platform, tmp_path: Path
) -> None:
    database = f"scopes{uuid.uuid4().hex[:8]}"
    ledger = LedgerProcess(
        endpoints(mongo_server.uri, vault_server), tmp_path / "l.log", database, IDENTITY[0]
    )
    ledger.start()
    try:
        await wait_for_checkpoint(ledger.address)
        reader = await auth_platform.token("ledger.read")
        partner = await auth_platform.token("system/Observation.rs")
        async with authed_channel(ledger.address, reader) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
            with pytest.raises(grpc.aio.AioRpcError) as cannot_append:
                await stub.Append(ledger_pb2.AppendRequest(entry=entry(1)))
        async with authed_channel(ledger.address, partner) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as cannot_read:
                await ledger_pb2_grpc.LedgerServiceStub(ch).GetEntry(
                    ledger_pb2.GetEntryRequest(leaf_index=0)
                )
        async with authed_channel(ledger.address, reader + "x") as ch:
            with pytest.raises(grpc.aio.AioRpcError) as forged:
                await ledger_pb2_grpc.LedgerServiceStub(ch).GetCheckpoint(
                    ledger_pb2.GetCheckpointRequest()
                )
    finally:
        ledger.stop()
    assert cannot_append.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert cannot_read.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert forged.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert count_entries(mongo_server.uri, database) == 0
