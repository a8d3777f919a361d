"""Offline verification of a patient export, with public keys only (docs/export-format.md).

An export is a FHIR R4 ``collection`` Bundle: one entry per resource, each carrying a
``ledger-proof`` extension with the ledger entry that recorded the version, that entry's
receipt and the salt that opens the entry's content commitment. Each entry passes, in order:

1. ``proof extension``: the extension is there, once, and well-formed (strict base64, a
   32-byte salt, a ``LedgerEntry`` and a ``Receipt``);
2. ``commitment``: the salt and the RFC 8785 form of the resource open the entry's
   ``content_commitment`` (so not one byte of the resource differs from what was committed);
3. ``ledger entry``: the entry records this version's write (RECORD_CREATED for version 1,
   RECORD_UPDATED after) of this resource (its type, and its id blinded as the record service
   blinds it, :mod:`medledger.verify.blinding`);
4. ``receipt ...``: the receipt proves exactly these entry bytes are a leaf of a checkpoint
   the trust policy accepts (log signature, witness quorum), :func:`~medledger.verify.receipt.
   verify_receipt`.

Before these, each entry must name its resource (``resource``: type, id, a decimal versionId
and ``fullUrl`` = ``urn:uuid:<id>``), and no resource may appear twice (``duplicate``). The
first failure stops the verification and names the entry and the check.

What this proves, and what it does not: each resource is, byte for byte (after
canonicalisation), a version the record service ledgered, in a log the verifier trusts. It
does not prove the export is complete (an entry left out leaves no trace), that a version is
the latest, or which patient an entry is about (the ledger blinds the patient with a key the
verifier does not hold): read those from the resources themselves.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn, cast

from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2
from medledger.verify.blinding import blinded_resource_id, record_blinding_salt
from medledger.verify.commitment import (
    SALT_SIZE,
    NotCanonicalizable,
    OpeningMismatch,
    canonical_json,
    check_opening,
)
from medledger.verify.receipt import ReceiptInvalid, VerifiedReceipt, verify_receipt
from medledger.verify.trust import TrustPolicy, VerifiedCheckpoint

LEDGER_PROOF_URL: Final = "https://medledger.dev/fhir/StructureDefinition/ledger-proof"
RECEIPT: Final = "receipt"
ENTRY: Final = "entry"
COMMITMENT_SALT: Final = "commitmentSalt"
PROOF_PARTS: Final = (RECEIPT, ENTRY, COMMITMENT_SALT)
PSEUDONYMISED_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
PSEUDONYMISED_CODE: Final = "PSEUDED"
FULL_URL_PREFIX: Final = "urn:uuid:"

# The checks, in the order they run on each entry.
CHECK_RESOURCE: Final = "resource"
CHECK_DUPLICATE: Final = "duplicate"
CHECK_PROOF: Final = "proof extension"
CHECK_COMMITMENT: Final = "commitment"
CHECK_LEDGER_ENTRY: Final = "ledger entry"
CHECK_RECEIPT: Final = "receipt"
# Every name EntryInvalid.check takes: the receipt's own checks (medledger.verify.receipt) are
# prefixed with "receipt".
CHECKS: Final = (
    CHECK_RESOURCE,
    CHECK_DUPLICATE,
    CHECK_PROOF,
    CHECK_COMMITMENT,
    CHECK_LEDGER_ENTRY,
    *(
        f"{CHECK_RECEIPT} {check}"
        for check in ("checkpoint", "leaf hash", "inclusion proof", "entry")
    ),
)

# FHIR R4 id; a versionId as the record service writes it (a version number, int64).
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_VERSION_ID: Final = re.compile(r"[1-9][0-9]{0,18}")
_MAX_VERSION: Final = 2**63 - 1


class ExportFormatError(ValueError):
    """The document is not a FHIR collection Bundle (not JSON, or not shaped as one)."""


class ExportNotVerifiable(Exception):
    """A Bundle with nothing the ledger can vouch for: pseudonymised, or without entries."""


class EntryInvalid(Exception):
    """An entry failed ``check``; the message says precisely what differs."""

    def __init__(self, index: int, reference: str, check: str, message: str) -> None:
        super().__init__(index, reference, check, message)
        self.index = index
        self.reference = reference
        """``Type/id version N`` once the entry names its resource; "" before."""
        self.check = check
        self.message = message

    @property
    def entry(self) -> str:
        """``entry[2] Observation/abc version 3``: which entry, for a person."""
        return f"entry[{self.index}] {self.reference}".rstrip()

    def __str__(self) -> str:
        return f"{self.entry}: {self.check} check failed: {self.message}"


@dataclass(frozen=True)
class VerifiedEntry:
    index: int
    resource_type: str
    resource_id: str
    version: int
    kind: ledger_pb2.EventKind.ValueType
    receipt: VerifiedReceipt

    @property
    def leaf_index(self) -> int:
        return self.receipt.leaf_index


@dataclass(frozen=True)
class VerifiedExport:
    bundle_id: str
    timestamp: str
    entries: tuple[VerifiedEntry, ...]

    @property
    def checkpoints(self) -> tuple[VerifiedCheckpoint, ...]:
        """Each distinct checkpoint the entries are proven in, smallest tree first."""
        distinct = {
            entry.receipt.checkpoint.note: entry.receipt.checkpoint for entry in self.entries
        }
        return tuple(sorted(distinct.values(), key=lambda c: (c.checkpoint.origin, c.size)))


# --- reading ----------------------------------------------------------------------------------


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            # Parsers disagree on which of two equal names wins: a viewer could show one
            # value while this verifier checked the other.
            raise ExportFormatError(f"member name {name!r} appears twice in one object")
        document[name] = value
    return document


def _no_constant(name: str) -> NoReturn:
    raise ExportFormatError(f"{name} is not a JSON value")


def parse_bundle(data: bytes) -> dict[str, Any]:
    """The Bundle in ``data`` (UTF-8 JSON); raises :class:`ExportFormatError` saying why it is
    not a FHIR collection Bundle. Refuses an object with two members of one name, and the
    non-JSON constants NaN and Infinity."""
    try:
        text = data.decode("utf-8")
        document = json.loads(text, object_pairs_hook=_unique_members, parse_constant=_no_constant)
    except UnicodeDecodeError as error:
        raise ExportFormatError(f"not UTF-8 text: {error}") from None
    except ExportFormatError:
        raise
    except (ValueError, RecursionError) as error:
        raise ExportFormatError(f"not JSON: {error}") from None
    check_bundle(document)
    return cast("dict[str, Any]", document)


def check_bundle(document: object) -> None:
    """Raises :class:`ExportFormatError` unless ``document`` is shaped as a FHIR collection
    Bundle: resourceType Bundle, type collection, entry (when present) a list."""
    if not isinstance(document, dict):
        raise ExportFormatError("not a FHIR Bundle: the JSON is not an object")
    if document.get("resourceType") != "Bundle":
        raise ExportFormatError(
            f"not a FHIR Bundle: resourceType is {document.get('resourceType')!r}"
        )
    if document.get("type") != "collection":
        raise ExportFormatError(
            f"not a collection Bundle: type is {document.get('type')!r}, an export is 'collection'"
        )
    if not isinstance(document.get("entry", []), list):
        raise ExportFormatError("not a FHIR Bundle: entry is not a list")


def is_pseudonymised(bundle: Mapping[str, Any]) -> bool:
    """Whether the Bundle's meta.security carries v3-ObservationValue PSEUDED."""
    meta = bundle.get("meta")
    security = meta.get("security") if isinstance(meta, dict) else None
    if not isinstance(security, list):
        return False
    return any(
        isinstance(coding, dict)
        and coding.get("system") == PSEUDONYMISED_SYSTEM
        and coding.get("code") == PSEUDONYMISED_CODE
        for coding in security
    )


# --- verifying --------------------------------------------------------------------------------


def verify_export(bundle: Mapping[str, Any], policy: TrustPolicy) -> VerifiedExport:
    """Runs every check on every entry, in order; raises :class:`EntryInvalid` for the first
    that fails, :class:`ExportNotVerifiable` for a Bundle with nothing to check, and
    :class:`ExportFormatError` for one that is not a collection Bundle."""
    check_bundle(bundle)
    if is_pseudonymised(bundle):
        raise ExportNotVerifiable(
            "it is pseudonymised (meta.security PSEUDED): its resources differ from what the "
            "ledger committed to, so it carries no ledger proofs and nothing can be checked"
        )
    entries: Sequence[object] = bundle.get("entry", [])
    if not entries:
        raise ExportNotVerifiable("it has no entries: nothing to check")
    seen: dict[tuple[str, str], int] = {}
    verified = []
    for index, entry in enumerate(entries):
        named = _named_resource(index, entry)
        first = seen.setdefault((named.resource_type, named.resource_id), index)
        if first != index:
            raise EntryInvalid(
                index,
                named.reference,
                CHECK_DUPLICATE,
                f"{named.resource_type}/{named.resource_id} is also entry[{first}]; an export "
                "holds each resource once",
            )
        verified.append(_verify_entry(named, policy))
    bundle_id = bundle.get("id")
    timestamp = bundle.get("timestamp")
    return VerifiedExport(
        bundle_id if isinstance(bundle_id, str) else "",
        timestamp if isinstance(timestamp, str) else "",
        tuple(verified),
    )


@dataclass(frozen=True)
class _NamedEntry:
    """A Bundle entry whose resource has a type, an id and a version."""

    index: int
    entry: dict[str, Any]
    resource_type: str
    resource_id: str
    version: int

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id} version {self.version}"


def _named_resource(index: int, entry: object) -> _NamedEntry:
    """The entry, once it is shaped to name its resource's type, id and version."""

    def refuse(message: str) -> NoReturn:
        raise EntryInvalid(index, "", CHECK_RESOURCE, message)

    if not isinstance(entry, dict):
        refuse("the entry is not a JSON object")
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        refuse("the entry has no resource object")
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        refuse("the resource has no resourceType")
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not _FHIR_ID.fullmatch(resource_id):
        refuse(f"the {resource_type} has no FHIR id (1-64 of A-Z a-z 0-9 - .)")
    meta = resource.get("meta")
    version_id = meta.get("versionId") if isinstance(meta, dict) else None
    if (
        not isinstance(version_id, str)
        or not _VERSION_ID.fullmatch(version_id)
        or int(version_id) > _MAX_VERSION
    ):
        refuse(
            f"{resource_type}/{resource_id} has no meta.versionId that is a version number "
            f"(found {version_id!r})"
        )
    full_url = entry.get("fullUrl")
    if full_url != FULL_URL_PREFIX + resource_id:
        # References inside the Bundle resolve through fullUrl: a wrong one would make another
        # entry's reference land on this resource.
        refuse(
            f"fullUrl is {full_url!r}; the entry of {resource_type}/{resource_id} has "
            f"{FULL_URL_PREFIX + resource_id!r}"
        )
    return _NamedEntry(index, entry, resource_type, resource_id, int(version_id))


@dataclass(frozen=True)
class _Proof:
    receipt: ledger_pb2.Receipt
    entry_bytes: bytes
    entry: ledger_pb2.LedgerEntry
    salt: bytes


def _verify_entry(named: _NamedEntry, policy: TrustPolicy) -> VerifiedEntry:
    """Checks 1 to 4 of the module's docstring, in order."""
    resource_type, resource_id, version = named.resource_type, named.resource_id, named.version

    def refuse(check: str, message: str) -> NoReturn:
        raise EntryInvalid(named.index, named.reference, check, message)

    try:
        proof = _proof(named.entry)
    except ValueError as error:
        refuse(CHECK_PROOF, str(error))

    try:
        canonical = canonical_json(named.entry["resource"])
        check_opening(proof.entry.content_commitment, proof.salt, canonical)
    except (NotCanonicalizable, RecursionError):
        refuse(CHECK_COMMITMENT, "the resource has no RFC 8785 canonical form")
    except OpeningMismatch as error:
        refuse(
            CHECK_COMMITMENT,
            f"{error}: the resource (canonical JSON, {len(canonical)} bytes) is not what the "
            "ledger entry committed to",
        )

    expected_kind = (
        ledger_pb2.EVENT_KIND_RECORD_CREATED
        if version == 1
        else ledger_pb2.EVENT_KIND_RECORD_UPDATED
    )
    if proof.entry.kind != expected_kind:
        refuse(
            CHECK_LEDGER_ENTRY,
            f"the entry records {_kind_name(proof.entry.kind)}; version {version} is written "
            f"by {_kind_name(expected_kind)}",
        )
    if not proof.entry.HasField("resource"):
        refuse(CHECK_LEDGER_ENTRY, "the entry names no resource")
    if proof.entry.resource.type != resource_type:
        refuse(
            CHECK_LEDGER_ENTRY,
            f"the entry is about a {proof.entry.resource.type!r}, not a {resource_type!r}",
        )
    blinded = blinded_resource_id(
        record_blinding_salt(proof.salt), resource_type, resource_id, version
    )
    if proof.entry.resource.id != blinded:
        refuse(
            CHECK_LEDGER_ENTRY,
            f"the entry's resource.id {proof.entry.resource.id!r} is not {blinded}, the id of "
            f"{resource_type}/{resource_id} version {version} blinded with this salt: the "
            "entry is about another resource or version",
        )

    try:
        receipt = verify_receipt(proof.receipt, policy, proof.entry_bytes)
    except ReceiptInvalid as failure:
        refuse(f"{CHECK_RECEIPT} {failure.check}", failure.message)
    return VerifiedEntry(
        named.index, resource_type, resource_id, version, proof.entry.kind, receipt
    )


def _kind_name(kind: ledger_pb2.EventKind.ValueType) -> str:
    try:
        return ledger_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_")
    except ValueError:
        return f"event kind {kind}"


def _proof(entry: Mapping[str, Any]) -> _Proof:
    """The entry's ledger proof, decoded; ``ValueError`` saying what is missing or wrong."""
    extensions = entry.get("extension")
    if extensions is None:
        raise ValueError(f"the entry has no extension {LEDGER_PROOF_URL}")
    if not isinstance(extensions, list) or not all(isinstance(e, dict) for e in extensions):
        raise ValueError("extension is not a list of objects")
    proofs = [e for e in extensions if e.get("url") == LEDGER_PROOF_URL]
    if len(proofs) != 1:
        raise ValueError(
            f"the entry has {len(proofs)} extensions {LEDGER_PROOF_URL}, not exactly one"
        )
    (proof,) = proofs
    parts = proof.get("extension")
    if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
        raise ValueError("the ledger-proof extension has no list of extensions")
    values: dict[str, bytes] = {}
    for part in parts:
        url = part.get("url")
        if url not in PROOF_PARTS:
            raise ValueError(f"the ledger-proof extension has an unknown part {url!r}")
        if url in values:
            raise ValueError(f"the ledger-proof extension has {url!r} twice")
        if set(part) != {"url", "valueBase64Binary"}:
            raise ValueError(f"the ledger-proof part {url!r} holds other than valueBase64Binary")
        values[url] = _base64(url, part["valueBase64Binary"])
    missing = [name for name in PROOF_PARTS if name not in values]
    if missing:
        raise ValueError(f"the ledger-proof extension lacks {', '.join(map(repr, missing))}")
    salt = values[COMMITMENT_SALT]
    if len(salt) != SALT_SIZE:
        raise ValueError(f"the commitmentSalt is {len(salt)} bytes, not {SALT_SIZE}")
    ledger_entry = ledger_pb2.LedgerEntry()
    try:
        ledger_entry.ParseFromString(values[ENTRY])
    except DecodeError as error:
        raise ValueError(f"the entry is not a ledger LedgerEntry: {error}") from None
    receipt = ledger_pb2.Receipt()
    try:
        receipt.ParseFromString(values[RECEIPT])
    except DecodeError as error:
        raise ValueError(f"the receipt is not a ledger Receipt: {error}") from None
    return _Proof(receipt, values[ENTRY], ledger_entry, salt)


def _base64(name: str, value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError(f"the ledger-proof part {name!r} has no base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValueError(
            f"the ledger-proof part {name!r} is not base64 (RFC 4648 §4, padded): {error}"
        ) from None


# --- writing ----------------------------------------------------------------------------------


def ledger_proof_extension(
    receipt: ledger_pb2.Receipt, entry: bytes, commitment_salt: bytes
) -> dict[str, Any]:
    """The ``ledger-proof`` extension of a Bundle entry: the receipt, the exact entry bytes (the
    leaf data) and the salt that opens the entry's content commitment."""
    if len(commitment_salt) != SALT_SIZE:
        raise ValueError(f"a commitment salt is {SALT_SIZE} bytes, not {len(commitment_salt)}")

    def part(url: str, value: bytes) -> dict[str, str]:
        return {"url": url, "valueBase64Binary": base64.b64encode(value).decode("ascii")}

    return {
        "url": LEDGER_PROOF_URL,
        "extension": [
            part(RECEIPT, receipt.SerializeToString(deterministic=True)),
            part(ENTRY, entry),
            part(COMMITMENT_SALT, commitment_salt),
        ],
    }
