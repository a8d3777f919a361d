"""A patient's pseudonym: HMAC-SHA-256 of the patient id under a key kept in Vault (one per
deployment). The ledger never sees a patient id nor this pseudonym: each entry about the
patient carries it blinded with the entry's own salt (:mod:`medledger.common.blinding`), and
the pseudonym with that salt proves the entry is the patient's."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

from medledger.common.held_keys import held_key
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import SUBJECT_KEY_PATH


class SubjectHasher:
    def __init__(self, vault: VaultTransit) -> None:
        self._vault = vault
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def _load(self) -> bytes:
        async with self._lock:
            if self._key is None:
                self._key = await held_key(self._vault, SUBJECT_KEY_PATH)
            return self._key

    async def subject(self, patient_id: str) -> bytes:
        """The 32-byte pseudonym of ``patient_id`` for ledger entries."""
        key = await self._load()
        return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).digest()
