"""Two witnesses as the local stack runs them (``python -m medledger.witness`` with the
stack's environment), cosigning checkpoints signed by the ledger's key in Vault: a verifier
holding only the keys the stack hands the ledger accepts them with a quorum of two."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import VaultSettings
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import LEDGER_CHECKPOINT_KEY
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import free_ports
from medledger.devstack.services import (
    LEDGER_ORIGIN,
    SERVICE_PORTS,
    WITNESSES,
    ServiceServer,
    StackEndpoints,
    read_stack_keys,
    service_env,
)
from medledger.testkit.platform import Platform, authed_channel
from medledger.tlog import (
    Checkpoint,
    CompactRange,
    NoteSignature,
    VerifierKey,
    format_note,
    leaf_hash,
    verify_checkpoint,
)
from medledger.tlog.reference import consistency_proof

LEAVES = [leaf_hash(b"event %d" % i) for i in range(32)]


class WitnessProcess(ServiceServer):
    """A stack witness with a database of its own, so test runs never share state."""

    def __init__(
        self, name: str, endpoints: StackEndpoints, logs: Path, database: str, identity: str
    ) -> None:
        super().__init__(
            name, endpoints=endpoints, log_file=logs / f"{name}.log", die_with_parent=True
        )
        self.database = database
        self.identity = identity

    def env(self) -> dict[str, str]:
        return service_env(self.component, self.endpoints) | {
            "MEDLEDGER_MONGODB_DATABASE": self.database,
            "MEDLEDGER_HEALTH_INTERVAL_SECONDS": "0.5",
            "MEDLEDGER_IDENTITY_ADDR": self.identity,
        }


# A log's sequencer holds witness.add; the calls below carry such a token.
TOKEN: list[str] = [""]


@pytest.fixture(autouse=True)
async def sequencer_token(auth_platform: Platform) -> None:
    TOKEN[0] = await auth_platform.token("witness.add")


@pytest.fixture(scope="module")
def endpoints(mongo_server: MongoServer, vault_server: Any) -> StackEndpoints:
    return StackEndpoints(
        mongo_uri=mongo_server.uri,
        vault_addr=vault_server.addr,
        vault_tokens=vault_server.service_tokens,
        triton_url="",
        service_ports=dict(zip(SERVICE_PORTS, free_ports(len(SERVICE_PORTS)), strict=True)),
        # As `medledger dev up` does: the operators read the public keys the services trust.
        keys=read_stack_keys(vault_server.addr, vault_server.operator_token),
    )


@pytest.fixture(scope="module")
def witnesses(
    endpoints: StackEndpoints,
    tmp_path_factory: pytest.TempPathFactory,
    auth_platform: Platform,
) -> Iterator[dict[str, WitnessProcess]]:
    logs = tmp_path_factory.mktemp("witness-logs")
    run = uuid.uuid4().hex[:8]
    servers = {
        name: WitnessProcess(
            name, endpoints, logs, f"{identity.database}_{run}", auth_platform.identity_address
        )
        for name, identity in WITNESSES.items()
    }
    for server in servers.values():
        server.start()  # waits for SERVING
    yield servers
    for server in servers.values():
        server.stop()


class VaultLedger:
    """Signs checkpoints of the test tree with the ledger's checkpoint key in Vault."""

    def __init__(self, vault: Any, vkey: str) -> None:
        self.transit = VaultTransit(VaultSettings(addr=vault.addr, token=vault.token_for("ledger")))
        self.key_id = VerifierKey.parse(vkey).key_id

    async def checkpoint(self, size: int) -> bytes:
        tree = CompactRange()
        tree.extend(LEAVES[:size])
        body = Checkpoint(LEDGER_ORIGIN, size, tree.root()).body()
        signed = await self.transit.sign(LEDGER_CHECKPOINT_KEY, body)
        return format_note(body, [NoteSignature(LEDGER_ORIGIN, self.key_id, signed.signature)])


def proof(old_size: int, new_size: int) -> list[bytes]:
    return [] if old_size in (0, new_size) else consistency_proof(old_size, LEAVES[:new_size])


async def cosign(server: ServiceServer, old_size: int, new_size: int, note: bytes) -> bytes:
    async with authed_channel(server.address, TOKEN[0]) as channel:
        stub = witness_pb2_grpc.WitnessServiceStub(channel)
        reply = await stub.AddCheckpoint(
            witness_pb2.AddCheckpointRequest(
                old_size=old_size, consistency_proof=proof(old_size, new_size), checkpoint=note
            )
        )
    return bytes(reply.cosignature)


async def info(server: ServiceServer) -> witness_pb2.GetWitnessInfoResponse:
    async with authed_channel(server.address, TOKEN[0]) as channel:
        stub = witness_pb2_grpc.WitnessServiceStub(channel)
        return await stub.GetWitnessInfo(witness_pb2.GetWitnessInfoRequest())


async def test_both_witnesses_cosign_the_ledger_checkpoints(
    witnesses: dict[str, WitnessProcess], vault_server: Any
) -> None:
    keys = next(iter(witnesses.values())).endpoints.keys
    assert keys is not None
    ledger_env = service_env(
        "ledger", dataclasses.replace(witnesses["witness-a"].endpoints, keys=keys)
    )
    witness_vkeys = ledger_env["LEDGER_WITNESS_VKEYS"].split(",")
    addresses = ledger_env["LEDGER_WITNESSES"].split(",")
    assert addresses == [witnesses[name].address for name in WITNESSES]
    ledger = VaultLedger(vault_server, keys.ledger_vkey)
    for old_size, new_size in ((0, 4), (4, 9), (9, 16)):
        note = await ledger.checkpoint(new_size)
        cosigned = note
        for server in witnesses.values():
            cosigned += await cosign(server, old_size, new_size, note)
        checkpoint = verify_checkpoint(cosigned, [keys.ledger_vkey], witness_vkeys, 2)
        assert checkpoint.size == new_size
    for name, server in witnesses.items():
        reply = await info(server)
        assert reply.name == WITNESSES[name].name
        assert reply.vkey == keys.witness_vkeys[name]
        assert [(log.origin, log.size) for log in reply.logs] == [(LEDGER_ORIGIN, 16)]
    ledger.transit.close()


async def test_each_witness_keeps_its_own_state_across_a_restart(
    witnesses: dict[str, WitnessProcess], vault_server: Any
) -> None:
    a, b = witnesses["witness-a"], witnesses["witness-b"]
    keys = a.endpoints.keys
    assert keys is not None
    ledger = VaultLedger(vault_server, keys.ledger_vkey)
    start = (await info(a)).logs[0].size
    await cosign(a, start, 20, await ledger.checkpoint(20))
    assert (await info(b)).logs[0].size == start  # another organisation, another state
    b.stop()
    b.start()
    assert (await info(b)).logs[0].size == start
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cosign(b, 20, 24, await ledger.checkpoint(24))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await cosign(b, start, 24, await ledger.checkpoint(24))
    ledger.transit.close()


async def test_the_cli_prints_each_witness_key_in_the_order_given(
    witnesses: dict[str, WitnessProcess],
) -> None:
    """``medledger ledger vkey --witness A --witness B`` prints what the README feeds to
    ``medledger verify receipt --witness-vkey``."""
    keys = next(iter(witnesses.values())).endpoints.keys
    assert keys is not None
    names = list(reversed(WITNESSES))
    args = [option for name in names for option in ("--witness", witnesses[name].address)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "medledger.cli.main", "ledger", "vkey", "--token", TOKEN[0], *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
    assert output.decode().splitlines() == [keys.witness_vkeys[name] for name in names]
