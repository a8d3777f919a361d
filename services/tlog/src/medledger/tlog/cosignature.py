"""C2SP tlog-cosignature v1: timestamped Ed25519 cosignatures (signature type 0x04).

A witness that has checked a checkpoint is consistent with every earlier one it saw signs

    cosignature/v1\\n
    time <POSIX seconds>\\n
    <checkpoint body>

and its note signature is ``timestamp (8 bytes, big-endian) || Ed25519 signature (64 bytes)``.
``verify_checkpoint`` is the client side: the log's own signature plus a quorum of witnesses.
"""

import struct
import time
from collections.abc import Callable, Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.errors import CheckpointError
from medledger.tlog.note import (
    SIG_ED25519,
    Ed25519Verifier,
    VerifierKey,
    key_id,
    open_note,
)

SIG_COSIGNATURE_V1 = 0x04
"""Signature type of timestamped Ed25519 checkpoint cosignatures."""

MAX_TIMESTAMP = (1 << 63) - 1

_HEADER = b"cosignature/v1\n"
_TIMESTAMP = struct.Struct(">Q")
_ED25519_KEY_SIZE = 32
_ED25519_SIGNATURE_SIZE = 64
COSIGNATURE_SIZE = _TIMESTAMP.size + _ED25519_SIGNATURE_SIZE
"""Bytes of a cosignature after the key id: timestamp and Ed25519 signature."""


def cosigned_message(body: bytes, timestamp: int) -> bytes:
    """What a witness signs: the v1 header, the time line, then the checkpoint body."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError(f"timestamp {timestamp} is not in 0..2**63-1")
    return _HEADER + f"time {timestamp}\n".encode("ascii") + body


def cosignature_timestamp(signature: bytes) -> int:
    """The POSIX time a cosignature (the bytes after the key id) states."""
    if len(signature) != COSIGNATURE_SIZE:
        raise ValueError(f"cosignature is {len(signature)} bytes, not {COSIGNATURE_SIZE}")
    (timestamp,) = _TIMESTAMP.unpack_from(signature)
    return int(timestamp)


class CosignatureVerifier(Ed25519Verifier):
    """Verifies one witness's v1 cosignatures (type 0x04: timestamped Ed25519)."""

    __slots__ = ()
    SIGNATURE_TYPE = SIG_COSIGNATURE_V1
    TYPE_NAME = "cosignature/v1"

    def verify(self, message: bytes, signature: bytes) -> bool:
        if len(signature) != COSIGNATURE_SIZE:
            return False
        timestamp = cosignature_timestamp(signature)
        if timestamp > MAX_TIMESTAMP:
            return False
        try:
            self._key.verify(signature[_TIMESTAMP.size :], cosigned_message(message, timestamp))
        except InvalidSignature:
            return False
        return True


class Cosigner:
    """A witness key held in memory that makes v1 cosignatures; a ``NoteSigner``."""

    __slots__ = ("_clock", "_key", "_key_id", "_name", "_public_key")

    def __init__(
        self,
        name: str,
        private_key: Ed25519PrivateKey,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._name = name
        self._key = private_key
        self._clock = clock
        self._public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self._key_id = key_id(name, SIG_COSIGNATURE_V1, self._public_key)

    @classmethod
    def generate(cls, name: str, clock: Callable[[], float] = time.time) -> "Cosigner":
        """A cosigner with a fresh random key."""
        return cls(name, Ed25519PrivateKey.generate(), clock)

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
        """The type 0x04 vkey to hand to verifiers (``str()`` gives its text form)."""
        return VerifierKey(self._name, self._key_id, SIG_COSIGNATURE_V1, self._public_key)

    def verifier(self) -> CosignatureVerifier:
        """A verifier for this cosigner's cosignatures."""
        return CosignatureVerifier(self._name, self._public_key)

    def cosign(self, body: bytes, timestamp: int) -> bytes:
        """The cosignature (after the key id) over checkpoint ``body`` at ``timestamp``."""
        signature = self._key.sign(cosigned_message(body, timestamp))
        return _TIMESTAMP.pack(timestamp) + signature

    async def sign(self, message: bytes) -> bytes:
        """Cosign ``message`` (a checkpoint body) at the clock's current second."""
        return self.cosign(message, int(self._clock()))


def _log_verifier(vkey: str) -> Ed25519Verifier | CosignatureVerifier:
    parsed = VerifierKey.parse(vkey)
    if parsed.signature_type == SIG_ED25519:
        return Ed25519Verifier.from_vkey(parsed)
    if parsed.signature_type == SIG_COSIGNATURE_V1:
        return CosignatureVerifier.from_vkey(parsed)
    raise ValueError(
        f"log key {parsed.name} has unsupported signature type {parsed.signature_type:#04x}"
    )


def verify_checkpoint(
    note: bytes | str,
    log_vkeys: Sequence[str],
    witness_vkeys: Sequence[str],
    quorum: int,
    *,
    origin: str | None = None,
) -> Checkpoint:
    """The checkpoint in ``note``, once the log and at least ``quorum`` witnesses vouch for it.

    ``log_vkeys`` are the log's keys (Ed25519, type 0x01, or cosignature, type 0x04): one valid
    signature by any of them is required. ``witness_vkeys`` are cosignature (type 0x04) keys;
    witnesses are counted by distinct public key, so one key listed under two names counts once
    (a v1 cosignature does not commit to the witness's name). With ``origin``, the checkpoint must
    be that log's. Raises ``NoteError`` for a malformed note or a bad signature from a known key,
    ``CheckpointError`` when the policy is not met or the text is not a checkpoint.
    """
    if not 0 <= quorum <= len(witness_vkeys):
        raise ValueError(f"quorum {quorum} is not in 0..{len(witness_vkeys)} (the witnesses given)")
    if not log_vkeys:
        raise ValueError("at least one log key is needed")
    log = [_log_verifier(vkey) for vkey in log_vkeys]
    witnesses = [CosignatureVerifier.from_vkey(vkey) for vkey in witness_vkeys]
    log_keys = {verifier.public_key for verifier in log}
    for witness in witnesses:
        if witness.public_key in log_keys:
            raise ValueError(f"witness {witness.name} uses one of the log's public keys")
    opened = open_note(note, [*log, *witnesses])
    signed = {(signature.name, signature.key_id) for signature in opened.signatures}
    if not any((verifier.name, verifier.key_id) in signed for verifier in log):
        raise CheckpointError("checkpoint is not signed by the log")
    cosigned = {
        witness.public_key for witness in witnesses if (witness.name, witness.key_id) in signed
    }
    if len(cosigned) < quorum:
        raise CheckpointError(
            f"checkpoint has {len(cosigned)} valid witness cosignatures, the quorum is {quorum}"
        )
    checkpoint = Checkpoint.parse(opened.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint is for origin {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
