"""The one conversion of a caller's ``google.protobuf.Timestamp`` into a ``datetime``.

A Timestamp on the wire may hold any int64 seconds and int32 nanos; only 0001-01-01 to
9999-12-31 with nanos in 0..999,999,999 is a time (google/protobuf/timestamp.proto), and
protobuf's ``ToDatetime`` raises ``ValueError``/``OverflowError`` for the rest. Callers get
``InvalidArgument`` naming their field instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from medledger.common.errors import FieldViolation, InvalidArgument

MIN_SECONDS: Final = -62_135_596_800  # 0001-01-01T00:00:00Z
MAX_SECONDS: Final = 253_402_300_799  # 9999-12-31T23:59:59Z
MAX_NANOS: Final = 999_999_999


def timestamp_violation(stamp: Timestamp, field: str) -> FieldViolation | None:
    """Why ``stamp`` is not a time, or None when it is one."""
    if not MIN_SECONDS <= stamp.seconds <= MAX_SECONDS:
        return FieldViolation(field, "must be between 0001-01-01 and 9999-12-31")
    if not 0 <= stamp.nanos <= MAX_NANOS:
        return FieldViolation(field, "nanos must be between 0 and 999999999")
    return None


def timestamp_to_datetime(stamp: Timestamp, *, field: str) -> datetime:
    """``stamp`` as an aware UTC datetime (microseconds; finer nanos are dropped), or
    ``InvalidArgument`` naming ``field`` when it is out of range."""
    violation = timestamp_violation(stamp, field)
    if violation is not None:
        raise InvalidArgument([violation])
    return stamp.ToDatetime(tzinfo=UTC)
