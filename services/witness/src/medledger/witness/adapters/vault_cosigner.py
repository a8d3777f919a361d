"""The witness's cosigning key in Vault transit (Ed25519): the private key never leaves Vault.

Vault signs the C2SP cosignature/v1 message; the key id comes from the public key of the
version that signed, which Vault reports with each signature. Public keys are cached and
re-read when Vault signs with a version we have not seen (the key was rotated).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

from medledger.common.errors import FailedPrecondition, NotFound
from medledger.common.vault import VaultTransit
from medledger.tlog import (
    SIG_COSIGNATURE_V1,
    CosignatureVerifier,
    NoteSignature,
    VerifierKey,
    check_key_name,
    cosigned_message,
)

T = TypeVar("T")

# tlog-cosignature v1: the signature is preceded by its timestamp, 8 bytes big-endian.
_TIMESTAMP_SIZE = 8


class VaultCosigner:
    """A ``CheckpointCosigner`` whose key is Vault transit key ``key``, named ``name``."""

    def __init__(self, transit: VaultTransit, *, key: str, name: str) -> None:
        check_key_name(name)
        self._transit = transit
        self._key = key
        self._name = name
        self._public_keys: dict[int, bytes] = {}

    @property
    def name(self) -> str:
        return self._name

    async def _vault(self, call: Awaitable[T]) -> T:
        # A missing key is this witness's misconfiguration, not a missing log (NOT_FOUND).
        try:
            return await call
        except NotFound as exc:
            raise FailedPrecondition(
                "the witness key is missing in vault", reason="WITNESS_KEY_UNKNOWN"
            ) from exc

    async def _vkey(self, version: int) -> VerifierKey:
        if version not in self._public_keys:
            self._public_keys = await self._vault(self._transit.public_keys(self._key))
        public_key = self._public_keys.get(version)
        if public_key is None:
            raise FailedPrecondition(
                "vault signed with a key version it does not list", reason="WITNESS_KEY_UNKNOWN"
            )
        return VerifierKey.for_key(self._name, SIG_COSIGNATURE_V1, public_key)

    async def verifier_key(self) -> VerifierKey:
        """The latest version's vkey, read from Vault each time (the key may have rotated)."""
        self._public_keys = await self._vault(self._transit.public_keys(self._key))
        if not self._public_keys:
            raise FailedPrecondition(
                "the witness key in vault has no public key", reason="WITNESS_KEY_UNKNOWN"
            )
        return await self._vkey(max(self._public_keys))

    async def cosign(self, body: bytes, timestamp: int) -> NoteSignature:
        message = cosigned_message(body, timestamp)
        signed = await self._vault(self._transit.sign(self._key, message))
        vkey = await self._vkey(signed.key_version)
        signature = timestamp.to_bytes(_TIMESTAMP_SIZE, "big") + signed.signature
        # Never hand out a cosignature that our advertised key would not verify.
        if not CosignatureVerifier.from_vkey(vkey).verify(body, signature):
            raise FailedPrecondition(
                "vault's signature does not verify with the witness key",
                reason="WITNESS_KEY_MISMATCH",
            )
        return NoteSignature(self._name, vkey.key_id, signature)
