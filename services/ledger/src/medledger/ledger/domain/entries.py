"""What may enter the ledger: a LedgerEntry with identifiers and commitments only.

The ledger is public to auditors and kept forever, so it must never hold PHI. An entry
therefore has no free text: every string is an identifier matched against a strict
pattern, every opaque value has a fixed size, and unknown fields are refused (they could
smuggle anything). The leaf bytes are the entry's deterministic protobuf encoding.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.common.timestamps import timestamp_to_datetime, timestamp_violation

SUBJECT_SIZE = 32
COMMITMENT_SIZE = 32
TRACE_ID_SIZE = 16
# A nonce lets whoever holds a patient's pseudonym find the entry (docs/access-report.md).
NONCE_SIZES = range(16, 33)
# Identifiers: FHIR ids, client ids, organisation ids, user ids, key names.
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
RESOURCE_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(2020, 1, 1, tzinfo=UTC)


def _check_size(
    problems: list[FieldViolation], field: str, value: bytes, size: int, *, optional: bool
) -> None:
    if optional and not value:
        return
    if len(value) != size:
        what = f"must be {size} bytes" + (" or empty" if optional else "")
        problems.append(FieldViolation(field, what))


def _check_identifier(
    problems: list[FieldViolation], field: str, value: str, pattern: re.Pattern[str]
) -> None:
    if not pattern.fullmatch(value):
        problems.append(FieldViolation(field, f"must match {pattern.pattern}"))


def validate_entry(entry: ledger_pb2.LedgerEntry, *, now: datetime | None = None) -> bytes:
    """Checks ``entry`` and returns its canonical leaf bytes, or raises InvalidArgument
    naming every bad field (the descriptions never repeat the values)."""
    problems: list[FieldViolation] = []
    stripped = ledger_pb2.LedgerEntry()
    stripped.CopyFrom(entry)
    stripped.DiscardUnknownFields()
    if stripped.ByteSize() != entry.ByteSize():
        problems.append(FieldViolation("entry", "has fields this ledger does not know"))
    if entry.kind not in ledger_pb2.EventKind.values() or entry.kind == 0:
        problems.append(FieldViolation("entry.kind", "must be a known event kind"))
    if entry.purpose not in purpose_pb2.PurposeOfUse.values():
        problems.append(FieldViolation("entry.purpose", "must be a known purpose of use"))
    _check_size(problems, "entry.subject", entry.subject, SUBJECT_SIZE, optional=True)
    _check_size(
        problems,
        "entry.content_commitment",
        entry.content_commitment,
        COMMITMENT_SIZE,
        optional=True,
    )
    _check_size(problems, "entry.trace_id", entry.trace_id, TRACE_ID_SIZE, optional=True)
    if entry.nonce and len(entry.nonce) not in NONCE_SIZES:
        problems.append(FieldViolation("entry.nonce", "must be 16 to 32 bytes or empty"))
    if entry.nonce and not entry.subject:
        problems.append(FieldViolation("entry.nonce", "must be empty in an entry without subject"))
    if entry.HasField("resource"):
        _check_identifier(problems, "entry.resource.type", entry.resource.type, RESOURCE_TYPE)
        _check_identifier(problems, "entry.resource.id", entry.resource.id, RESOURCE_ID)
        if entry.resource.version < 0:
            problems.append(FieldViolation("entry.resource.version", "must not be negative"))
    _check_identifier(problems, "entry.actor", entry.actor, IDENTIFIER)
    _check_identifier(problems, "entry.organization", entry.organization, IDENTIFIER)
    if not entry.HasField("time"):
        problems.append(FieldViolation("entry.time", "is required"))
    elif (violation := timestamp_violation(entry.time, "entry.time")) is not None:
        problems.append(violation)
    else:
        when = timestamp_to_datetime(entry.time, field="entry.time")
        current = now or datetime.now(UTC)
        if when < EARLIEST or when > current + MAX_CLOCK_SKEW:
            problems.append(
                FieldViolation("entry.time", "must be after 2020 and not in the future")
            )
    if problems:
        raise InvalidArgument(problems)
    return stripped.SerializeToString(deterministic=True)


def validate_idempotency_key(key: str) -> None:
    if key and not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidArgument(
            [FieldViolation("idempotency_key", f"must match {IDEMPOTENCY_KEY.pattern}")]
        )


def caller_idempotency_key(caller: str, key: str) -> str:
    """The key as stored: SHA-256 over the authenticated caller and its key, so two callers
    with the same key make two entries; "" (no key) stays "". The stored form never matches
    a key a caller sends (no ``=`` in those)."""
    if not key:
        return ""
    return "=" + hashlib.sha256(f"{caller}\x00{key}".encode()).hexdigest()
