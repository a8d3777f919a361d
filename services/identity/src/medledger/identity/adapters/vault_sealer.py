"""Secrets at rest (TOTP seeds) sealed by a Vault transit AES key: Mongo holds only the
ciphertext, and reading it back needs Vault's permission."""

from __future__ import annotations

from medledger.common.vault import VaultTransit


class VaultSealer:
    def __init__(self, vault: VaultTransit, key: str) -> None:
        self._vault = vault
        self._key = key

    async def seal(self, secret: bytes) -> str:
        return await self._vault.encrypt(self._key, secret)

    async def unseal(self, sealed: str) -> bytes:
        return await self._vault.decrypt(self._key, sealed)
