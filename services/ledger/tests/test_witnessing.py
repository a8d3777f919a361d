"""The ledger sends each checkpoint to its witnesses and publishes their cosignatures:
GetCheckpoint then satisfies a verifier that demands both witnesses (quorum 2)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.scopes import LEDGER_APPEND, LEDGER_READ, WITNESS_ADD
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import WITNESS_KEYS, witness_mount
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog.cosignature import verify_checkpoint
from medledger.tlog.note import SIG_ED25519, VerifierKey
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import witness_runtime

ORIGIN = "witnessed.test/ledger"


async def test_checkpoints_are_cosigned_by_both_witnesses(
    mongo_server: Any, vault_server: Any
) -> None:
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger"))
    public = await VaultTransit(vault).public_keys("ledger-checkpoint")
    log_vkey = str(VerifierKey.for_key(ORIGIN, SIG_ED25519, public[max(public)]))
    suffix = uuid.uuid4().hex[:8]
    witnesses = []
    for service, key in WITNESS_KEYS.items():
        settings = WitnessSettings(
            grpc_port=0, witness_name=f"{service}.test", witness_key=key, witness_log_vkeys=log_vkey
        )
        own = VaultSettings(
            addr=vault_server.addr,
            token=vault_server.token_for(service),
            transit_mount=witness_mount(service),
        )
        mongo = MongoSettings(
            MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"{key}-{suffix}"
        )
        server = ServiceServer(
            witness_runtime(settings, mongo, own, verifier=TEST_TOKENS.verifier())
        )
        await server.start()
        witnesses.append(server)
    vkeys = []
    for server in witnesses:
        async with TEST_TOKENS.channel(f"127.0.0.1:{server.port}", [LEDGER_READ]) as ch:
            info = await witness_pb2_grpc.WitnessServiceStub(ch).GetWitnessInfo(
                witness_pb2.GetWitnessInfoRequest()
            )
            vkeys.append(info.vkey)
    ledger = ServiceServer(
        ledger_runtime(
            LedgerSettings(grpc_port=0),
            LedgerConfig(
                origin=ORIGIN,
                lease_ttl_seconds=2,
                witnesses=",".join(f"127.0.0.1:{w.port}" for w in witnesses),
                witness_vkeys=",".join(vkeys),
            ),
            MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"l-{suffix}"),
            vault,
            verifier=TEST_TOKENS.verifier(),
            # Witnesses take checkpoints from the log's sequencer only.
            witness_token=TEST_TOKENS.source([WITNESS_ADD], subject="medledger-ledger"),
        )
    )
    await ledger.start()
    try:
        async with TEST_TOKENS.channel(
            f"127.0.0.1:{ledger.port}", [LEDGER_APPEND, LEDGER_READ]
        ) as ch:
            stub = ledger_pb2_grpc.LedgerServiceStub(ch)
            for round_ in range(3):
                now = Timestamp()
                now.GetCurrentTime()
                entry = ledger_pb2.LedgerEntry(
                    kind=ledger_pb2.EVENT_KIND_RECORD_READ,
                    actor="client-1",
                    organization="org-a",
                    time=now,
                )
                for _ in range(100):
                    try:
                        receipt = (await stub.Append(ledger_pb2.AppendRequest(entry=entry))).receipt
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.1)
                size = round_ + 1
                assert receipt.leaf_index == round_
                # Witnessing is in the background: wait for the cosigned checkpoint.
                for _ in range(100):
                    note = (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())).checkpoint
                    try:
                        checkpoint = verify_checkpoint(note, [log_vkey], vkeys, 2, origin=ORIGIN)
                        if checkpoint.size == size:
                            break
                    except ValueError:
                        pass
                    await asyncio.sleep(0.1)
                else:
                    raise AssertionError(f"checkpoint {size} never got both cosignatures")
    finally:
        await ledger.stop(0)
        for server in witnesses:
            await server.stop(0)
