"""Keyed digests: what the database stores instead of identifiers and searchable values.

One 256-bit key, held in Vault, gives by HMAC-SHA-256 a sub-key for each use, so a digest
made for one purpose never equals one made for another:

- the patient **pseudonym**, the column that groups a patient's rows (the patient id is
  PHI-like and never stored in clear; the ledger's subjects use another key, so the record
  database and the ledger cannot be joined without both);
- the **resource digest** of a type and id, under which the resource is stored: a Patient's
  id is the patient id, so ids in clear would name every pseudonym's patient;
- **search tokens** for (resource type, parameter, normalised value): an exact-match blind
  index, so equal values are findable and nothing else about them is;
- the **tag** of a resource's current-version pointer, so a changed pointer is damage
  rather than an older answer, and that of a patient's record holder, so a changed holder
  (which decides who reads as the patient's own organisation) is damage too;
- the ids of **idempotency keys** and the request fingerprints, which clients choose and
  which may carry anything, and the tag binding a key to the version it produced;
- **blocking tokens** of a Patient (phonetic codes of its names, its birth date, its
  identifiers: :mod:`patient_matching`), which nominate the pairs duplicate detection scores:
  equal keys are found, and the clear codes, which would narrow a name down, are never stored.

Without the key, none of these can be recomputed from a guess (a dictionary of names or
patient ids gets an attacker with the database nothing). The key is not rotated: every
stored digest would have to be recomputed from data only the owners' keys open.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Final

from medledger.record.domain.ports import ResourceKey, VersionSlot

_PSEUDONYM: Final = b"medledger.record patient pseudonym v1"
_RESOURCE: Final = b"medledger.record resource digest v1"
_SEARCH: Final = b"medledger.record search token v1"
_POINTER: Final = b"medledger.record current pointer v1"
_IDEMPOTENCY: Final = b"medledger.record idempotency key v1"
_FINGERPRINT: Final = b"medledger.record request fingerprint v1"
_IDEMPOTENT_RESULT: Final = b"medledger.record idempotent result v1"
_HOLDER: Final = b"medledger.record record holder v1"
_BLOCKING: Final = b"medledger.record patient blocking key v1"


def _encode(*parts: str | int) -> bytes:
    # A JSON array: no choice of values can make two different tuples encode alike.
    return json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False).encode()


class BlindIndex:
    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the blind-index key must have at least 256 bits")
        self._key = key

    def _mac(self, label: bytes, data: bytes) -> bytes:
        # Each use has its own sub-key, HMAC(key, label): a digest made for one use never
        # matches one made for another, whatever the inputs.
        sub_key = hmac.new(self._key, label, hashlib.sha256).digest()
        return hmac.new(sub_key, data, hashlib.sha256).digest()

    def pseudonym(self, patient_id: str) -> bytes:
        return self._mac(_PSEUDONYM, patient_id.encode())

    def resource_digest(self, resource: ResourceKey) -> bytes:
        return self._mac(_RESOURCE, _encode(resource.resource_type, resource.resource_id))

    def search_token(self, resource_type: str, param: str, value: str) -> bytes:
        return self._mac(_SEARCH, _encode(resource_type, param, value))

    def pointer_tag(self, slot: VersionSlot, patient: bytes) -> bytes:
        return self._mac(_POINTER, _encode(slot.resource.hex(), slot.version, patient.hex()))

    def pointer_is_authentic(self, slot: VersionSlot, patient: bytes, tag: bytes) -> bool:
        return hmac.compare_digest(self.pointer_tag(slot, patient), tag)

    def idempotency_id(self, key: str) -> bytes:
        return self._mac(_IDEMPOTENCY, key.encode())

    def fingerprint(self, request_fingerprint: bytes) -> bytes:
        return self._mac(_FINGERPRINT, request_fingerprint)

    def idempotent_result_tag(self, key_id: bytes, fingerprint: bytes, slot: VersionSlot) -> bytes:
        return self._mac(
            _IDEMPOTENT_RESULT,
            _encode(key_id.hex(), fingerprint.hex(), slot.resource.hex(), slot.version),
        )

    def holder_tag(self, patient: bytes, holder: str) -> bytes:
        return self._mac(_HOLDER, _encode(patient.hex(), holder))

    def holder_is_authentic(self, patient: bytes, holder: str, tag: bytes) -> bool:
        return hmac.compare_digest(self.holder_tag(patient, holder), tag)

    def blocking_token(self, key: str) -> bytes:
        return self._mac(_BLOCKING, key.encode())
