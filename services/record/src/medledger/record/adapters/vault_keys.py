"""The record's keys in Vault: per-patient data keys under the transit key
``record-patient-kek``, and the key of its keyed digests, kept in KV.

A data key comes from ``transit/datakey/plaintext``: the key and its wrapped form in one
call, of which only the wrapped form is stored; unwrapping is a transit ``decrypt`` (the
KEK never leaves Vault, so a stolen database opens nothing). Rotating the KEK (operators)
leaves old wrapped keys readable.

The digest key is read from KV once per process and held in memory: computing pseudonyms
and search tokens with transit ``hmac`` instead would put a Vault call on every search and
write, and one per indexed value, for no gain in what a compromised process could do.
"""

from __future__ import annotations

import asyncio

import hvac.exceptions

from medledger.common.held_keys import held_key
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import RECORD_INDEX_KEY_PATH, RECORD_PATIENT_KEK
from medledger.record.domain.envelope import damaged
from medledger.record.domain.ports import NewDataKey


class VaultPatientKeys:
    def __init__(
        self,
        vault: VaultTransit,
        *,
        kek: str = RECORD_PATIENT_KEK,
        index_key_path: str = RECORD_INDEX_KEY_PATH,
    ) -> None:
        self._vault = vault
        self._kek = kek
        self._index_key_path = index_key_path
        self._index_key: bytes | None = None
        self._lock = asyncio.Lock()

    async def new_data_key(self) -> NewDataKey:
        fresh = await self._vault.generate_data_key(self._kek)
        return NewDataKey(fresh.plaintext, fresh.wrapped)

    async def unwrap(self, wrapped: str) -> bytes:
        try:
            return await self._vault.decrypt(self._kek, wrapped)
        except hvac.exceptions.InvalidRequest:
            # Vault refuses a wrapped key it did not make (a changed byte fails its GCM tag).
            raise damaged() from None

    async def index_key(self) -> bytes:
        async with self._lock:
            if self._index_key is None:
                self._index_key = await held_key(self._vault, self._index_key_path)
            return self._index_key
