"""A caller's Timestamp outside 0001..9999 or with nanos outside 0..999999999 is
InvalidArgument naming the field, never the ValueError protobuf raises."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.errors import InvalidArgument
from medledger.common.timestamps import MAX_SECONDS, MIN_SECONDS, timestamp_to_datetime


@given(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_any_wire_value_is_a_time_or_invalid_argument(seconds: int, nanos: int) -> None:
    stamp = Timestamp(seconds=seconds, nanos=nanos)
    in_range = MIN_SECONDS <= seconds <= MAX_SECONDS and 0 <= nanos < 10**9
    try:
        when = timestamp_to_datetime(stamp, field="period_end")
    except InvalidArgument as error:
        assert not in_range
        assert [v.field for v in error.violations] == ["period_end"]
    else:
        assert in_range
        assert when.tzinfo is UTC
        assert int(when.timestamp()) == seconds or seconds < 0


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [
        (MIN_SECONDS, 0, datetime(1, 1, 1, tzinfo=UTC)),
        (MAX_SECONDS, 999_999_999, datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
        (0, 0, datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_the_ends_of_the_range_are_times(seconds: int, nanos: int, expected: datetime) -> None:
    assert timestamp_to_datetime(Timestamp(seconds=seconds, nanos=nanos), field="t") == expected
