"""``AuditRecords``: every stored version checked against the ledger entry of its write.

For each committed version, in storage order, a page at a time:

1. ``stored``: the version opens (AES-GCM under the patient's data key, bound to its slot and
   patient; the content is the resource its keyed digest names). A version that does not is
   named by its storage id only (its type and id are inside what failed).
2. ``leaf``: the ledger's bytes for the receipt's leaf hash to the receipt's leaf hash.
3. ``resource``: the entry is the write of exactly this version: RECORD_CREATED for version 1
   and RECORD_UPDATED after, of this type, and its blinded id opens (with the blinding salt
   derived from the commitment salt, :mod:`medledger.verify.blinding`) to this id and
   version.
4. ``commitment``: the stored canonical JSON and salt open the entry's content commitment.

Findings name the version and the check, never content. A database edited together with
re-encryption under the patient's key (someone holding Vault and Mongo) is what 4 finds:
the ledger, witnessed, holds the commitment the edit cannot match.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.paging import Page
from medledger.record.domain.peers import LedgerReads
from medledger.record.domain.ports import AuditedVersion, RecordStorage, StoredVersion
from medledger.verify.blinding import blinded_resource_id, record_blinding_salt
from medledger.verify.commitment import commit

STORED: Final = "stored"
LEAF: Final = "leaf"
RESOURCE: Final = "resource"
COMMITMENT: Final = "commitment"


@dataclass(frozen=True)
class Finding:
    resource_type: str
    resource_id: str
    version: int
    check: str
    detail: str


@dataclass(frozen=True)
class AuditPage:
    checked: int
    findings: list[Finding]
    next_page_token: str


def _leaf_hash(entry: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def _check(version: StoredVersion, entry_bytes: bytes) -> tuple[str, str] | None:
    receipt = ledger_pb2.Receipt.FromString(version.receipt)
    if not hmac.compare_digest(_leaf_hash(entry_bytes), receipt.leaf_hash):
        return LEAF, f"leaf {receipt.leaf_index} of the ledger does not hash to the receipt's"
    entry = ledger_pb2.LedgerEntry.FromString(entry_bytes)
    ref = version.ref
    kind = (
        ledger_pb2.EVENT_KIND_RECORD_CREATED
        if ref.version == 1
        else ledger_pb2.EVENT_KIND_RECORD_UPDATED
    )
    blinded = blinded_resource_id(
        record_blinding_salt(version.salt), ref.resource_type, ref.resource_id, ref.version
    )
    if (
        entry.kind != kind
        or entry.resource.type != ref.resource_type
        or not hmac.compare_digest(entry.resource.id, blinded)
    ):
        return RESOURCE, f"leaf {receipt.leaf_index} is the entry of another resource or version"
    expected = commit(version.salt, version.resource_json.encode())
    if not hmac.compare_digest(entry.content_commitment, expected):
        return COMMITMENT, (
            f"the stored content does not open the commitment of leaf {receipt.leaf_index}"
        )
    return None


class RecordAudit:
    def __init__(self, storage: RecordStorage, ledger_reads: LedgerReads) -> None:
        self._storage = storage
        self._reads = ledger_reads

    async def page(self, *, page_size: int, page_token: str) -> AuditPage:
        page: Page[AuditedVersion] = await self._storage.audit_page(
            page_size=page_size, page_token=page_token
        )
        opened = [a.opened for a in page.items if a.opened is not None]
        indexes = [ledger_pb2.Receipt.FromString(v.receipt).leaf_index for v in opened]
        entries = await self._reads.entries(indexes)
        findings = []
        for audited in page.items:
            version = audited.opened
            if version is None:
                findings.append(
                    Finding(
                        "", audited.storage_id, 0, STORED, "the stored version cannot be opened"
                    )
                )
                continue
            index = ledger_pb2.Receipt.FromString(version.receipt).leaf_index
            failed = _check(version, entries[index])
            if failed is not None:
                ref = version.ref
                findings.append(Finding(ref.resource_type, ref.resource_id, ref.version, *failed))
        return AuditPage(len(page.items), findings, page.next_page_token)
