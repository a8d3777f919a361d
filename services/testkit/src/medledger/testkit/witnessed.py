"""A real ledger whose checkpoints two real witnesses cosign, inside the test process.

Each witness is an organisation of its own (``WITNESS_KEYS``): its own transit mount and key
in Vault and its own database. The ledger is configured with their addresses and with the
cosignature keys they publish (``GetWitnessInfo``), and signs its checkpoints with the
deployment's ``ledger-checkpoint`` key; every database is fresh, so the log starts empty.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.errors import Unavailable
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.scopes import LEDGER_APPEND, LEDGER_READ, WITNESS_ADD
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import LEDGER_CHECKPOINT_KEY, WITNESS_KEYS, witness_mount
from medledger.devstack.mongo import MongoServer
from medledger.devstack.vault import DevVault
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.platform import mongo_settings
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog import Checkpoint
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.note import SIG_ED25519, VerifierKey
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import witness_runtime

__all__ = ["WitnessedLedger", "witnessed_ledger"]


@dataclass(frozen=True)
class WitnessedLedger:
    """The running ledger, its witnesses, the keys a verifier trusts them by, and a client
    that appends with the test issuer's ``ledger.append`` token."""

    origin: str
    address: str
    log_vkey: str
    witness_vkeys: list[str]
    server: ServiceServer
    witnesses: list[ServiceServer]
    client: LedgerClient
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub  # reads with a ``ledger.read`` token

    async def append(self, event: LedgerEvent) -> ledger_pb2.Receipt:
        """Appends ``event``; a fresh ledger answers UNAVAILABLE until its sequencer holds the
        writer lease, so this retries for up to ten seconds."""
        for _ in range(100):
            try:
                return await self.client.append(event)
            except Unavailable:
                await asyncio.sleep(0.1)
        raise AssertionError("the ledger never took an append")

    async def leaf(self, leaf_index: int) -> bytes:
        """The exact bytes of the entry at ``leaf_index``, as the ledger stores them."""
        reply = await self.stub.GetEntry(ledger_pb2.GetEntryRequest(leaf_index=leaf_index))
        return reply.entry_bytes

    async def cosigned_checkpoint(self, size: int, within: float = 20.0) -> Checkpoint:
        """The log's checkpoint of ``size`` leaves once both witnesses cosigned it (witnessing
        runs in the background, after the appends)."""
        for _ in range(round(within / 0.1)):
            note = (await self.stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
            try:
                checkpoint = verify_checkpoint(
                    note, [self.log_vkey], self.witness_vkeys, 2, origin=self.origin
                )
                if checkpoint.size == size:
                    return checkpoint
            except ValueError:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"no checkpoint of {size} leaves got both cosignatures")

    async def proven(
        self, appended: ledger_pb2.Receipt, checkpoint: Checkpoint
    ) -> ledger_pb2.Receipt:
        """``appended``'s leaf proven against ``checkpoint`` (what an exporter sends)."""
        proof = await self.stub.GetInclusionProof(
            ledger_pb2.GetInclusionProofRequest(
                leaf_index=appended.leaf_index, tree_size=checkpoint.size
            )
        )
        return ledger_pb2.Receipt(
            leaf_index=appended.leaf_index,
            leaf_hash=appended.leaf_hash,
            checkpoint=proof.checkpoint,
            inclusion_proof=proof.hashes,
        )


async def _witness_vkey(server: ServiceServer) -> str:
    async with TEST_TOKENS.channel(f"127.0.0.1:{server.port}", [LEDGER_READ]) as channel:
        info = await witness_pb2_grpc.WitnessServiceStub(channel).GetWitnessInfo(
            witness_pb2.GetWitnessInfoRequest()
        )
    return info.vkey


@asynccontextmanager
async def witnessed_ledger(
    mongo_server: MongoServer, vault_server: DevVault, origin: str
) -> AsyncIterator[WitnessedLedger]:
    """A ledger of ``origin`` and its two witnesses (named ``<witness>.<origin's host>``),
    on free loopback ports; all stopped at the end."""
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger"))
    public = await VaultTransit(vault).public_keys(LEDGER_CHECKPOINT_KEY)
    log_vkey = str(VerifierKey.for_key(origin, SIG_ED25519, public[max(public)]))
    suffix = uuid.uuid4().hex[:8]
    host = origin.split("/", maxsplit=1)[0]
    async with AsyncExitStack() as stack:
        witnesses = []
        for service, key in WITNESS_KEYS.items():
            witness = ServiceServer(
                witness_runtime(
                    WitnessSettings(
                        grpc_port=0,
                        witness_name=f"{service}.{host}",
                        witness_key=key,
                        witness_log_vkeys=(log_vkey,),
                    ),
                    mongo_settings(mongo_server.uri, f"{key}-{suffix}"),
                    VaultSettings(
                        addr=vault_server.addr,
                        token=vault_server.token_for(service),
                        transit_mount=witness_mount(service),
                    ),
                    verifier=TEST_TOKENS.verifier(),
                )
            )
            await witness.start()
            stack.push_async_callback(witness.stop, 0)
            witnesses.append(witness)
        witness_vkeys = [await _witness_vkey(witness) for witness in witnesses]
        server = ServiceServer(
            ledger_runtime(
                LedgerSettings(grpc_port=0),
                LedgerConfig(
                    origin=origin,
                    lease_ttl_seconds=2,
                    witnesses=",".join(f"127.0.0.1:{w.port}" for w in witnesses),
                    witness_vkeys=",".join(witness_vkeys),
                ),
                mongo_settings(mongo_server.uri, f"ledger-{suffix}"),
                vault,
                verifier=TEST_TOKENS.verifier(),
                # Witnesses take checkpoints from the log's sequencer only.
                witness_token=TEST_TOKENS.source([WITNESS_ADD], subject="medledger-ledger"),
            )
        )
        await server.start()
        stack.push_async_callback(server.stop, 0)
        address = f"127.0.0.1:{server.port}"
        client = LedgerClient(address, ServiceSettings(), token=TEST_TOKENS.source([LEDGER_APPEND]))
        stack.push_async_callback(client.aclose)
        channel = await stack.enter_async_context(TEST_TOKENS.channel(address, [LEDGER_READ]))
        yield WitnessedLedger(
            origin=origin,
            address=address,
            log_vkey=log_vkey,
            witness_vkeys=witness_vkeys,
            server=server,
            witnesses=witnesses,
            client=client,
            stub=ledger_pb2_grpc.LedgerServiceStub(channel),
        )
