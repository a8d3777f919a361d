"""The witness service in-process against the session's real MongoDB and OpenBao, fed by a
test log (an in-memory Ed25519 key over real Merkle trees): C2SP tlog-witness semantics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from medledger.api.witness.v1 import witness_pb2, witness_pb2_grpc
from medledger.common.config import MongoSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.scopes import WITNESS_ADD
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import witness_mount
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault
from medledger.testkit.tokens import TEST_TOKENS
from medledger.tlog import (
    SIG_COSIGNATURE_V1,
    Checkpoint,
    CheckpointError,
    CompactRange,
    Ed25519Signer,
    VerifierKey,
    cosignature_timestamp,
    leaf_hash,
    parse_note,
    sign_note,
    verify_checkpoint,
)
from medledger.tlog.reference import consistency_proof
from medledger.witness.config import WitnessSettings
from medledger.witness.runtime import witness_runtime

ORIGIN = "medledger.test/log"
WITNESS_NAME = "witness-a.medledger.test"
WITNESS_SERVICE = "witness-a"  # the stack's witness whose Vault token and mount it uses
WITNESS_KEY = "witness-a"
NOW = 1_750_000_000


@dataclass
class LogUnderTest:
    """A log of distinct leaves whose checkpoints are signed by an in-memory key."""

    origin: str = ORIGIN
    signer: Ed25519Signer = field(default_factory=lambda: Ed25519Signer.generate(ORIGIN))
    leaves: list[bytes] = field(
        default_factory=lambda: [leaf_hash(b"entry %d" % i) for i in range(64)]
    )

    @property
    def vkey(self) -> str:
        return str(self.signer.verifier_key)

    def root(self, size: int) -> bytes:
        tree = CompactRange()
        tree.extend(self.leaves[:size])
        return tree.root()

    async def checkpoint(self, size: int, root: bytes | None = None) -> bytes:
        body = Checkpoint(self.origin, size, root or self.root(size)).body()
        return await sign_note(body, [self.signer])

    def proof(self, old_size: int, new_size: int) -> list[bytes]:
        if old_size in (0, new_size):
            return []
        return consistency_proof(old_size, self.leaves[:new_size])


@dataclass
class Clock:
    now: float = NOW

    def __call__(self) -> float:
        return self.now


@dataclass
class WitnessUnderTest:
    """The settings of one witness (its own database); ``serving()`` runs it."""

    settings: WitnessSettings
    mongo: MongoSettings
    vault: VaultSettings
    clock: Clock

    @asynccontextmanager
    async def serving(
        self, vault: VaultSettings | None = None
    ) -> AsyncIterator[witness_pb2_grpc.WitnessServiceStub]:
        runtime = witness_runtime(
            self.settings,
            self.mongo,
            vault or self.vault,
            verifier=TEST_TOKENS.verifier(),
            clock=self.clock,
        )
        server = ServiceServer(runtime)
        port = await server.start()
        try:
            # The log's sequencer, allowed to submit and read.
            async with TEST_TOKENS.channel(f"127.0.0.1:{port}", [WITNESS_ADD]) as channel:
                yield witness_pb2_grpc.WitnessServiceStub(channel)
        finally:
            await server.stop(grace=0)


@pytest.fixture
def test_log() -> LogUnderTest:
    return LogUnderTest()


@pytest.fixture
def make_witness(mongo_server: Any, vault_server: Any) -> Callable[..., WitnessUnderTest]:
    """Settings for a witness with a fresh database, following the given logs."""

    def make(*log_vkeys: str, key: str = WITNESS_KEY, vault: Any = None) -> WitnessUnderTest:
        vault = vault or vault_server
        return WitnessUnderTest(
            settings=WitnessSettings(
                grpc_port=0,
                health_interval_seconds=0.2,
                witness_name=WITNESS_NAME,
                witness_key=key,
                witness_log_vkeys=log_vkeys,
            ),
            mongo=MongoSettings.model_validate(
                {
                    "MONGODB_URI": mongo_server.uri,
                    "MEDLEDGER_MONGODB_DATABASE": f"witness_{uuid.uuid4().hex[:12]}",
                }
            ),
            vault=VaultSettings(
                addr=vault.addr,
                token=vault.token_for(WITNESS_SERVICE),
                transit_mount=witness_mount(WITNESS_SERVICE),
            ),
            clock=Clock(),
        )

    return make


@pytest.fixture
def witness(
    make_witness: Callable[..., WitnessUnderTest], test_log: LogUnderTest
) -> WitnessUnderTest:
    return make_witness(test_log.vkey)


def error_details(error: grpc.aio.AioRpcError) -> tuple[MedledgerError, list[str]]:
    """The decoded error of a failed call and the fields its BadRequest names."""
    decoded = from_rpc_error(error)
    return decoded, [v.field for v in decoded.violations]


async def add(
    stub: witness_pb2_grpc.WitnessServiceStub, old_size: int, proof: list[bytes], note: bytes
) -> bytes:
    reply = await stub.AddCheckpoint(
        witness_pb2.AddCheckpointRequest(
            old_size=old_size, consistency_proof=proof, checkpoint=note
        )
    )
    return bytes(reply.cosignature)


async def refused(
    stub: witness_pb2_grpc.WitnessServiceStub, old_size: int, proof: list[bytes], note: bytes
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await add(stub, old_size, proof, note)
    return raised.value


async def advance(
    stub: witness_pb2_grpc.WitnessServiceStub, log: LogUnderTest, old_size: int, new_size: int
) -> bytes:
    """Cosigns checkpoint ``new_size`` from ``old_size``; returns the cosigned note."""
    note = await log.checkpoint(new_size)
    return note + await add(stub, old_size, log.proof(old_size, new_size), note)


async def witness_vkey(stub: witness_pb2_grpc.WitnessServiceStub) -> str:
    return str((await stub.GetWitnessInfo(witness_pb2.GetWitnessInfoRequest())).vkey)


async def states(stub: witness_pb2_grpc.WitnessServiceStub) -> dict[str, tuple[int, bytes]]:
    info = await stub.GetWitnessInfo(witness_pb2.GetWitnessInfoRequest())
    return {log.origin: (log.size, bytes(log.root_hash)) for log in info.logs}


async def test_a_chain_of_checkpoints_is_cosigned(
    witness: WitnessUnderTest, test_log: LogUnderTest, vault_server: Any
) -> None:
    async with witness.serving() as stub:
        vkey = await witness_vkey(stub)
        for old_size, new_size in ((0, 3), (3, 8), (8, 13)):
            witness.clock.now += 7
            cosigned = await advance(stub, test_log, old_size, new_size)
            checkpoint = verify_checkpoint(cosigned, [test_log.vkey], [vkey], 1)
            assert (checkpoint.size, checkpoint.root_hash) == (new_size, test_log.root(new_size))
            line = parse_note(cosigned).signatures[-1]
            assert line.name == WITNESS_NAME
            assert cosignature_timestamp(line.signature) == int(witness.clock.now)
        assert await states(stub) == {ORIGIN: (13, test_log.root(13))}
        info = await stub.GetWitnessInfo(witness_pb2.GetWitnessInfoRequest())
        assert info.name == WITNESS_NAME
    # The advertised key is the Vault key's latest version, as a type 0x04 vkey.
    transit = VaultTransit(
        VaultSettings(
            addr=vault_server.addr,
            token=vault_server.token,
            transit_mount=witness_mount(WITNESS_SERVICE),
        )
    )
    keys = await transit.public_keys(WITNESS_KEY)
    transit.close()
    expected = VerifierKey.for_key(WITNESS_NAME, SIG_COSIGNATURE_V1, keys[max(keys)])
    assert vkey == str(expected)


async def test_the_response_is_one_signature_line(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        note = await test_log.checkpoint(5)
        line = await add(stub, 0, [], note)
    assert line.startswith(f"\u2014 {WITNESS_NAME} ".encode())
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1


async def test_a_resubmission_gets_a_fresh_cosignature(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        vkey = await witness_vkey(stub)
        first = await advance(stub, test_log, 0, 6)
        witness.clock.now += 60
        again = await advance(stub, test_log, 6, 6)
        assert again != first
        for cosigned in (first, again):
            verify_checkpoint(cosigned, [test_log.vkey], [vkey], 1)
        stamps = [
            cosignature_timestamp(parse_note(n).signatures[-1].signature) for n in (first, again)
        ]
        assert stamps == [NOW, NOW + 60]
        assert await states(stub) == {ORIGIN: (6, test_log.root(6))}


async def test_a_fork_is_refused(witness: WitnessUnderTest, test_log: LogUnderTest) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 8)
        other = await test_log.checkpoint(8, root=test_log.root(7))
        error = await refused(stub, 8, [], other)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = error_details(error)
        assert info.reason == "FORK"
        assert info.metadata["witness_size"] == "8"
        assert await states(stub) == {ORIGIN: (8, test_log.root(8))}


async def test_a_rollback_is_refused(witness: WitnessUnderTest, test_log: LogUnderTest) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 8)
        error = await refused(stub, 8, [], await test_log.checkpoint(3))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        info, _ = error_details(error)
        assert (info.reason, info.metadata["witness_size"]) == ("ROLLBACK", "8")
        assert await states(stub) == {ORIGIN: (8, test_log.root(8))}


async def test_an_inconsistent_proof_is_refused(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    # Another history that agrees on nothing: its proofs cannot link our tree to it.
    rewritten = LogUnderTest(
        signer=test_log.signer, leaves=[leaf_hash(b"other %d" % i) for i in range(64)]
    )
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 3)
        note = await rewritten.checkpoint(8)
        for proof in (rewritten.proof(3, 8), test_log.proof(3, 8), test_log.proof(3, 8)[:-1]):
            error = await refused(stub, 3, proof, note)
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_details(error)[0].reason == "INCONSISTENT"
        # A missing proof proves nothing.
        assert (
            error_details(await refused(stub, 3, [], await test_log.checkpoint(8)))[0].reason
            == "INCONSISTENT"
        )
        assert await states(stub) == {ORIGIN: (3, test_log.root(3))}
        await advance(stub, test_log, 3, 8)  # the right proof still goes through


async def test_a_proof_from_nothing_is_refused(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        error = await refused(stub, 0, test_log.proof(2, 4), await test_log.checkpoint(4))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_details(error)[0].reason == "INCONSISTENT"
        assert await states(stub) == {ORIGIN: (0, test_log.root(0))}


async def test_a_wrong_old_size_is_refused_with_the_witness_size(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 8)
        for old_size in (0, 3, 9):
            error = await refused(
                stub, old_size, test_log.proof(old_size, 13), await test_log.checkpoint(13)
            )
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            info, _ = error_details(error)
            assert (info.reason, info.metadata["witness_size"]) == ("OLD_SIZE_MISMATCH", "8")
            assert info.metadata["service"] == "witness"
        # The log catches up from the size the witness sent.
        await advance(stub, test_log, 8, 13)


async def test_an_old_size_beyond_the_checkpoint_is_invalid(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        error = await refused(stub, 10, [], await test_log.checkpoint(3))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, fields = error_details(error)
        assert (info.reason, fields) == ("OLD_SIZE_TOO_LARGE", ["old_size"])


async def test_an_unknown_origin_is_not_found(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    stranger = LogUnderTest(
        origin="elsewhere.test/log", signer=Ed25519Signer.generate("elsewhere.test/log")
    )
    async with witness.serving() as stub:
        error = await refused(stub, 0, [], await stranger.checkpoint(3))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert error_details(error)[0].reason == "UNKNOWN_LOG"
        assert await states(stub) == {ORIGIN: (0, test_log.root(0))}


async def test_a_note_not_signed_by_the_log_is_refused(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    impostor = LogUnderTest(signer=Ed25519Signer.generate(ORIGIN))
    genuine = await test_log.checkpoint(3)
    text, (signature,) = parse_note(genuine)
    tampered = genuine.replace(text.encode(), (text.replace("3\n", "4\n", 1)).encode())
    async with witness.serving() as stub:
        for note in (await impostor.checkpoint(3), tampered):
            error = await refused(stub, 0, [], note)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_details(error)[0].reason == "LOG_SIGNATURE_INVALID"
        assert await states(stub) == {ORIGIN: (0, test_log.root(0))}
    assert signature.name == ORIGIN


@pytest.mark.parametrize(
    "note",
    [
        b"",
        b"not a note",
        "medledger.test/log\n3\nnot-base64\n\n\u2014 x AAAAAAAA\n".encode(),
        "medledger.test/log\n3\n\n\u2014 medledger.test/log AAAAAAAA\n".encode(),
        b"\xff\xfe",
    ],
)
async def test_a_malformed_note_is_invalid(witness: WitnessUnderTest, note: bytes) -> None:
    async with witness.serving() as stub:
        error = await refused(stub, 0, [], note)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(error)
    assert (info.reason, fields) == ("MALFORMED_CHECKPOINT", ["checkpoint"])


async def test_a_malformed_proof_is_invalid(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 3)
        error = await refused(stub, 3, [b"short"], await test_log.checkpoint(8))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, fields = error_details(error)
    assert (info.reason, fields) == ("MALFORMED_PROOF", ["consistency_proof"])


async def test_the_state_survives_a_restart(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 5)
        await advance(stub, test_log, 5, 9)
    async with witness.serving() as stub:  # a new runtime, the same database
        assert await states(stub) == {ORIGIN: (9, test_log.root(9))}
        error = await refused(stub, 0, [], await test_log.checkpoint(12))
        assert error_details(error)[0].metadata["witness_size"] == "9"
        cosigned = await advance(stub, test_log, 9, 12)
        verify_checkpoint(cosigned, [test_log.vkey], [await witness_vkey(stub)], 1)


async def test_racing_requests_cannot_both_advance(
    witness: WitnessUnderTest, test_log: LogUnderTest
) -> None:
    async with witness.serving() as stub:
        await advance(stub, test_log, 0, 4)
        notes = {size: await test_log.checkpoint(size) for size in (6, 11)}
        results = await asyncio.gather(
            *(add(stub, 4, test_log.proof(4, size), note) for size, note in notes.items()),
            return_exceptions=True,
        )
        won = [
            size for size, result in zip(notes, results, strict=True) if isinstance(result, bytes)
        ]
        lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1, results
        assert len(lost) == 1, results
        info, _ = error_details(lost[0])
        assert (info.reason, info.metadata["witness_size"]) == ("OLD_SIZE_MISMATCH", str(won[0]))
        assert await states(stub) == {ORIGIN: (won[0], test_log.root(won[0]))}
        # The same checkpoint twice at once is cosigned twice: it is one state.
        same = await test_log.checkpoint(20)
        proof = test_log.proof(won[0], 20)
        both = await asyncio.gather(add(stub, won[0], proof, same), add(stub, won[0], proof, same))
        assert all(both)


async def test_vault_down_is_unavailable_and_changes_nothing(
    make_witness: Callable[..., WitnessUnderTest], test_log: LogUnderTest, stack_dir: Any
) -> None:
    own_vault = DevVault(
        port=free_port(with_next=True),
        log_file=stack_dir / "logs" / "witness-vault.log",
        die_with_parent=True,
    )
    own_vault.start()
    try:
        own_vault.provision()
        witness = make_witness(test_log.vkey, vault=own_vault)
        async with witness.serving() as stub:
            await advance(stub, test_log, 0, 3)
            own_vault.stop()
            error = await refused(stub, 3, test_log.proof(3, 7), await test_log.checkpoint(7))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            info, _ = error_details(error)
            assert (info.reason, info.metadata["dependency"]) == ("DEPENDENCY_UNAVAILABLE", "vault")
    finally:
        own_vault.stop()
    # Read back with a witness on the session's Vault: the same database, unchanged.
    witness.vault = make_witness(test_log.vkey).vault
    async with witness.serving() as stub:
        assert await states(stub) == {ORIGIN: (3, test_log.root(3))}


async def test_a_rotated_key_cosigns_with_its_new_version(
    make_witness: Callable[..., WitnessUnderTest], test_log: LogUnderTest, vault_server: Any
) -> None:
    key = f"witness-test-{uuid.uuid4().hex[:8]}"
    root = vault_server.client()
    root.secrets.transit.create_key(key, key_type="ed25519", mount_point="transit")
    witness = make_witness(test_log.vkey, key=key)
    witness.vault = VaultSettings(addr=vault_server.addr, token=vault_server.token)
    async with witness.serving() as stub:
        before = await witness_vkey(stub)
        first = await advance(stub, test_log, 0, 2)
        root.secrets.transit.rotate_key(key, mount_point="transit")
        second = await advance(stub, test_log, 2, 5)
        after = await witness_vkey(stub)
    assert before != after
    verify_checkpoint(first, [test_log.vkey], [before], 1)
    verify_checkpoint(second, [test_log.vkey], [after], 1)
    with pytest.raises(CheckpointError):
        verify_checkpoint(second, [test_log.vkey], [before], 1)


async def test_a_log_never_cosigned_is_listed_at_size_zero(
    make_witness: Callable[..., WitnessUnderTest], test_log: LogUnderTest
) -> None:
    other = LogUnderTest(origin="other.test/log", signer=Ed25519Signer.generate("other.test/log"))
    witness = make_witness(test_log.vkey, other.vkey)
    async with witness.serving() as stub:
        await advance(stub, other, 0, 4)
        assert await states(stub) == {
            ORIGIN: (0, test_log.root(0)),
            "other.test/log": (4, other.root(4)),
        }
