"""C2SP tlog-cosignature v1 and the k-of-n witness policy of ``verify_checkpoint``."""

import base64

import pytest

from medledger.tlog import (
    COSIGNATURE_SIZE,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    Checkpoint,
    CheckpointError,
    CosignatureVerifier,
    Cosigner,
    Ed25519Signer,
    NoteError,
    NoteSignature,
    VerifierKey,
    cosignature_timestamp,
    cosigned_message,
    format_note,
    key_id,
    open_note,
    parse_note,
    sign_note,
    verify_checkpoint,
)

# The example of C2SP tlog-cosignature: a checkpoint with the log's signature and one witness's.
SPEC_NOTE = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrD"
    "JsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
SPEC_MESSAGE = (
    b"cosignature/v1\n"
    b"time 1679315147\n"
    b"example.com/behind-the-sofa\n"
    b"20852163\n"
    b"CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
)
NOW = 1_700_000_000
ORIGIN = "medledger.example/log"
CHECKPOINT = Checkpoint(ORIGIN, 42, bytes(range(32)))


def test_the_spec_example_has_the_stated_shape_and_time() -> None:
    _, signatures = parse_note(SPEC_NOTE)
    log, witness = signatures
    assert len(log.signature) == 64
    assert len(witness.signature) == COSIGNATURE_SIZE == 72
    assert cosignature_timestamp(witness.signature) == 1679315147
    body = Checkpoint.parse(parse_note(SPEC_NOTE).text).body()
    assert cosigned_message(body, 1679315147) == SPEC_MESSAGE


def test_key_id_and_vkey_use_type_0x04() -> None:
    cosigner = Cosigner.generate("witness.example/w1")
    vkey = cosigner.verifier_key
    assert vkey.signature_type == SIG_COSIGNATURE_V1
    assert vkey.key_id == key_id("witness.example/w1", 0x04, cosigner.public_key)
    assert vkey.key_id != key_id("witness.example/w1", SIG_ED25519, cosigner.public_key)
    assert base64.b64decode(str(vkey).split("+", 2)[2])[0] == 0x04
    assert CosignatureVerifier.from_vkey(str(vkey)).key_id == vkey.key_id
    plain = VerifierKey.for_key("w", SIG_ED25519, cosigner.public_key)
    with pytest.raises(ValueError, match=r"not cosignature/v1 \(0x04\)"):
        CosignatureVerifier.from_vkey(str(plain))


async def test_cosignature_round_trip() -> None:
    cosigner = Cosigner.generate("witness.example/w1", clock=lambda: NOW + 0.7)
    signature = await cosigner.sign(CHECKPOINT.body())
    assert len(signature) == COSIGNATURE_SIZE
    assert cosignature_timestamp(signature) == NOW
    verifier = cosigner.verifier()
    assert verifier.verify(CHECKPOINT.body(), signature)
    assert cosigner.cosign(CHECKPOINT.body(), NOW) == signature  # Ed25519 is deterministic


def test_cosignature_rejections() -> None:
    cosigner = Cosigner.generate("w")
    verifier = cosigner.verifier()
    body = CHECKPOINT.body()
    signature = cosigner.cosign(body, NOW)
    later = (NOW + 1).to_bytes(8, "big") + signature[8:]
    assert not verifier.verify(body, later)  # the time is signed
    assert not verifier.verify(body.replace(b"42", b"43"), signature)
    assert not verifier.verify(body, signature[:-1])
    forged = Cosigner.generate("w").cosign(body, NOW)
    assert not verifier.verify(body, forged)
    # A plain note signature over the body is not a cosignature.
    assert not verifier.verify(body, b"\x00" * 8 + signature[8:])
    with pytest.raises(ValueError, match="2\\*\\*63"):
        cosigned_message(body, 1 << 63)


class Network:
    """A log and four witnesses with fixed keys and clocks."""

    def __init__(self) -> None:
        self.log = Ed25519Signer.generate(ORIGIN)
        self.witnesses = [Cosigner.generate(f"w{n}.example", clock=lambda: NOW) for n in range(4)]

    @property
    def log_vkeys(self) -> list[str]:
        return [str(self.log.verifier_key)]

    def witness_vkeys(self, count: int = 4) -> list[str]:
        return [str(witness.verifier_key) for witness in self.witnesses[:count]]

    async def note(self, cosigners: int, checkpoint: Checkpoint = CHECKPOINT) -> bytes:
        return await sign_note(checkpoint.body(), [self.log, *self.witnesses[:cosigners]])


@pytest.fixture
def network() -> Network:
    return Network()


async def test_quorum_met(network: Network) -> None:
    note = await network.note(cosigners=2)
    checkpoint = verify_checkpoint(
        note, network.log_vkeys, network.witness_vkeys(), 2, origin=ORIGIN
    )
    assert checkpoint == CHECKPOINT
    assert verify_checkpoint(note, network.log_vkeys, [], 0) == CHECKPOINT


async def test_quorum_not_met(network: Network) -> None:
    note = await network.note(cosigners=2)
    with pytest.raises(CheckpointError, match="2 valid witness cosignatures, the quorum is 3"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 3)


async def test_log_signature_is_required(network: Network) -> None:
    note = await sign_note(CHECKPOINT.body(), network.witnesses)
    with pytest.raises(CheckpointError, match="not signed by the log"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 2)


async def test_unknown_witnesses_do_not_count(network: Network) -> None:
    note = await network.note(cosigners=4)
    with pytest.raises(CheckpointError, match="1 valid witness cosignatures"):
        verify_checkpoint(
            note,
            network.log_vkeys,
            [*network.witness_vkeys(1), str(Cosigner.generate("stranger").verifier_key)],
            2,
        )


async def test_one_key_under_two_names_counts_once(network: Network) -> None:
    witness = network.witnesses[0]
    alias = VerifierKey.for_key("alias.example", SIG_COSIGNATURE_V1, witness.public_key)
    note = await network.note(cosigners=1)
    text, signatures = parse_note(note)
    replayed = NoteSignature(alias.name, alias.key_id, signatures[1].signature)
    note = format_note(text, [*signatures, replayed])
    vkeys = [str(witness.verifier_key), str(alias)]
    assert len(open_note(note, [CosignatureVerifier.from_vkey(v) for v in vkeys]).signatures) == 2
    with pytest.raises(CheckpointError, match="1 valid witness cosignatures, the quorum is 2"):
        verify_checkpoint(note, network.log_vkeys, vkeys, 2)


async def test_cosignature_copied_from_another_checkpoint_is_rejected(network: Network) -> None:
    other = Checkpoint(ORIGIN, 43, bytes(32))
    good = await network.note(cosigners=1)
    stolen = parse_note(await network.note(cosigners=2, checkpoint=other)).signatures[2]
    text, signatures = parse_note(good)
    note = format_note(text, [*signatures, stolen])
    with pytest.raises(NoteError, match=r"invalid signature by key w1\.example"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 1)


async def test_tampered_checkpoint_is_rejected(network: Network) -> None:
    note = (await network.note(cosigners=2)).replace(b"\n42\n", b"\n24\n")
    with pytest.raises(NoteError, match="invalid signature"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 2)


async def test_origin_must_match_when_given(network: Network) -> None:
    note = await network.note(cosigners=1)
    with pytest.raises(CheckpointError, match=r"not 'other\.example/log'"):
        verify_checkpoint(
            note, network.log_vkeys, network.witness_vkeys(), 1, origin="other.example/log"
        )


async def test_text_that_is_not_a_checkpoint_is_rejected(network: Network) -> None:
    note = await sign_note("hello\n", [network.log, network.witnesses[0]])
    with pytest.raises(CheckpointError, match="at least 3"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 1)


async def test_policy_mistakes_are_configuration_errors(network: Network) -> None:
    note = await network.note(cosigners=1)
    with pytest.raises(ValueError, match=r"quorum 5 is not in 0\.\.4"):
        verify_checkpoint(note, network.log_vkeys, network.witness_vkeys(), 5)
    with pytest.raises(ValueError, match="at least one log key"):
        verify_checkpoint(note, [], network.witness_vkeys(), 1)
    log_as_witness = VerifierKey.for_key("w", SIG_COSIGNATURE_V1, network.log.public_key)
    with pytest.raises(ValueError, match="uses one of the log's public keys"):
        verify_checkpoint(note, network.log_vkeys, [str(log_as_witness)], 1)
    with pytest.raises(ValueError, match="not cosignature"):
        verify_checkpoint(note, network.log_vkeys, network.log_vkeys, 1)


async def test_a_log_may_sign_with_a_cosignature_key() -> None:
    log = Cosigner.generate(ORIGIN, clock=lambda: NOW)
    witness = Cosigner.generate("w.example", clock=lambda: NOW)
    note = await sign_note(CHECKPOINT.body(), [log, witness])
    checkpoint = verify_checkpoint(note, [str(log.verifier_key)], [str(witness.verifier_key)], 1)
    assert checkpoint == CHECKPOINT
