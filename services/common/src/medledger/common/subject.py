"""A patient's pseudonym: HMAC-SHA-256 of the patient id under a key kept in Vault (one per
deployment). The ledger never sees a patient id nor this pseudonym: each entry about the
patient carries it blinded with the entry's own salt (:mod:`medledger.common.blinding`), and
the pseudonym with that salt proves the entry is the patient's."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets

from medledger.common.errors import FailedPrecondition
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import KV_MOUNT, SUBJECT_KEY_PATH


class SubjectHasher:
    def __init__(self, vault: VaultTransit) -> None:
        self._vault = vault
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def _load(self) -> bytes:
        async with self._lock:
            if self._key is None:
                stored = await self._vault.read_secret(SUBJECT_KEY_PATH, mount=KV_MOUNT)
                if stored is None:
                    fresh = base64.b64encode(secrets.token_bytes(32)).decode()
                    # Refused once it exists: a service may create the key, never replace
                    # it (vault_layout), so a creator that lost the race is refused.
                    with contextlib.suppress(FailedPrecondition):
                        await self._vault.create_secret(
                            SUBJECT_KEY_PATH, {"key": fresh}, mount=KV_MOUNT
                        )
                    # Whoever won the race, everyone uses the stored value.
                    stored = await self._vault.read_secret(SUBJECT_KEY_PATH, mount=KV_MOUNT)
                if stored is None or "key" not in stored:
                    raise FailedPrecondition("subject key is missing", reason="SUBJECT_KEY")
                self._key = base64.b64decode(stored["key"])
            return self._key

    async def subject(self, patient_id: str) -> bytes:
        """The 32-byte pseudonym of ``patient_id`` for ledger entries."""
        key = await self._load()
        return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).digest()
