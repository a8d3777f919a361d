"""The real ledger service, served in this process, each log in its own Mongo database.

The ledger is built by its own wiring (``ledger_runtime``) against the session's real
secantusdb and OpenBao, checking tokens of the test issuer; the CLI under test talks to it
over gRPC on a free port, as an auditor holding ``ledger.read`` (``MEDLEDGER_TOKEN``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.scopes import LEDGER_APPEND, LEDGER_READ
from medledger.common.server import ServiceServer
from medledger.devstack.mongo import MongoServer
from medledger.devstack.vault import DevVault
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS

ORIGIN = "test.medledger/ledger"


def ledger_entry(n: int) -> ledger_pb2.LedgerEntry:
    """An entry as the services write them: identifiers and commitments, no PHI."""
    now = Timestamp()
    now.GetCurrentTime()
    return ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_RECORD_CREATED,
        subject=n.to_bytes(32, "big"),
        resource=ledger_pb2.ResourceRef(type="Observation", id=f"obs-{n}", version=1),
        content_commitment=bytes(31) + bytes([n % 256]),
        actor="client-1",
        organization="org-a",
        time=now,
        trace_id=n.to_bytes(16, "big"),
    )


@dataclass
class LiveLedger:
    address: str
    database: str
    origin: str
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub
    receipts: list[ledger_pb2.Receipt] = field(default_factory=list)

    async def append(self, count: int, *, rounds: int = 1) -> list[ledger_pb2.Receipt]:
        """Appends ``count`` entries in ``rounds`` concurrent waves (each wave is at least
        one batch, so at least one checkpoint).

        The receipts come in request order; within a wave that is not leaf order, so use each
        receipt's own ``leaf_index``."""
        per_round = -(-count // rounds)
        first = len(self.receipts)
        for start in range(first, first + count, per_round):
            numbers = range(start, min(start + per_round, first + count))
            replies = await asyncio.gather(
                *(
                    self.stub.Append(
                        ledger_pb2.AppendRequest(entry=ledger_entry(n), idempotency_key=f"k-{n}")
                    )
                    for n in numbers
                )
            )
            self.receipts.extend(reply.receipt for reply in replies)
        return self.receipts

    async def vkeys(self) -> list[str]:
        reply = await self.stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())
        return [reply.vkey, *reply.previous_vkeys]

    async def entry_bytes(self, index: int) -> bytes:
        reply = await self.stub.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=index))
        return reply.entry_bytes


@asynccontextmanager
async def _serve_ledger(
    mongo: MongoServer, vault: DevVault, database: str | None
) -> AsyncIterator[LiveLedger]:
    database = database or f"ledger_{uuid.uuid4().hex[:12]}"
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0),
        LedgerConfig(origin=ORIGIN, lease_ttl_seconds=3),
        MongoSettings(MONGODB_URI=mongo.uri, MEDLEDGER_MONGODB_DATABASE=database),
        VaultSettings(addr=vault.addr, token=vault.token_for("ledger")),
        verifier=TEST_TOKENS.verifier(),
    )
    server = ServiceServer(runtime)
    await server.start()
    address = f"127.0.0.1:{server.port}"
    try:
        async with TEST_TOKENS.channel(address, [LEDGER_APPEND, LEDGER_READ]) as channel:
            stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
                channel
            )
            # Until the sequencer holds its lease and has issued the empty checkpoint.
            for _ in range(200):
                try:
                    await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=2)
                    break
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
            yield LiveLedger(address, database, ORIGIN, stub)
    finally:
        await server.stop(0)


async def _run_cli(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "medledger.cli.main",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={
            **os.environ,
            "COLUMNS": "200",
            "NO_COLOR": "1",
            "MEDLEDGER_TOKEN": TEST_TOKENS.token([LEDGER_READ], subject="auditor"),
        },
    )
    output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, " ".join(output.decode().split())


LedgerFactory = Callable[..., AbstractAsyncContextManager[LiveLedger]]
Cli = Callable[..., Awaitable[tuple[int, str]]]


@pytest.fixture(scope="session")
def serve_ledger(mongo_server: MongoServer, vault_server: DevVault) -> LedgerFactory:
    """``async with serve_ledger() as ledger``: a ledger over a fresh database, stopped at the
    end (its data stays, for the test to inspect or tamper with). ``serve_ledger(database)``
    serves an existing log: another replica, with nothing cached."""
    return lambda database=None: _serve_ledger(mongo_server, vault_server, database)


@pytest.fixture(scope="session")
def run_cli() -> Cli:
    """``await run_cli("ledger", "audit", ...)``: ``medledger`` as a real process; returns its
    exit status and its output with whitespace collapsed (so wrapped lines compare as one)."""
    return _run_cli
