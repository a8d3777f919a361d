"""A patient's access report, and its offline check: every ledger entry about the patient up to
a signed checkpoint, proven complete (docs/access-report.md).

The report carries the signed checkpoint, the exact bytes of EVERY leaf of the log up to its
size (or, for a report continuing an earlier one, every leaf after that one's checkpoint, with
the border of the earlier tree), the patient's pseudonym and scan key (null for a patient
without a scan secret), and the list of the patient's entries with their clear values. With
the log's (and the witnesses') public keys only, :func:`verify_access_report` runs these
checks, in order; the first that fails names itself:

1. ``checkpoint``: the checkpoint is signed by the log (and cosigned by a quorum of witnesses);
   a continuing report's earlier checkpoint too, and the border of its tree hashes to its root;
2. ``leaves``: one leaf per index from ``first_index`` to the checkpoint's size, each a
   ``LedgerEntry``;
3. ``root``: the RFC 9162 root computed from those leaves (after the earlier border) is the
   checkpoint's root hash, so not one leaf was left out, added, reordered or changed;
4. ``scan``: every leaf with a nonce is tested with the scan key and the pseudonym, and with
   the pseudonym's legacy scan key (:func:`medledger.verify.blinding.scanned_subject`); the
   listed entries must be exactly those found, each saying which key found it (``nonce``:
   the patient's scan key; ``legacy-nonce``: the legacy one), plus any entry without a nonce
   that the listed opening's salt shows is the patient's (``missing``: one found and not
   listed; ``extra``: one listed that is not the patient's);
5. ``fields``: each listed entry's clear values (event, time, actor, organisation, purpose,
   resource type, and with an opening the resource id and version and the patient's user id)
   are what the entry says or what its blinded fields hide; ``break_glass`` is exactly the
   BREAK_GLASS entries.

What it proves: the listed entries are all and only the entries about the patient whose
pseudonym and scan key the report carries, among the leaves up to the checkpoint's size. It
does not prove the pseudonym is the patient's (only the deployment's subject key makes it from
the patient id); entries without a nonce (appended before nonces existed) cannot be tested and
are counted as such; entries found by the legacy scan key (written while no scan secret of the
patient was known) are counted, since erasure does not unlink them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final, NoReturn

from google.protobuf.message import DecodeError

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.compact import CompactRange
from medledger.tlog.errors import TlogError
from medledger.tlog.hashing import leaf_hash, node_hash
from medledger.tlog.nodes import root_nodes
from medledger.tlog.note import parse_note
from medledger.verify.blinding import (
    BLINDING_SALT_SIZE,
    PATIENT_ACTOR_PREFIX,
    blinded_actor,
    blinded_resource_id,
    legacy_scan_key,
    salted_subject,
    scanned_subject,
)
from medledger.verify.trust import TrustPolicy, VerifiedCheckpoint

# /2: the report carries the patient's scan key (/1 reports, made before scan secrets, are
# refused: ask for a new report).
FORMAT: Final = "medledger.access-report/2"
PSEUDONYM_SIZE: Final = 32
SCAN_KEY_SIZE: Final = 32
# The ``actor`` a listed entry shows when the patient acted (the entry blinds their user id).
PATIENT_ACTOR: Final = "patient"
# How the report's reader finds a listed entry: by its nonce with the patient's scan key, by
# its nonce with the pseudonym's legacy scan key, or (no nonce) by the listed opening.
FOUND_BY_NONCE: Final = "nonce"
FOUND_BY_LEGACY: Final = "legacy-nonce"
FOUND_BY_OPENING: Final = "opening"

CHECK_FORMAT: Final = "format"
CHECK_CHECKPOINT: Final = "checkpoint"
CHECK_LEAVES: Final = "leaves"
CHECK_ROOT: Final = "root"
CHECK_SCAN: Final = "scan"
CHECK_FIELDS: Final = "fields"
CHECKS: Final = (
    CHECK_FORMAT,
    CHECK_CHECKPOINT,
    CHECK_LEAVES,
    CHECK_ROOT,
    CHECK_SCAN,
    CHECK_FIELDS,
)

_ENTRY_MEMBERS: Final = frozenset(
    {
        "leaf_index",
        "event",
        "time",
        "actor",
        "organization",
        "purpose",
        "resource_type",
        "resource_id",
        "resource_version",
        "break_glass",
        "found_by",
        "opening",
    }
)


class AccessReportInvalid(Exception):
    """``check`` failed; the message says precisely what differs."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(check, message)
        self.check = check
        self.message = message

    def __str__(self) -> str:
        return f"{self.check} check failed: {self.message}"


@dataclass(frozen=True)
class ListedEntry:
    """One entry about the patient, as a report lists it."""

    leaf_index: int
    event: str
    time: str
    actor: str
    organization: str
    purpose: str
    resource_type: str
    resource_id: str
    resource_version: int
    break_glass: bool
    found_by: str
    # The entry's salt when the report opens it (the record service's own entries); b"" when
    # it does not (another service's entries: found by the nonce, resource id not shown).
    salt: bytes = b""
    patient_actor: str = ""

    def document(self) -> dict[str, Any]:
        opening = (
            {"salt": _b64(self.salt), "patient_actor": self.patient_actor} if self.salt else None
        )
        return {
            "leaf_index": self.leaf_index,
            "event": self.event,
            "time": self.time,
            "actor": self.actor,
            "organization": self.organization,
            "purpose": self.purpose,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "resource_version": self.resource_version,
            "break_glass": self.break_glass,
            "found_by": self.found_by,
            "opening": opening,
        }


@dataclass(frozen=True)
class Base:
    """The earlier checkpoint a continuing report starts from, and its tree's border (the
    hashes of ``medledger.tlog.nodes.root_nodes(size)``)."""

    checkpoint: bytes
    border: tuple[bytes, ...]


@dataclass(frozen=True)
class AccessReport:
    patient_id: str
    generated_at: str
    checkpoint: bytes
    pseudonym: bytes
    first_index: int
    leaves: tuple[bytes, ...]
    entries: tuple[ListedEntry, ...]
    base: Base | None = None
    # The patient's scan key (from their scan secret); None for a patient without one, whose
    # entries only the legacy scan key of the pseudonym finds.
    scan_key: bytes | None = None

    def document(self) -> dict[str, Any]:
        base = None
        if self.base is not None:
            base = {
                "checkpoint": self.base.checkpoint.decode(),
                "border": [_b64(h) for h in self.base.border],
            }
        return {
            "format": FORMAT,
            "patient_id": self.patient_id,
            "generated_at": self.generated_at,
            "checkpoint": self.checkpoint.decode(),
            "pseudonym": _b64(self.pseudonym),
            "scan_key": None if self.scan_key is None else _b64(self.scan_key),
            "first_index": self.first_index,
            "base": base,
            "entries": [entry.document() for entry in self.entries],
            "leaves": [_b64(leaf) for leaf in self.leaves],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.document(), indent=1, ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class VerifiedAccessReport:
    report: AccessReport
    checkpoint: VerifiedCheckpoint
    base: VerifiedCheckpoint | None
    # Entries about some patient without a nonce, not listed: nobody can tell whose they are.
    untestable: int
    # Listed entries found by the legacy scan key: whoever recomputes the pseudonym finds
    # them, even after the patient's erasure.
    legacy: int = 0

    @property
    def size(self) -> int:
        return self.checkpoint.size


# --- reading and writing -----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise AccessReportInvalid(CHECK_FORMAT, f"member {name!r} appears twice in one object")
        document[name] = value
    return document


def _format(message: str) -> NoReturn:
    raise AccessReportInvalid(CHECK_FORMAT, message)


def _unb64(what: str, value: object) -> bytes:
    if not isinstance(value, str):
        _format(f"{what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        _format(f"{what} is not base64 (RFC 4648 §4, padded)")


def _member(document: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    value = document.get(name)
    # bool is an int to Python, and never one here.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _format(f"{where}{name} is missing or not a {kind.__name__}")
    return value


def _listed(position: int, item: object) -> ListedEntry:
    where = f"entries[{position}]."
    if not isinstance(item, dict):
        _format(f"entries[{position}] is not an object")
    unknown = sorted(set(item) - _ENTRY_MEMBERS)
    if unknown:
        _format(f"{where} has unknown members {unknown}")
    opening = item.get("opening")
    salt, patient_actor = b"", ""
    if opening is not None:
        if not isinstance(opening, dict) or set(opening) != {"salt", "patient_actor"}:
            _format(f"{where}opening is not an object of salt and patient_actor")
        salt = _unb64(f"{where}opening.salt", opening["salt"])
        if len(salt) != BLINDING_SALT_SIZE:
            _format(f"{where}opening.salt is {len(salt)} bytes, not {BLINDING_SALT_SIZE}")
        patient_actor = _member(opening, "patient_actor", str, f"{where}opening.")
    return ListedEntry(
        leaf_index=_member(item, "leaf_index", int, where),
        event=_member(item, "event", str, where),
        time=_member(item, "time", str, where),
        actor=_member(item, "actor", str, where),
        organization=_member(item, "organization", str, where),
        purpose=_member(item, "purpose", str, where),
        resource_type=_member(item, "resource_type", str, where),
        resource_id=_member(item, "resource_id", str, where),
        resource_version=_member(item, "resource_version", int, where),
        break_glass=_member(item, "break_glass", bool, where),
        found_by=_member(item, "found_by", str, where),
        salt=salt,
        patient_actor=patient_actor,
    )


def parse_access_report(data: bytes) -> AccessReport:
    """The report in ``data`` (UTF-8 JSON); :class:`AccessReportInvalid` (check ``format``)
    saying why it is not one."""
    try:
        document = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_members)
    except UnicodeDecodeError as error:
        _format(f"not UTF-8 text: {error}")
    except (ValueError, RecursionError) as error:
        _format(f"not JSON: {error}")
    if not isinstance(document, dict):
        _format("the JSON is not an object")
    if document.get("format") != FORMAT:
        _format(f"format is {document.get('format')!r}, not {FORMAT!r}")
    pseudonym = _unb64("pseudonym", document.get("pseudonym"))
    if len(pseudonym) != PSEUDONYM_SIZE:
        _format(f"pseudonym is {len(pseudonym)} bytes, not {PSEUDONYM_SIZE}")
    if "scan_key" not in document:
        _format("scan_key is missing (null for a patient without a scan secret)")
    key = document["scan_key"]
    if key is not None:
        key = _unb64("scan_key", key)
        if len(key) != SCAN_KEY_SIZE:
            _format(f"scan_key is {len(key)} bytes, not {SCAN_KEY_SIZE}")
    first_index = _member(document, "first_index", int)
    if first_index < 0:
        _format("first_index is negative")
    base_doc = document.get("base")
    base = None
    if base_doc is not None:
        if not isinstance(base_doc, dict):
            _format("base is not an object")
        border = _member(base_doc, "border", list, "base.")
        base = Base(
            _member(base_doc, "checkpoint", str, "base.").encode(),
            tuple(_unb64(f"base.border[{i}]", h) for i, h in enumerate(border)),
        )
    leaves = _member(document, "leaves", list)
    entries = _member(document, "entries", list)
    return AccessReport(
        patient_id=_member(document, "patient_id", str),
        generated_at=_member(document, "generated_at", str),
        checkpoint=_member(document, "checkpoint", str).encode(),
        pseudonym=pseudonym,
        first_index=first_index,
        leaves=tuple(_unb64(f"leaves[{i}]", leaf) for i, leaf in enumerate(leaves)),
        entries=tuple(_listed(i, item) for i, item in enumerate(entries)),
        base=base,
        scan_key=key,
    )


# --- what a listed entry shows -------------------------------------------------------------------


def event_name(kind: int) -> str:
    try:
        return ledger_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_")  # type: ignore[arg-type]
    except ValueError:
        return f"EVENT_KIND_{kind}"


def purpose_name(purpose: int) -> str:
    try:
        return purpose_pb2.PurposeOfUse.Name(purpose).removeprefix(  # type: ignore[arg-type]
            "PURPOSE_OF_USE_"
        )
    except ValueError:
        return f"PURPOSE_OF_USE_{purpose}"


def entry_time(entry: ledger_pb2.LedgerEntry) -> str:
    """The entry's time as RFC 3339 UTC with milliseconds (``2026-01-02T03:04:05.678Z``)."""
    when = entry.time.ToDatetime(tzinfo=UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def listed_entry(
    leaf_index: int,
    entry: ledger_pb2.LedgerEntry,
    *,
    found_by: str,
    salt: bytes = b"",
    resource_id: str = "",
    resource_version: int = 0,
    patient_actor: str = "",
) -> ListedEntry:
    """How a report lists ``entry``: its clear values, and with ``salt`` what its blinded
    resource hides (another service's entries come without: the resource id is not shown)."""
    by_patient = entry.actor.startswith(PATIENT_ACTOR_PREFIX)
    return ListedEntry(
        leaf_index=leaf_index,
        event=event_name(entry.kind),
        time=entry_time(entry),
        actor=PATIENT_ACTOR if by_patient else entry.actor,
        organization=entry.organization,
        purpose=purpose_name(entry.purpose),
        resource_type=entry.resource.type if entry.HasField("resource") else "",
        resource_id=resource_id if salt else "",
        resource_version=resource_version if salt else 0,
        break_glass=entry.kind == ledger_pb2.EVENT_KIND_BREAK_GLASS,
        found_by=found_by,
        salt=salt,
        patient_actor=patient_actor if salt and by_patient else "",
    )


def border_from_last_leaf(size: int, last_leaf: bytes, proof: Sequence[bytes]) -> list[bytes]:
    """The border of a tree of ``size`` leaves (the hashes of ``root_nodes(size)``, largest
    first) from its last leaf's bytes and that leaf's RFC 9162 audit path in it. The path
    first climbs the smallest perfect subtree (one left sibling per level), then meets each
    larger subtree of the border, smallest first. Whoever receives it checks it against the
    checkpoint's root (:class:`~medledger.tlog.compact.CompactRange`), so it need not be
    trusted."""
    if size < 1:
        raise ValueError("an empty tree has no last leaf")
    inner = ((size & -size).bit_length()) - 1
    if len(proof) != inner + len(root_nodes(size)) - 1:
        raise ValueError(f"the last leaf's path in a tree of {size} has the wrong length")
    smallest = leaf_hash(last_leaf)
    for sibling in proof[:inner]:
        smallest = node_hash(sibling, smallest)
    return [*reversed(proof[inner:]), smallest]


class ReportAssembly:
    """Builds an :class:`AccessReport` from the record service's ``GetAccessReport`` stream,
    part by part (the header, the leaves in order, the patient's entries). What the service
    sends is not trusted: :func:`verify_access_report` checks the result."""

    def __init__(self, patient_id: str, generated_at: str) -> None:
        self._patient_id = patient_id
        self._generated_at = generated_at
        self._header: record_pb2.AccessReportHeader | None = None
        self._leaves: list[bytes] = []
        self._entries: list[ListedEntry] = []

    @property
    def leaves_received(self) -> int:
        return len(self._leaves)

    def add(self, part: record_pb2.GetAccessReportResponse) -> None:
        which = part.WhichOneof("part")
        if which == "header":
            if self._header is not None:
                raise ValueError("the service sent two headers")
            self._header = part.header
            return
        if self._header is None:
            raise ValueError("the service sent report parts before its header")
        if which == "leaves":
            expected = self._header.first_index + len(self._leaves)
            if part.leaves.start_index != expected:
                raise ValueError(
                    f"the service sent leaves from {part.leaves.start_index}, not {expected}"
                )
            self._leaves.extend(part.leaves.entry_bytes)
        elif which == "entries":
            for item in part.entries.entries:
                self._entries.append(self._listed(item))

    def _listed(self, item: record_pb2.AccessReportEntry) -> ListedEntry:
        assert self._header is not None
        offset = item.leaf_index - self._header.first_index
        if not 0 <= offset < len(self._leaves):
            raise ValueError(f"the service listed leaf {item.leaf_index}, which it did not send")
        entry = ledger_pb2.LedgerEntry()
        try:
            entry.ParseFromString(self._leaves[offset])
        except DecodeError:
            raise ValueError(f"the service listed leaf {item.leaf_index}, not an entry") from None
        opening = item.opening if item.HasField("opening") else None
        if item.found_by_opening:
            found_by = FOUND_BY_OPENING
        else:
            # Which key finds it is the reader's to see; one neither finds, the verifier names.
            key = self._header.scan_key
            found = bool(key) and finds_with(entry, key, self._header.subject_pseudonym)
            found_by = FOUND_BY_NONCE if found else FOUND_BY_LEGACY
        return listed_entry(
            item.leaf_index,
            entry,
            found_by=found_by,
            salt=opening.salt if opening is not None else b"",
            resource_id=opening.resource_id if opening is not None else "",
            resource_version=opening.resource_version if opening is not None else 0,
            patient_actor=opening.patient_actor if opening is not None else "",
        )

    def report(self) -> AccessReport:
        if self._header is None:
            raise ValueError("the service sent no report")
        header = self._header
        base = None
        if header.first_index:
            base = Base(header.base_checkpoint, tuple(header.base_border))
        return AccessReport(
            patient_id=self._patient_id,
            generated_at=self._generated_at,
            checkpoint=header.checkpoint,
            pseudonym=header.subject_pseudonym,
            first_index=header.first_index,
            leaves=tuple(self._leaves),
            entries=tuple(sorted(self._entries, key=lambda e: e.leaf_index)),
            base=base,
            scan_key=header.scan_key or None,
        )


# --- verifying -----------------------------------------------------------------------------------


def _open_checkpoint(policy: TrustPolicy, note: bytes, what: str) -> VerifiedCheckpoint:
    try:
        return policy.open(note)
    except TlogError as error:
        raise AccessReportInvalid(CHECK_CHECKPOINT, f"{what}: {error}") from None


def _decode_leaves(report: AccessReport) -> list[ledger_pb2.LedgerEntry]:
    decoded = []
    for offset, leaf in enumerate(report.leaves):
        entry = ledger_pb2.LedgerEntry()
        try:
            entry.ParseFromString(leaf)
        except DecodeError as error:
            raise AccessReportInvalid(
                CHECK_LEAVES,
                f"leaf {report.first_index + offset} is not a LedgerEntry: {error}",
            ) from None
        decoded.append(entry)
    return decoded


def _check_root(report: AccessReport, checkpoint: VerifiedCheckpoint) -> None:
    tree = CompactRange()
    if report.base is not None:
        tree = CompactRange.from_border(report.first_index, report.base.border)
    tree.extend(leaf_hash(leaf) for leaf in report.leaves)
    root = tree.root()
    if not hmac.compare_digest(root, checkpoint.root):
        raise AccessReportInvalid(
            CHECK_ROOT,
            f"the {len(report.leaves)} leaves from index {report.first_index} hash to root "
            f"{root.hex()}, the checkpoint of size {checkpoint.size} has {checkpoint.root.hex()}"
            ": a leaf was left out, added or changed",
        )


def _fail_fields(listed: ListedEntry, message: str) -> NoReturn:
    raise AccessReportInvalid(CHECK_FIELDS, f"leaf {listed.leaf_index}: {message}")


def _check_fields(listed: ListedEntry, entry: ledger_pb2.LedgerEntry) -> None:
    """The listed values against the entry itself (and its opening, when given)."""
    expected = listed_entry(
        listed.leaf_index,
        entry,
        found_by=listed.found_by,
        salt=listed.salt,
        resource_id=listed.resource_id,
        resource_version=listed.resource_version,
        patient_actor=listed.patient_actor,
    )
    for name in (
        "event",
        "time",
        "actor",
        "organization",
        "purpose",
        "resource_type",
        "break_glass",
    ):
        shown, actual = getattr(listed, name), getattr(expected, name)
        if shown != actual:
            _fail_fields(listed, f"{name} is {shown!r}, the entry says {actual!r}")
    if not listed.salt:
        if listed.resource_id or listed.resource_version or listed.patient_actor:
            _fail_fields(listed, "shows a resource id, version or user id without an opening")
        return
    if entry.HasField("resource"):
        blinded = blinded_resource_id(
            listed.salt, entry.resource.type, listed.resource_id, listed.resource_version
        )
        if not hmac.compare_digest(blinded.encode(), entry.resource.id.encode()):
            _fail_fields(
                listed,
                f"{entry.resource.type}/{listed.resource_id} version "
                f"{listed.resource_version} blinded with the opening's salt is {blinded}, "
                f"the entry's resource.id is {entry.resource.id}",
            )
    elif listed.resource_id or listed.resource_version:
        _fail_fields(listed, "shows a resource the entry does not name")
    if listed.patient_actor:
        blinded_by = blinded_actor(listed.salt, listed.patient_actor)
        if not hmac.compare_digest(blinded_by.encode(), entry.actor.encode()):
            _fail_fields(listed, "the patient's user id does not open the entry's actor")


def _check_base(
    report: AccessReport, policy: TrustPolicy, origin: str
) -> VerifiedCheckpoint | None:
    """The earlier checkpoint a continuing report starts from, and its border; None for a
    report of the whole log."""
    if report.base is None:
        if report.first_index != 0:
            raise AccessReportInvalid(
                CHECK_CHECKPOINT,
                f"the report starts at leaf {report.first_index} without a base checkpoint",
            )
        return None
    base = _open_checkpoint(policy, report.base.checkpoint, "the base checkpoint")
    if base.size != report.first_index:
        raise AccessReportInvalid(
            CHECK_CHECKPOINT,
            f"the base checkpoint's size is {base.size}, the report starts at leaf "
            f"{report.first_index}",
        )
    if base.checkpoint.origin != origin:
        raise AccessReportInvalid(CHECK_CHECKPOINT, "the base checkpoint is another log's (origin)")
    try:
        border = CompactRange.from_border(report.first_index, report.base.border)
    except ValueError as error:
        raise AccessReportInvalid(CHECK_CHECKPOINT, f"the base border: {error}") from None
    if not hmac.compare_digest(border.root(), base.root):
        raise AccessReportInvalid(
            CHECK_CHECKPOINT, "the base border does not hash to the base checkpoint's root hash"
        )
    return base


def finds_with(entry: ledger_pb2.LedgerEntry, key: bytes, pseudonym: bytes) -> bool:
    """Whether the scan key ``key`` and ``pseudonym`` find ``entry`` by its nonce."""
    if not entry.nonce or not entry.subject:
        return False
    return hmac.compare_digest(entry.subject, scanned_subject(key, pseudonym, entry.nonce))


def _scan(
    report: AccessReport, entries: Sequence[ledger_pb2.LedgerEntry]
) -> tuple[dict[int, str], set[int]]:
    """The leaves the report's keys find (with the key that found each: ``nonce`` or
    ``legacy-nonce``), and those about some patient that have no nonce."""
    legacy = legacy_scan_key(report.pseudonym)
    if report.scan_key is not None and hmac.compare_digest(report.scan_key, legacy):
        # It would present entries erasure does not unlink as ones it does.
        raise AccessReportInvalid(
            CHECK_SCAN, "the scan key is the pseudonym's legacy scan key (null says so)"
        )
    found: dict[int, str] = {}
    untestable: set[int] = set()
    for offset, entry in enumerate(entries):
        if not entry.subject:
            continue
        index = report.first_index + offset
        if not entry.nonce:
            untestable.add(index)
        elif report.scan_key is not None and finds_with(entry, report.scan_key, report.pseudonym):
            found[index] = FOUND_BY_NONCE
        elif finds_with(entry, legacy, report.pseudonym):
            found[index] = FOUND_BY_LEGACY
    return found, untestable


def _check_listed(
    report: AccessReport,
    size: int,
    entries: Sequence[ledger_pb2.LedgerEntry],
    found: dict[int, str],
    untestable: set[int],
) -> dict[int, ListedEntry]:
    """The listed entries, once they are exactly the patient's (check ``scan``)."""
    listed: dict[int, ListedEntry] = {}
    for item in report.entries:
        index = item.leaf_index
        if index in listed:
            raise AccessReportInvalid(CHECK_SCAN, f"leaf {index} is listed twice")
        listed[index] = item
        if not report.first_index <= index < size:
            raise AccessReportInvalid(
                CHECK_SCAN,
                f"extra: leaf {index} is listed, outside the report's leaves "
                f"{report.first_index}..{size - 1}",
            )
        if index in found:
            if item.found_by != found[index]:
                raise AccessReportInvalid(
                    CHECK_SCAN,
                    f"leaf {index} is found by {found[index]}, not by {item.found_by}",
                )
            continue
        entry = entries[index - report.first_index]
        legacy_opened = (
            index in untestable
            and item.found_by == FOUND_BY_OPENING
            and bool(item.salt)
            and hmac.compare_digest(entry.subject, salted_subject(item.salt, report.pseudonym))
        )
        if not legacy_opened:
            raise AccessReportInvalid(
                CHECK_SCAN,
                f"extra: leaf {index} is listed but is not about the patient whose pseudonym "
                "and scan key the report carries",
            )
    missing = sorted(found.keys() - listed.keys())
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise AccessReportInvalid(
            CHECK_SCAN,
            f"missing: {len(missing)} entr{'y' if len(missing) == 1 else 'ies'} about the "
            f"patient not listed (leaf {shown})",
        )
    return listed


def unverified_checkpoint(note: bytes) -> Checkpoint:
    """The checkpoint a signed note carries, its signatures NOT checked (for display, and
    for what a report's maker checks before anyone verifies it)."""
    return Checkpoint.parse(parse_note(note).text)


def scan_report(report: AccessReport) -> dict[int, str]:
    """The leaves the report's keys find by their nonce: index, and ``nonce`` (the patient's
    scan key) or ``legacy-nonce`` (the pseudonym's legacy one)."""
    return _scan(report, _decode_leaves(report))[0]


def count_untestable(report: AccessReport) -> int:
    """Leaves about some patient without a nonce that the report does not list: nobody can
    tell whose they are."""
    listed = {e.leaf_index for e in report.entries}
    return len(_scan(report, _decode_leaves(report))[1] - listed)


def verify_access_report(report: AccessReport, policy: TrustPolicy) -> VerifiedAccessReport:
    """Runs every check of the module's docstring, in order; :class:`AccessReportInvalid` for
    the first that fails."""
    checkpoint = _open_checkpoint(policy, report.checkpoint, "the report's checkpoint")
    base = _check_base(report, policy, checkpoint.checkpoint.origin)
    expected_leaves = checkpoint.size - report.first_index
    if expected_leaves < 0 or len(report.leaves) != expected_leaves:
        raise AccessReportInvalid(
            CHECK_LEAVES,
            f"the report holds {len(report.leaves)} leaves from index {report.first_index}; "
            f"the checkpoint's tree has {checkpoint.size} leaves, so "
            f"{max(expected_leaves, 0)} are needed",
        )
    entries = _decode_leaves(report)
    _check_root(report, checkpoint)
    found, untestable = _scan(report, entries)
    listed = _check_listed(report, checkpoint.size, entries, found, untestable)
    for index, item in sorted(listed.items()):
        _check_fields(item, entries[index - report.first_index])
    return VerifiedAccessReport(
        report,
        checkpoint,
        base,
        untestable=len(untestable - listed.keys()),
        legacy=sum(1 for how in found.values() if how == FOUND_BY_LEGACY),
    )
