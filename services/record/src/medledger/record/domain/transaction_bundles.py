"""ExecuteBundle: a FHIR R4 ``transaction`` Bundle of creates, stored all or none in one
ledger step (the bulk-write path: one CheckAccess per patient and type, every version
prepared, one ledger AppendBatch, one commit transaction).

As FHIR's transaction interaction says for POST entries:
- each entry is ``{"fullUrl": ..., "resource": {...}, "request": {"method": "POST", "url":
  "<resourceType>"}}``; the server assigns every id;
- an entry's ``fullUrl`` (``urn:uuid:<uuid>``) may be named by other entries' references,
  which are rewritten to ``<type>/<assigned id>`` before validation; a ``urn:uuid:``
  reference that names no entry is an error. A Provenance's targets become version-specific
  (``<type>/<id>/_history/1``), as FHIR recommends for Provenance.target (HAPI FHIR's
  auto-versioned reference paths do the same);
- the answer lists the stored resources in the entries' order.

So a Patient and its first resources, or a RiskAssessment and the Provenance targeting it,
go in one request. Every resource is validated as CreateResource validates it, and each
problem is located under its entry (``entry[2].resource.status``). A Provenance's other
targets must lie in its patient's compartment: created in this bundle for that patient, or
already stored there. Other methods (PUT, DELETE, conditional creates) and ``batch`` bundles
are refused (INVALID_ARGUMENT naming the field). A retry with the same idempotency key
returns the first result and writes nothing new.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from medledger.common.errors import MedledgerError
from medledger.record.domain.bulk_writes import MAX_BULK_WRITES, BulkWrites, NewResource
from medledger.record.domain.fhir_validation import (
    ValidResource,
    parse_resource_json,
    validate_document,
)
from medledger.record.domain.peers import Requester
from medledger.record.domain.ports import RecordStorage, ResourceKey, StoredVersion
from medledger.record.domain.resource_issues import (
    DOCUMENT,
    ResourceInvalid,
    ResourceIssue,
    child,
    item,
    raise_if_any,
)
from medledger.record.domain.resources import member_paths, patient_reference

BUNDLE_FIELD: Final = "bundle_json"
# Entries in one transaction at most (each a resource; one ledger step for all).
MAX_ENTRIES: Final = 100
_URN_UUID: Final = re.compile(
    r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
)
assert MAX_ENTRIES <= MAX_BULK_WRITES


@dataclass(frozen=True)
class _Entry:
    position: int
    full_url: str | None
    resource: dict[str, Any]
    resource_id: str


def _at(position: int, path: str = "") -> str:
    """The location of ``path`` in the resource of entry ``position``."""
    resource = child(item("entry", position), "resource")
    return child(resource, path) if path else resource


def _entries(document: object) -> list[tuple[int, str | None, dict[str, Any]]]:
    """Each entry's position, fullUrl and resource, once the Bundle's shape is right."""
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        raise ResourceInvalid([ResourceIssue("structure", "resourceType", "must be Bundle")])
    if document.get("type") != "transaction":
        raise ResourceInvalid(
            [ResourceIssue("not-supported", "type", "only transaction bundles are executed")]
        )
    entries = document.get("entry")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_ENTRIES:
        raise ResourceInvalid(
            [ResourceIssue("required", "entry", f"a transaction holds 1 to {MAX_ENTRIES} entries")]
        )
    issues: list[ResourceIssue] = []
    found: list[tuple[int, str | None, dict[str, Any]]] = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        where = item("entry", position)
        if not isinstance(entry, dict):
            issues.append(ResourceIssue("structure", where, "an entry is a JSON object"))
            continue
        request = entry.get("request")
        if not isinstance(request, dict) or request.get("method") != "POST":
            issues.append(
                ResourceIssue(
                    "not-supported",
                    child(child(where, "request"), "method"),
                    "only POST (create) entries are executed",
                )
            )
            continue
        resource = entry.get("resource")
        if not isinstance(resource, dict):
            issues.append(
                ResourceIssue("required", child(where, "resource"), "a resource to create")
            )
            continue
        if request.get("url") != resource.get("resourceType"):
            issues.append(
                ResourceIssue(
                    "invalid",
                    child(child(where, "request"), "url"),
                    "a create's url is the resource's type",
                )
            )
        full_url = entry.get("fullUrl")
        if full_url is not None:
            if not isinstance(full_url, str) or not _URN_UUID.fullmatch(full_url):
                issues.append(
                    ResourceIssue(
                        "invalid", child(where, "fullUrl"), "a urn:uuid: with a lower-case UUID"
                    )
                )
                continue
            if full_url in seen:
                issues.append(
                    ResourceIssue("duplicate", child(where, "fullUrl"), "names another entry too")
                )
                continue
            seen.add(full_url)
        found.append((position, full_url, resource))
    raise_if_any(issues)
    return found


def _rewrite(value: Any, names: dict[str, str], path: str, unknown: list[str]) -> Any:
    """``value`` with every reference to an entry's fullUrl replaced by ``<type>/<id>``; the
    paths of ``urn:uuid:`` references that name no entry go to ``unknown``."""
    if isinstance(value, dict):
        rewritten: dict[str, Any] = {}
        for key, member in value.items():
            here = child(path, key)
            if key == "reference" and isinstance(member, str) and member.startswith("urn:"):
                if member in names:
                    rewritten[key] = names[member]
                else:
                    unknown.append(here)
                    rewritten[key] = member
            else:
                rewritten[key] = _rewrite(member, names, here, unknown)
        return rewritten
    if isinstance(value, list):
        return [_rewrite(each, names, item(path, n), unknown) for n, each in enumerate(value)]
    return value


def _versioned_targets(resource: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """A Provenance's targets that name entries, rewritten to their first version."""
    targets = resource.get("target")
    if resource.get("resourceType") != "Provenance" or not isinstance(targets, list):
        return resource
    rewritten = []
    for target in targets:
        named = target.get("reference") if isinstance(target, dict) else None
        if isinstance(named, str) and named in names:
            rewritten.append({**target, "reference": f"{names[named]}/_history/1"})
        else:
            rewritten.append(target)
    return {**resource, "target": rewritten}


def _validated(entries: Sequence[_Entry]) -> list[ValidResource]:
    """Each entry's resource, its references to other entries rewritten, validated as
    CreateResource validates it; every problem located under its entry. CPU-bound."""
    names = {
        e.full_url: f"{e.resource['resourceType']}/{e.resource_id}"
        for e in entries
        if e.full_url is not None
    }
    issues: list[ResourceIssue] = []
    valid: list[ValidResource] = []
    for entry in entries:
        unknown: list[str] = []
        resource = _rewrite(_versioned_targets(entry.resource, names), names, "", unknown)
        issues.extend(
            ResourceIssue("not-found", _at(entry.position, path), "names no entry of this bundle")
            for path in unknown
        )
        if unknown:
            continue
        try:
            valid.append(validate_document(resource))
        except ResourceInvalid as invalid:
            issues.extend(
                ResourceIssue(
                    i.code,
                    _at(entry.position)
                    if i.location == DOCUMENT
                    else _at(entry.position, i.location),
                    i.diagnostics,
                )
                for i in invalid.issues
            )
    raise_if_any(issues)
    return valid


class TransactionBundles:
    def __init__(self, writes: BulkWrites, storage: RecordStorage) -> None:
        self._writes = writes
        self._storage = storage

    async def execute(
        self, requester: Requester, bundle_json: str, idempotency_key: str = ""
    ) -> list[StoredVersion]:
        digest = hashlib.sha256(bundle_json.encode("utf-8", errors="surrogatepass")).digest()
        if (first := await self._writes.replay(requester, idempotency_key, digest)) is not None:
            return first
        try:
            document = await asyncio.to_thread(parse_resource_json, bundle_json)
        except ResourceInvalid as invalid:  # located at the request's field
            raise ResourceInvalid(
                [ResourceIssue(i.code, BUNDLE_FIELD, i.diagnostics) for i in invalid.issues]
            ) from None
        found = _entries(document)
        ids = self._writes.new_ids(len(found))
        entries = [
            _Entry(position, full_url, resource, resource_id)
            for (position, full_url, resource), resource_id in zip(found, ids, strict=True)
        ]
        valid = await asyncio.to_thread(_validated, entries)
        await self._check_patients(entries, valid)
        return await self._writes.write_all(
            requester,
            [NewResource(v, e.resource_id) for e, v in zip(entries, valid, strict=True)],
            idempotency_key=idempotency_key,
            request_digest=digest,
            members_checked=True,
        )

    async def _check_patients(
        self, entries: Sequence[_Entry], valid: Sequence[ValidResource]
    ) -> None:
        """Each resource's patient is stored or created here; a Provenance's other targets
        lie in its patient's compartment (in this bundle, or stored)."""
        created = {
            e.resource_id
            for e, v in zip(entries, valid, strict=True)
            if v.resource_type == "Patient"
        }
        patients: dict[str, str] = {}  # each resource's patient, by its key
        for entry, each in zip(entries, valid, strict=True):
            patient = entry.resource_id if each.resource_type == "Patient" else each.patient_id
            assert patient is not None  # validated: every other type names one
            patients[f"{each.resource_type}/{entry.resource_id}"] = patient
        issues: list[ResourceIssue] = []
        stored: dict[str, bool] = {patient: True for patient in created}
        for entry, each in zip(entries, valid, strict=True):
            patient = patients[f"{each.resource_type}/{entry.resource_id}"]
            if patient not in stored:
                stored[patient] = await self._patient_stored(patient)
            if not stored[patient]:
                issues.append(
                    ResourceIssue(
                        "not-found",
                        _at(entry.position, patient_reference(each)),
                        "names a Patient that is not stored here or created in this bundle",
                    )
                )
                continue
            paths = member_paths(each) if each.compartment_members else {}
            elsewhere: dict[ResourceKey, str] = {}
            for member, path in paths.items():
                in_bundle = patients.get(f"{member.resource_type}/{member.resource_id}")
                if in_bundle is None:
                    elsewhere[member] = path
                elif in_bundle != patient:
                    issues.append(self._outside(entry, path))
            if elsewhere:
                outside = await self._storage.outside_compartment(patient, list(elsewhere))
                issues.extend(self._outside(entry, elsewhere[m]) for m in outside)
        raise_if_any(issues)

    async def _patient_stored(self, patient_id: str) -> bool:
        try:
            await self._storage.patient_holder(patient_id)
        except MedledgerError as error:
            if error.reason == "PATIENT_NOT_FOUND":
                return False
            raise
        return True

    @staticmethod
    def _outside(entry: _Entry, path: str) -> ResourceIssue:
        return ResourceIssue(
            "not-found",
            _at(entry.position, path),
            "must name a resource of the same patient's compartment",
        )
