"""ExecuteBundle: a FHIR R4 ``transaction`` Bundle of creates and updates, stored all or none
in one ledger step (the bulk-write path: one CheckAccess per patient and type, every version
prepared, one ledger AppendBatch, one commit transaction).

As FHIR's transaction interaction says:
- a create is ``{"fullUrl": ..., "resource": {...}, "request": {"method": "POST", "url":
  "<resourceType>"}}``; the server assigns its id;
- an update is ``{"resource": {... "id": "<id>"}, "request": {"method": "PUT", "url":
  "<resourceType>/<id>", "ifMatch": "W/\"<version>\""}}``: the next version of a stored
  resource, if ``<version>`` is still its latest (else ABORTED STALE_VERSION, nothing
  written); If-Match is required, as UpdateResource requires ``expected_version``;
- an entry's ``fullUrl`` (``urn:uuid:<uuid>``) may be named by other entries' references,
  which are rewritten to ``<type>/<id>`` before validation; a ``urn:uuid:`` reference that
  names no entry is an error. A Provenance's targets that name entries become
  version-specific (``<type>/<id>/_history/<the version written>``), as FHIR recommends for
  Provenance.target (HAPI FHIR's auto-versioned reference paths do the same);
- the answer lists the stored versions in the entries' order.

So a Patient and its first resources, or a RiskAssessment and the Provenance targeting it,
go in one request. Every resource is validated as CreateResource and UpdateResource validate
it, and each problem is located under its entry (``entry[2].resource.status``). A
Provenance's other targets must lie in its patient's compartment: written in this bundle for
that patient, or already stored there. DELETE, conditional operations and ``batch`` bundles
are refused (INVALID_ARGUMENT naming the field). A retry with the same idempotency key
returns the first result and writes nothing new.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from medledger.common.errors import MedledgerError
from medledger.record.domain.bulk_writes import (
    MAX_BULK_WRITES,
    BulkWrite,
    BulkWrites,
    ChangedResource,
    NewResource,
)
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
_UPDATE_URL: Final = re.compile(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}")
_IF_MATCH: Final = re.compile(r'W/"([1-9][0-9]{0,17})"')
assert MAX_ENTRIES <= MAX_BULK_WRITES


@dataclass(frozen=True)
class _Entry:
    position: int
    full_url: str | None
    resource: dict[str, Any]
    resource_id: str  # the server's, for a create; the stored resource's, for an update
    expected_version: int = 0  # an update's If-Match version; 0 for a create

    @property
    def reference(self) -> str:
        return f"{self.resource['resourceType']}/{self.resource_id}"


def _at(position: int, path: str = "") -> str:
    """The location of ``path`` in the resource of entry ``position``."""
    resource = child(item("entry", position), "resource")
    return child(resource, path) if path else resource


def _entry_list(document: object) -> list[Any]:
    """The Bundle's entries, once it is a transaction of 1 to MAX_ENTRIES entries."""
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
    return entries


def _entries(document: object, new_ids: Callable[[int], Sequence[str]]) -> list[_Entry]:
    """Each entry, once the Bundle's shape is right; the creates get ids from ``new_ids``."""
    issues: list[ResourceIssue] = []
    found: list[_Entry] = []
    full_urls: set[str] = set()
    updated: set[str] = set()
    for position, raw in enumerate(_entry_list(document)):
        entry, problems = _entry(position, raw)
        if entry is None:
            issues.extend(problems)
            continue
        where = item("entry", position)
        if entry.full_url is not None and entry.full_url in full_urls:
            issues.append(
                ResourceIssue("duplicate", child(where, "fullUrl"), "names another entry too")
            )
            continue
        if entry.expected_version and entry.reference in updated:
            issues.append(
                ResourceIssue(
                    "duplicate",
                    child(child(where, "request"), "url"),
                    "another entry updates this resource too",
                )
            )
            continue
        if entry.full_url is not None:
            full_urls.add(entry.full_url)
        if entry.expected_version:
            updated.add(entry.reference)
        found.append(entry)
    raise_if_any(issues)
    ids = iter(new_ids(sum(1 for e in found if not e.expected_version)))
    return [
        e if e.expected_version else dataclasses.replace(e, resource_id=next(ids)) for e in found
    ]


def _entry(position: int, raw: object) -> tuple[_Entry | None, list[ResourceIssue]]:
    """One entry (a create's id still to assign), or what is wrong with it."""
    where = item("entry", position)
    if not isinstance(raw, dict):
        return None, [ResourceIssue("structure", where, "an entry is a JSON object")]
    request = raw.get("request")
    method = request.get("method") if isinstance(request, dict) else None
    if not isinstance(request, dict) or method not in ("POST", "PUT"):
        return None, [
            ResourceIssue(
                "not-supported",
                child(child(where, "request"), "method"),
                "only POST (create) and PUT (update) entries are executed",
            )
        ]
    resource = raw.get("resource")
    if not isinstance(resource, dict):
        return None, [ResourceIssue("required", child(where, "resource"), "a resource")]
    full_url = raw.get("fullUrl")
    if full_url is not None and (
        not isinstance(full_url, str) or not _URN_UUID.fullmatch(full_url)
    ):
        return None, [
            ResourceIssue("invalid", child(where, "fullUrl"), "a urn:uuid: with a lower-case UUID")
        ]
    if method == "PUT":
        version, problems = _update(where, request, resource)
        resource_id = str(resource.get("id"))  # the url's, once _update found no problem
    else:
        version, problems = 0, _create_problems(where, request, resource)
        resource_id = ""
    if problems:
        return None, problems
    return _Entry(position, full_url, resource, resource_id, version), []


def _create_problems(
    where: str, request: dict[str, Any], resource: dict[str, Any]
) -> list[ResourceIssue]:
    url = request.get("url")
    if isinstance(url, str) and url == resource.get("resourceType"):
        return []
    return [
        ResourceIssue(
            "invalid",
            child(child(where, "request"), "url"),
            "a create's url is the resource's type",
        )
    ]


def _update(
    where: str, request: dict[str, Any], resource: dict[str, Any]
) -> tuple[int, list[ResourceIssue]]:
    """A PUT entry's If-Match version, or what is wrong with it."""
    url, tag = request.get("url"), request.get("ifMatch")
    own = f"{resource.get('resourceType')}/{resource.get('id')}"
    if not isinstance(url, str) or not _UPDATE_URL.fullmatch(url):
        return 0, [
            ResourceIssue(
                "invalid", child(child(where, "request"), "url"), "an update's url is <type>/<id>"
            )
        ]
    if url != own:
        return 0, [
            ResourceIssue(
                "invalid",
                child(child(where, "resource"), "id"),
                "must be the id and type the request's url names",
            )
        ]
    matched = _IF_MATCH.fullmatch(tag) if isinstance(tag, str) else None
    if matched is None:
        return 0, [
            ResourceIssue(
                "required",
                child(child(where, "request"), "ifMatch"),
                'the version the update replaces, W/"<version>"',
            )
        ]
    return int(matched[1]), []


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


def _versioned_targets(resource: dict[str, Any], entries: dict[str, _Entry]) -> dict[str, Any]:
    """A Provenance's targets that name entries, rewritten to the versions written here."""
    targets = resource.get("target")
    if resource.get("resourceType") != "Provenance" or not isinstance(targets, list):
        return resource
    rewritten = []
    for target in targets:
        reference = target.get("reference") if isinstance(target, dict) else None
        named = entries.get(reference) if isinstance(reference, str) else None
        if named is not None:
            versioned = f"{named.reference}/_history/{named.expected_version + 1}"
            rewritten.append({**target, "reference": versioned})
        else:
            rewritten.append(target)
    return {**resource, "target": rewritten}


def _validated(entries: Sequence[_Entry]) -> list[ValidResource]:
    """Each entry's resource, its references to other entries rewritten, validated as
    CreateResource validates it; every problem located under its entry. CPU-bound."""
    by_url = {e.full_url: e for e in entries if e.full_url is not None}
    names = {url: e.reference for url, e in by_url.items()}
    issues: list[ResourceIssue] = []
    valid: list[ValidResource] = []
    for entry in entries:
        unknown: list[str] = []
        resource = _rewrite(_versioned_targets(entry.resource, by_url), names, "", unknown)
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
                    _at(entry.position, "" if i.location == DOCUMENT else i.location),
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
        entries = _entries(document, self._writes.new_ids)
        valid = await asyncio.to_thread(_validated, entries)
        await self._check_patients(entries, valid)
        writes: list[BulkWrite] = [
            ChangedResource(v, e.expected_version)
            if e.expected_version
            else NewResource(v, e.resource_id)
            for e, v in zip(entries, valid, strict=True)
        ]
        return await self._writes.write_unreplayed(
            requester,
            writes,
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
            if v.resource_type == "Patient" and not e.expected_version
        }
        patients: dict[str, str] = {}  # each resource's patient, by its key
        for entry, each in zip(entries, valid, strict=True):
            patient = entry.resource_id if each.resource_type == "Patient" else each.patient_id
            assert patient is not None  # validated: every other type names one
            patients[entry.reference] = patient
        issues: list[ResourceIssue] = []
        stored: dict[str, bool] = {patient: True for patient in created}
        for entry, each in zip(entries, valid, strict=True):
            patient = patients[entry.reference]
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
