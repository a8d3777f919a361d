"""Checkpoint signing inside Vault transit: the private key never leaves Vault.

The note key id depends on the key version that signed, so the signer learns the public
keys from Vault and refreshes them when a rotation appears. Old versions stay listed so
checkpoints signed before a rotation keep verifying.
"""

from __future__ import annotations

from medledger.common.vault import VaultTransit
from medledger.tlog.note import SIG_ED25519, VerifierKey


class VaultNoteSigner:
    def __init__(self, vault: VaultTransit, key: str, name: str) -> None:
        self._vault = vault
        self._key = key
        self._name = name
        self._vkeys: dict[int, VerifierKey] = {}
        self._version = 0

    async def refresh(self) -> None:
        keys = await self._vault.public_keys(self._key)
        self._vkeys = {
            version: VerifierKey.for_key(self._name, SIG_ED25519, public)
            for version, public in keys.items()
        }
        self._version = max(self._vkeys)

    @property
    def name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        """The key id of the version that made the last signature."""
        return self._vkeys[self._version].key_id

    async def sign(self, message: bytes) -> bytes:
        signature = await self._vault.sign(self._key, message)
        if signature.key_version not in self._vkeys:
            await self.refresh()
        self._version = signature.key_version
        return signature.signature

    async def verifier_keys(self) -> list[str]:
        """Every version's verifier key string, newest first."""
        await self.refresh()
        return [str(self._vkeys[v]) for v in sorted(self._vkeys, reverse=True)]
