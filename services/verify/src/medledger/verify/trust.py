"""Whom a verifier trusts: the log's keys, the witnesses' keys and how many must cosign.

Shared by ``medledger verify receipt`` and ``medledger ledger audit``; the cryptography is
``medledger.tlog.cosignature.verify_checkpoint``, this only adds the bookkeeping a report needs
(which log key signed, which witnesses cosigned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.cosignature import SIG_COSIGNATURE_V1, verify_checkpoint
from medledger.tlog.note import SIG_ED25519, VerifierKey, parse_note


def _vkey_label(vkey: VerifierKey) -> str:
    return f"{vkey.name}+{vkey.key_id.hex()}"


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature (and any known cosignatures) verified."""

    checkpoint: Checkpoint
    note: bytes
    log_key: str
    """``name+keyid`` of the log key that signed."""
    witnesses: tuple[str, ...]
    """``name+keyid`` of each distinct witness key with a valid cosignature."""

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root_hash


@dataclass(frozen=True)
class TrustPolicy:
    """The keys a verifier holds. Build it with :meth:`parse`, which checks every key."""

    log_keys: tuple[VerifierKey, ...]
    witness_keys: tuple[VerifierKey, ...]
    quorum: int
    origin: str | None = None

    @classmethod
    def parse(
        cls,
        log_vkeys: Sequence[str],
        witness_vkeys: Sequence[str] = (),
        quorum: int = 0,
        origin: str | None = None,
    ) -> TrustPolicy:
        """Raises ``ValueError`` naming the first bad key or an impossible quorum."""
        if not log_vkeys:
            raise ValueError("at least one log verifier key (--vkey) is needed")
        # A key given twice is one key (the note verifier refuses duplicates).
        log_keys = tuple(
            dict.fromkeys(_parse_key(text, "--vkey", (SIG_ED25519,)) for text in log_vkeys)
        )
        witness_keys = tuple(
            dict.fromkeys(
                _parse_key(text, "--witness-vkey", (SIG_COSIGNATURE_V1,)) for text in witness_vkeys
            )
        )
        distinct = {key.public_key for key in witness_keys}
        if distinct & {key.public_key for key in log_keys}:
            raise ValueError("a --witness-vkey has the same public key as a --vkey")
        if not 0 <= quorum <= len(distinct):
            raise ValueError(
                f"--quorum {quorum} is not in 0..{len(distinct)} "
                "(the number of distinct witness keys given)"
            )
        return cls(log_keys, witness_keys, quorum, origin)

    def open(self, note: bytes, *, quorum: int | None = None) -> VerifiedCheckpoint:
        """The checkpoint in ``note`` once the policy holds (``quorum`` overrides its own).

        Raises ``TlogError`` (a ``ValueError``) saying what failed: a bad or missing log
        signature, a bad cosignature from a known witness, too few cosignatures, a malformed
        checkpoint or another origin.
        """
        checkpoint = verify_checkpoint(
            note,
            [str(key) for key in self.log_keys],
            [str(key) for key in self.witness_keys],
            self.quorum if quorum is None else quorum,
            origin=self.origin,
        )
        # verify_checkpoint checked every signature from a known key, so a known key's
        # (name, key id) on a signature line is a valid signature by that key.
        signed = {(line.name, line.key_id) for line in parse_note(note).signatures}
        log_key = next(
            _vkey_label(key) for key in self.log_keys if (key.name, key.key_id) in signed
        )
        cosigners: dict[bytes, str] = {}
        for key in self.witness_keys:
            if (key.name, key.key_id) in signed:
                cosigners.setdefault(key.public_key, _vkey_label(key))
        return VerifiedCheckpoint(checkpoint, note, log_key, tuple(cosigners.values()))

    def describe_witnesses(self, verified: VerifiedCheckpoint) -> str:
        """E.g. ``2 of 3 known witnesses (quorum 2)``."""
        known = len({key.public_key for key in self.witness_keys})
        if not known:
            return "none required (no --witness-vkey given)"
        return f"{len(verified.witnesses)} of {known} known witnesses (quorum {self.quorum})"


def _parse_key(text: str, option: str, types: tuple[int, ...]) -> VerifierKey:
    try:
        key = VerifierKey.parse(text.strip())
    except ValueError as error:
        raise ValueError(f"{option} {text!r} is not a C2SP verifier key: {error}") from None
    if key.signature_type not in types:
        wanted = " or ".join(f"{t:#04x}" for t in types)
        raise ValueError(
            f"{option} {key.name}: signature type {key.signature_type:#04x}, expected {wanted}"
        )
    return key
