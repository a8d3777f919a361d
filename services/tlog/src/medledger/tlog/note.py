"""C2SP signed-note: text signed by one or more keys, with Ed25519 signatures (type 0x01).

    <text ending in a newline>
    <blank line>
    — <key name> <base64(4-byte key id || signature)>
    ...

A key is named by ``(name, key id)``, the id being the first 4 bytes of
``SHA-256(name || "\\n" || signature type || public key)``; its verifier key ("vkey") is the text
``<name>+<hex key id>+<base64(signature type || public key)>``.

Signing is asynchronous (``NoteSigner``) so the ledger's key can stay inside Vault; verifying is
synchronous (``NoteVerifier``). ``open_note`` is the only way to trust a note's text: it ignores
signatures from unknown keys, as the spec demands, and rejects the whole note if a known key's
signature does not verify or if no known key signed it.
"""

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medledger.tlog.errors import NoteError

SIG_ED25519 = 0x01
"""Signature type of plain Ed25519 note signatures."""

KEY_ID_SIZE = 4
MAX_SIGNATURES = 100
"""Most signature lines a note may carry (the spec asks verifiers to accept at least 16)."""

MAX_NOTE_SIZE = 1 << 20
"""Most bytes a note may have: room for 100 post-quantum signatures of about 5 kB."""

_SIGNATURE_PREFIX = "\u2014 "  # em dash, space
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64


def check_key_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid key name: non-empty, no spaces, no '+'."""
    if not name or "+" in name or any(char.isspace() for char in name):
        raise ValueError(f"invalid key name {name!r}: must be non-empty, with no spaces or '+'")
    if any(ord(char) < 0x20 for char in name):
        raise ValueError(f"invalid key name {name!r}: contains a control character")


def key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || "\\n" || signature type || public key)[:4], the spec's key id."""
    check_key_name(name)
    if not 0 <= signature_type <= 0xFF:
        raise ValueError(f"signature type {signature_type} is not one byte")
    material = name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key
    return hashlib.sha256(material).digest()[:KEY_ID_SIZE]


def _b64decode_canonical(text: str) -> bytes:
    """Strict standard base64: the only accepted spelling is the one we would write."""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(f"{text!r} is not base64") from error
    if base64.b64encode(decoded).decode("ascii") != text:
        raise ValueError(f"{text!r} is not canonical base64")
    return decoded


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key as a vkey names it: ``<name>+<hex key id>+<base64(type || key)>``."""

    name: str
    key_id: bytes
    signature_type: int
    public_key: bytes

    @classmethod
    def for_key(cls, name: str, signature_type: int, public_key: bytes) -> "VerifierKey":
        """The verifier key for ``public_key``, its key id computed as the spec recommends."""
        return cls(name, key_id(name, signature_type, public_key), signature_type, public_key)

    @classmethod
    def parse(cls, text: str) -> "VerifierKey":
        """Parse a vkey string; the key id must be the one its name and key give."""
        # The name has no '+' and the id is hex; the base64 key material may contain '+'.
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise ValueError(f"verifier key {text!r} does not have 3 '+'-separated parts")
        name, id_hex, material_b64 = parts
        check_key_name(name)
        if len(id_hex) != 2 * KEY_ID_SIZE or id_hex != id_hex.lower():
            raise ValueError(f"key id {id_hex!r} is not 8 lowercase hex digits")
        try:
            stated_id = bytes.fromhex(id_hex)
        except ValueError as error:
            raise ValueError(f"key id {id_hex!r} is not hex") from error
        material = _b64decode_canonical(material_b64)
        if len(material) < 2:
            raise ValueError(f"verifier key {text!r} has no key material")
        vkey = cls.for_key(name, material[0], material[1:])
        if vkey.key_id != stated_id:
            raise ValueError(f"key id {id_hex} does not match the key ({vkey.key_id.hex()})")
        return vkey

    def __str__(self) -> str:
        material = base64.b64encode(bytes([self.signature_type]) + self.public_key).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{material}"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: the signing key's name and id, and the signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """``— <name> <base64(key id || signature)>`` followed by a newline."""
        encoded = base64.b64encode(self.key_id + self.signature).decode("ascii")
        return f"{_SIGNATURE_PREFIX}{self.name} {encoded}\n"


class NoteSigner(Protocol):
    """Signs note text with one key; async so the key may live in a remote service (Vault)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    async def sign(self, message: bytes) -> bytes:
        """The signature over ``message`` (the note text), without the key id."""
        ...


class NoteVerifier(Protocol):
    """Checks signatures made by one key."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the key id) is this key's over ``message``."""
        ...


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


class Ed25519Verifier:
    """Verifies type 0x01 Ed25519 note signatures for one named key. Subclasses for other
    Ed25519-based signature types set ``SIGNATURE_TYPE`` and override ``verify``."""

    __slots__ = ("_key", "_key_id", "_name", "_public_key")
    SIGNATURE_TYPE = SIG_ED25519
    TYPE_NAME = "Ed25519"

    def __init__(self, name: str, public_key: bytes) -> None:
        if len(public_key) != _ED25519_KEY_SIZE:
            raise ValueError(f"Ed25519 public key is {len(public_key)} bytes, not 32")
        self._name = name
        self._key_id = key_id(name, self.SIGNATURE_TYPE, public_key)
        self._public_key = public_key
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: "str | VerifierKey") -> "Self":
        """The verifier for a verifier key of this class's signature type."""
        parsed = VerifierKey.parse(vkey) if isinstance(vkey, str) else vkey
        if parsed.signature_type != cls.SIGNATURE_TYPE:
            raise ValueError(
                f"key {parsed.name} has signature type {parsed.signature_type:#04x}, "
                f"not {cls.TYPE_NAME} ({cls.SIGNATURE_TYPE:#04x})"
            )
        return cls(parsed.name, parsed.public_key)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != _ED25519_SIGNATURE_SIZE:
            return False
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Ed25519Signer:
    """Signs notes with an Ed25519 private key held in memory (tests, witnesses, tools)."""

    __slots__ = ("_key", "_key_id", "_name", "_public_key")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self._name = name
        self._key = private_key
        self._public_key = _raw_public_key(private_key.public_key())
        self._key_id = key_id(name, SIG_ED25519, self._public_key)

    @classmethod
    def generate(cls, name: str) -> "Ed25519Signer":
        """A signer with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def verifier_key(self) -> VerifierKey:
        """The vkey to hand to verifiers (``str()`` gives its text form)."""
        return VerifierKey(self._name, self._key_id, SIG_ED25519, self._public_key)

    def verifier(self) -> Ed25519Verifier:
        """A verifier for this signer's signatures."""
        return Ed25519Verifier(self._name, self._public_key)

    async def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


class Note(NamedTuple):
    """A note's text and signatures: verified by ``open_note``, unchecked from ``parse_note``."""

    text: str
    signatures: tuple[NoteSignature, ...]


def _check_text(text: str | bytes) -> str:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError("note text is not valid UTF-8") from error
    if not text.endswith("\n"):
        raise ValueError("note text must end with a newline")
    if any(ord(char) < 0x20 and char != "\n" for char in text):
        raise ValueError("note text contains a control character other than newline")
    return text


def format_note(text: str | bytes, signatures: Sequence[NoteSignature]) -> bytes:
    """The note with ``text`` and one line per signature, in the given order."""
    text = _check_text(text)
    if not 1 <= len(signatures) <= MAX_SIGNATURES:
        raise ValueError(f"a note needs 1 to {MAX_SIGNATURES} signatures, got {len(signatures)}")
    seen: set[tuple[str, bytes]] = set()
    for signature in signatures:
        check_key_name(signature.name)
        if len(signature.key_id) != KEY_ID_SIZE:
            raise ValueError(f"key id of {signature.name} is not {KEY_ID_SIZE} bytes")
        if not signature.signature:
            raise ValueError(f"signature of {signature.name} is empty")
        if (signature.name, signature.key_id) in seen:
            raise ValueError(f"two signatures by key {signature.name}+{signature.key_id.hex()}")
        seen.add((signature.name, signature.key_id))
    note = (text + "\n" + "".join(signature.line() for signature in signatures)).encode("utf-8")
    if len(note) > MAX_NOTE_SIZE:
        raise ValueError(f"note of {len(note)} bytes is over the {MAX_NOTE_SIZE}-byte limit")
    return note


async def sign_note(text: str | bytes, signers: Sequence[NoteSigner]) -> bytes:
    """Sign ``text`` with every signer (concurrently) and return the note."""
    text = _check_text(text)
    message = text.encode("utf-8")
    raw = await asyncio.gather(*(signer.sign(message) for signer in signers))
    return format_note(
        text,
        [
            NoteSignature(signer.name, signer.key_id, signature)
            for signer, signature in zip(signers, raw, strict=True)
        ],
    )


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise NoteError(f"signature line {line!r} does not start with an em dash and a space")
    name, space, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError(f"signature line {line!r} has no space between name and signature")
    try:
        check_key_name(name)
        decoded = _b64decode_canonical(encoded)
    except ValueError as error:
        raise NoteError(f"malformed signature line: {error}") from error
    if len(decoded) <= KEY_ID_SIZE:
        raise NoteError(f"signature by {name} is {len(decoded)} bytes: no room for a signature")
    return NoteSignature(name, decoded[:KEY_ID_SIZE], decoded[KEY_ID_SIZE:])


def parse_note(note: bytes | str) -> Note:
    """Split a note into its text and signatures, checking syntax only.

    Nothing here is verified: trust the text only through ``open_note``.
    """
    if isinstance(note, str):
        note = note.encode("utf-8")
    if len(note) > MAX_NOTE_SIZE:
        raise NoteError(f"note of {len(note)} bytes is over the {MAX_NOTE_SIZE}-byte limit")
    try:
        decoded = note.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NoteError("note is not valid UTF-8") from error
    if any(ord(char) < 0x20 and char != "\n" for char in decoded):
        raise NoteError("note contains a control character other than newline")
    split = decoded.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line between its text and its signatures")
    text, block = decoded[: split + 1], decoded[split + 2 :]
    if not block:
        raise NoteError("note has no signature lines")
    if not block.endswith("\n"):
        raise NoteError("note does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"note has {len(lines)} signatures, more than {MAX_SIGNATURES}")
    return Note(text, tuple(_parse_signature_line(line) for line in lines))


def open_note(note: bytes | str, verifiers: Iterable[NoteVerifier]) -> Note:
    """The note's text and the signatures that verified, or ``NoteError``.

    Signatures from keys not in ``verifiers`` are ignored. Every signature from a known key is
    checked and one that fails rejects the whole note; so does a note no known key signed. A key
    that signed more than once is listed once.
    """
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    for verifier in verifiers:
        handle = (verifier.name, verifier.key_id)
        if handle in known:
            raise ValueError(f"two verifiers for key {verifier.name}+{verifier.key_id.hex()}")
        known[handle] = verifier
    text, signatures = parse_note(note)
    message = text.encode("utf-8")
    verified: dict[tuple[str, bytes], NoteSignature] = {}
    for signature in signatures:
        handle = (signature.name, signature.key_id)
        signer_key = known.get(handle)
        if signer_key is None:
            continue
        if not signer_key.verify(message, signature.signature):
            raise NoteError(f"invalid signature by key {signature.name}+{signature.key_id.hex()}")
        verified.setdefault(handle, signature)
    if not verified:
        raise NoteError("note has no valid signature from a known key")
    return Note(text, tuple(verified.values()))
