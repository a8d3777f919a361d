"""The rules of stored versions: which pointer and which version may be believed, and the
errors the storage answers with.

A resource's versions are 1..N, every one kept; N is named by the resource's current
pointer, which moves only when a version is committed and only from the version the writer
expected. What is read is checked before it is answered: the pointer's keyed tag, the
document's claimed slot and patient, the AES-GCM authentication of content and receipt, and
that the opened content is the resource its digest names. Anything that fails is
DATA_LOSS: a damaged record is never an older, another or a partial answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection
from typing import Final

from medledger.common.errors import Aborted, NotFound
from medledger.record.domain.blind_index import BlindIndex
from medledger.record.domain.envelope import associated_data, damaged, decode_content, unseal
from medledger.record.domain.ports import (
    CurrentPointer,
    IdempotentWrite,
    ResourceKey,
    SealedVersion,
    StoredVersion,
    VersionRef,
    VersionSlot,
)


def erased() -> NotFound:
    return NotFound("the patient's records were erased", reason="ERASED")


def resource_not_found() -> NotFound:
    return NotFound("the resource does not exist", reason="RESOURCE_NOT_FOUND")


def version_not_found() -> NotFound:
    return NotFound("the version does not exist", reason="VERSION_NOT_FOUND")


def stale(current_version: int | None) -> Aborted:
    metadata = {} if current_version is None else {"current_version": str(current_version)}
    return Aborted(
        "the resource changed since the expected version; read it again",
        reason="STALE_VERSION",
        metadata=metadata,
    )


CONCURRENT_WRITE: Final = "CONCURRENT_WRITE"


def concurrent_write() -> Aborted:
    return Aborted("another write to this resource is in progress", reason=CONCURRENT_WRITE)


def key_reused() -> Aborted:
    return Aborted(
        "the idempotency key was used for a different request", reason="IDEMPOTENCY_KEY_REUSED"
    )


def live_pointer(current: CurrentPointer | None, index: BlindIndex) -> CurrentPointer:
    """The pointer of a readable resource: NOT_FOUND, ERASED, or DATA_LOSS if forged."""
    if current is None:
        raise resource_not_found()
    if current.erased:
        raise erased()
    if current.version < 1 or not index.pointer_is_authentic(
        VersionSlot(current.resource, current.version), current.patient, current.tag
    ):
        raise damaged()
    return current


def open_version(
    key: bytes,
    index: BlindIndex,
    current: CurrentPointer,
    slot: VersionSlot,
    stored: SealedVersion | None,
    *,
    indexed_under: Collection[Collection[bytes]] = (),
) -> StoredVersion:
    """A committed version the checked ``current`` pointer covers, opened and checked."""
    # Missing, pending, or claiming another slot or patient: damaged.
    if stored is None or stored.receipt is None:
        raise damaged()
    if stored.slot != slot or stored.patient != current.patient:
        raise damaged()
    content = decode_content(
        unseal(key, stored.content, associated_data("content", slot, current.patient))
    )
    resource = ResourceKey(content.resource_type, content.resource_id)
    if not hmac.compare_digest(index.resource_digest(resource), slot.resource):
        raise damaged()
    sealed_tokens = set(content.index_tokens)
    if not all(sealed_tokens.intersection(group) for group in indexed_under):
        raise damaged()  # an index entry that names the wrong resource
    receipt = unseal(key, stored.receipt, associated_data("receipt", slot, current.patient))
    return StoredVersion(
        ref=VersionRef(content.resource_type, content.resource_id, slot.version),
        patient_id=content.patient_id,
        resource_json=content.resource_json,
        updated_time=content.updated_time,
        receipt=receipt,
        salt=content.salt,
    )


def first_result(index: BlindIndex, first: IdempotentWrite, fingerprint: bytes) -> VersionSlot:
    """Where the version an idempotency key produced is, for a request with ``fingerprint``
    (ABORTED if the key was used for another request)."""
    expected = index.idempotent_result_tag(first.key_id, first.fingerprint, first.slot)
    if not hmac.compare_digest(expected, first.tag):
        raise damaged()
    if not hmac.compare_digest(first.fingerprint, fingerprint):
        raise key_reused()
    return first.slot
