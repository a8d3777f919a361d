"""C2SP signed notes.

Test data: the PeterNeumann and EnochRoot keys and notes are the examples of Go's
golang.org/x/mod/sumdb/note (note_test.go, BSD-3-Clause), which C2SP signed-note formalises;
example.com/foo is the example of the C2SP signed-note spec itself.
"""

import base64
import contextlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from medledger.tlog import (
    MAX_SIGNATURES,
    SIG_ED25519,
    Ed25519Signer,
    Ed25519Verifier,
    NoteError,
    NoteSignature,
    VerifierKey,
    format_note,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
# Go's private key encoding is base64(0x01 || 32-byte seed).
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
    "KvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01"
    "oOTGwnWLox33WWd1RvMc+QQ=\n"
)
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6Tf"
    "Xppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

PETER = Ed25519Verifier.from_vkey(PETER_VKEY)
ENOCH = Ed25519Verifier.from_vkey(ENOCH_VKEY)


def peter_signer() -> Ed25519Signer:
    return Ed25519Signer("PeterNeumann", Ed25519PrivateKey.from_private_bytes(PETER_SEED))


def test_verifier_key_parses_and_formats_back() -> None:
    vkey = VerifierKey.parse(PETER_VKEY)
    assert vkey.name == "PeterNeumann"
    assert vkey.key_id.hex() == "c74f20a3"
    assert vkey.signature_type == SIG_ED25519
    assert len(vkey.public_key) == 32
    assert str(vkey) == PETER_VKEY
    assert key_id("PeterNeumann", SIG_ED25519, vkey.public_key) == bytes.fromhex("c74f20a3")
    assert str(peter_signer().verifier_key) == PETER_VKEY


def test_key_material_may_contain_plus_signs() -> None:
    vkey = VerifierKey.for_key("log.example", SIG_ED25519, b"\xfb" * 32)
    assert "+" in str(vkey).split("+", 2)[2]
    assert VerifierKey.parse(str(vkey)) == vkey


def test_mangled_verifier_keys_are_rejected() -> None:
    # As Go's note tests do: every proper substring and every single-character change fails.
    for begin in range(len(PETER_VKEY)):
        for end in range(begin + 1, len(PETER_VKEY) + 1):
            if (begin, end) != (0, len(PETER_VKEY)):
                with pytest.raises(ValueError, match=r"key|base64"):
                    VerifierKey.parse(PETER_VKEY[begin:end])
    for position in range(len(PETER_VKEY)):
        changed = (
            PETER_VKEY[:position] + chr(ord(PETER_VKEY[position]) + 1) + PETER_VKEY[position + 1 :]
        )
        with pytest.raises(ValueError, match=r"key|base64"):
            Ed25519Verifier.from_vkey(changed)


def test_vkey_of_another_type_is_not_an_ed25519_verifier() -> None:
    vkey = VerifierKey.for_key("PeterNeumann", 0x04, VerifierKey.parse(PETER_VKEY).public_key)
    with pytest.raises(ValueError, match="not Ed25519"):
        Ed25519Verifier.from_vkey(str(vkey))


async def test_signing_reproduces_the_go_example_byte_for_byte() -> None:
    note = await sign_note(TEXT, [peter_signer()])
    assert note == (TEXT + "\n" + PETER_SIG).encode()


def test_the_spec_example_verifies() -> None:
    text, signatures = open_note(SPEC_NOTE.encode(), [Ed25519Verifier.from_vkey(SPEC_VKEY)])
    assert text == "This is an example message.\n"
    assert [(s.name, s.key_id.hex()) for s in signatures] == [("example.com/foo", "530d903a")]


def test_unknown_keys_are_ignored_and_known_ones_listed() -> None:
    note = (TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode()
    text, signatures = open_note(note, [PETER])
    assert text == TEXT
    assert [s.name for s in signatures] == ["PeterNeumann"]
    _, signatures = open_note(note, [PETER, ENOCH])
    assert [s.name for s in signatures] == ["PeterNeumann", "EnochRoot"]
    _, signatures = open_note((TEXT + "\n" + PETER_SIG * 2 + ENOCH_SIG * 2).encode(), [PETER])
    assert len(signatures) == 1


def test_a_note_without_a_known_signature_is_rejected() -> None:
    with pytest.raises(NoteError, match="no valid signature from a known key"):
        open_note((TEXT + "\n" + PETER_SIG + ENOCH_SIG).encode(), [])
    # Same name, other key id: still unknown.
    other = Ed25519Signer.generate("PeterNeumann").verifier()
    with pytest.raises(NoteError, match="no valid signature from a known key"):
        open_note((TEXT + "\n" + PETER_SIG).encode(), [other])


def test_tampered_text_or_signature_is_rejected() -> None:
    with pytest.raises(NoteError, match="invalid signature by key PeterNeumann\\+c74f20a3"):
        open_note((TEXT.replace("answer", "Answer") + "\n" + PETER_SIG).encode(), [PETER])
    tampered = PETER_SIG[:60] + "ABCD" + PETER_SIG[64:]
    with pytest.raises(NoteError, match="invalid signature"):
        open_note((TEXT + "\n" + tampered).encode(), [PETER])
    # A bad signature from a known key rejects the note even beside a good one.
    with pytest.raises(NoteError, match="invalid signature"):
        open_note((TEXT + "\n" + PETER_SIG + tampered).encode(), [PETER])


@pytest.mark.parametrize(
    ("note", "reason"),
    [
        (TEXT, "no blank line"),
        (TEXT + "\n", "no signature lines"),
        (TEXT + "\n" + PETER_SIG[:-1], "does not end with a newline"),
        ("\x01" + TEXT + "\n" + PETER_SIG, "control character"),
        (TEXT + "\n" + PETER_SIG.replace("\u2014", "-"), "em dash"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "malformed signature"),
        (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"), "invalid key name"),
        (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "em dash"),
        (TEXT + "\n\u2014 PeterNeumann\n", "no space"),
        (TEXT + "\n\u2014 PeterNeumann x08g!o==\n", "not base64"),
        (TEXT + "\n\u2014 PeterNeumann x08gow==\n", "no room for a signature"),
        (TEXT + "\n\u2014 PeterNeumann x08go/==\n", "not canonical"),
        (TEXT + "\n\u2014 PeterNeumann x08go/ZJ=\n", "not canonical"),
    ],
)
def test_malformed_notes_are_rejected(note: str, reason: str) -> None:
    with pytest.raises(NoteError, match=reason):
        open_note(note.encode(), [PETER])


def test_invalid_utf8_and_oversized_notes_are_rejected() -> None:
    with pytest.raises(NoteError, match="UTF-8"):
        open_note(b"\xff" + (TEXT + "\n" + PETER_SIG).encode(), [PETER])
    with pytest.raises(NoteError, match="over the"):
        open_note(("x" * (1 << 20) + "\n\n" + PETER_SIG).encode(), [PETER])


def test_signature_count_is_limited() -> None:
    open_note((TEXT + "\n" + PETER_SIG * MAX_SIGNATURES).encode(), [PETER])
    with pytest.raises(NoteError, match="101 signatures"):
        open_note((TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1)).encode(), [PETER])


def test_ambiguous_verifiers_are_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="two verifiers for key EnochRoot"):
        open_note((TEXT + "\n" + PETER_SIG).encode(), [ENOCH, PETER, ENOCH])


async def test_several_signers_sign_in_order_and_verify() -> None:
    signers = [Ed25519Signer.generate("a.example/log"), Ed25519Signer.generate("b.example/w")]
    note = await sign_note("hello\n\nworld\n", signers)
    text, signatures = open_note(note, [signer.verifier() for signer in signers])
    assert text == "hello\n\nworld\n"
    assert [s.name for s in signatures] == ["a.example/log", "b.example/w"]
    parsed = parse_note(note)
    assert format_note(parsed.text, parsed.signatures) == note


async def test_bad_text_is_not_signed() -> None:
    signer = Ed25519Signer.generate("log")
    for text in ("no newline", "tab\there\n", b"\xff\n"):
        with pytest.raises(ValueError, match="note text"):
            await sign_note(text, [signer])
    with pytest.raises(ValueError, match="1 to 100 signatures"):
        await sign_note("hello\n", [])
    with pytest.raises(ValueError, match="two signatures by key log"):
        await sign_note("hello\n", [signer, signer])


def test_format_checks_signatures() -> None:
    with pytest.raises(ValueError, match="invalid key name"):
        format_note("x\n", [NoteSignature("a b", b"1234", b"sig")])
    with pytest.raises(ValueError, match="not 4 bytes"):
        format_note("x\n", [NoteSignature("a", b"123", b"sig")])


note_text = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"]) | st.just("\n"), max_size=200
).map(lambda text: text + "\n")


@given(note_text)
async def test_any_valid_text_round_trips(text: str) -> None:
    signer = Ed25519Signer("log.example", Ed25519PrivateKey.from_private_bytes(PETER_SEED))
    note = await sign_note(text, [signer])
    assert open_note(note, [signer.verifier()]).text == text


@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_parsing_garbage_only_raises_note_error(data: bytes) -> None:
    with contextlib.suppress(NoteError):
        parse_note(data)
