"""Date search by tokens: ``eq`` finds exactly the values the searched day, month or year
contains, and each range (``ge``, ``gt``, ``le``, ``lt``) exactly those that overlap the days
asked about, checked against interval arithmetic on random dates and Periods."""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medledger.record.domain.date_search import (
    FIRST_DAY,
    LAST_DAY,
    cover,
    parse_date,
    range_interval,
)
from medledger.record.domain.search_params import _date_tokens, any_of_tokens, parse_search
from medledger.testkit.fhir_samples import sample

from .test_search_params import finds

# Years near the boundaries of every unit, and anywhere.
years = st.one_of(
    st.integers(1, 9999),
    st.sampled_from([1, 9, 10, 99, 100, 999, 1000, 1999, 2000, 2009, 2010, 2019, 2020, 9999]),
    st.integers(1995, 2030),
)


@st.composite
def fhir_dates(draw: Any) -> str:
    """A FHIR date at year, month or day precision, or a dateTime."""
    year = draw(years)
    precision = draw(st.sampled_from(["year", "month", "day", "dateTime"]))
    if precision == "year":
        return f"{year:04d}"
    month = draw(st.integers(1, 12))
    if precision == "month":
        return f"{year:04d}-{month:02d}"
    day = draw(st.integers(1, 31 if month != 2 else 28))
    if month in (4, 6, 9, 11):
        day = min(day, 30)
    text = f"{year:04d}-{month:02d}-{day:02d}"
    return text + "T23:30:00-05:00" if precision == "dateTime" else text


def days(value: Any) -> tuple[datetime.date, datetime.date]:
    """The interval a stored date or Period covers, by plain date arithmetic."""
    if isinstance(value, dict):
        start = parse_date(value["start"]) if "start" in value else None
        end = parse_date(value["end"]) if "end" in value else None
        return (
            start.first if start else FIRST_DAY,
            end.last if end else LAST_DAY,
        )
    unit = parse_date(value)
    assert unit is not None
    return unit.first, unit.last


stored_values = st.one_of(
    fhir_dates(),
    st.builds(lambda a, b: {"start": min(a, b), "end": max(a, b)}, fhir_dates(), fhir_dates()),
    st.builds(lambda a: {"start": a}, fhir_dates()),
    st.builds(lambda b: {"end": b}, fhir_dates()),
)
queries = st.tuples(
    st.sampled_from(["", "eq", "ge", "gt", "le", "lt"]),
    fhir_dates().map(lambda d: d[:10]),
)


def expected(value: Any, prefix: str, date: str) -> bool:
    first, last = days(value)
    if first > last:
        return False  # a Period running backwards (not drawn: min/max above)
    unit = parse_date(date)
    assert unit is not None
    if prefix in {"", "eq"}:
        return unit.first <= first and last <= unit.last
    asked = range_interval(prefix, unit)
    return asked is not None and asked[0] <= last and first <= asked[1]


def matched(value: Any, prefix: str, date: str) -> bool:
    (term,) = parse_search("Observation", {"date": prefix + date})
    return bool(set(_date_tokens(value)).intersection(any_of_tokens(term)))


@settings(max_examples=600, deadline=None)
@given(stored_values, queries)
@example({"start": "2024-03-05", "end": "2024-03-07"}, ("", "2024-03-06"))
@example({"start": "2020"}, ("ge", "2999-12-31"))
@example("2019-06", ("ge", "2019-06-15"))
@example("9999-12-31", ("gt", "9999-12-30"))
@example("0001", ("lt", "0001-01-02"))
def test_a_date_query_finds_exactly_what_fhir_says(value: Any, query: tuple[str, str]) -> None:
    prefix, date = query
    assert matched(value, prefix, date) is expected(value, prefix, date)


@settings(max_examples=300, deadline=None)
@given(fhir_dates(), fhir_dates())
def test_a_cover_tiles_its_interval_exactly(a: str, b: str) -> None:
    low, high = sorted((days(a)[0], days(b)[1]))
    units = cover(low, high)
    assert units[0].first == low
    assert units[-1].last == high
    for before, after in itertools.pairwise(units):
        assert before.last + datetime.timedelta(days=1) == after.first


@pytest.mark.parametrize(
    ("resource_type", "query", "found"),
    [
        # effectiveDateTime 2024-03-05T09:30:00Z
        ("Observation", {"date": "ge2024-03-05"}, True),
        ("Observation", {"date": "gt2024-03-05"}, False),
        ("Observation", {"date": "gt2024-03-04"}, True),
        ("Observation", {"date": "le2024-03"}, True),
        ("Observation", {"date": "lt2024-03"}, False),
        ("Observation", {"date": "ge2025"}, False),
        ("Observation", {"date": "le2023-12-31"}, False),
        ("Observation", {"date": "ge2024-01-01", "code": "http://loinc.org|2345-7"}, True),
        # onsetDateTime to the month: 2019-06
        ("Condition", {"date": "ge2019-06-15"}, True),
        ("Condition", {"date": "le2019-05-31"}, False),
        # born 1815-12-10
        ("Patient", {"birthdate": "lt1900"}, True),
        ("Patient", {"birthdate": "ge1815-12-11"}, False),
    ],
)
def test_ranges_on_the_samples(resource_type: str, query: dict[str, str], found: bool) -> None:
    assert finds(sample(resource_type), **query) is found


def test_a_range_past_the_last_day_matches_nothing() -> None:
    (term,) = parse_search("Observation", {"date": "gt9999-12-31"})
    assert any_of_tokens(term) == ()
    (term,) = parse_search("Observation", {"date": "lt0001-01-01"})
    assert any_of_tokens(term) == ()


def test_open_ranges_and_ongoing_periods_stay_a_few_hundred_tokens() -> None:
    (ge,) = parse_search("Observation", {"date": "ge2024-03-05"})
    assert len(any_of_tokens(ge)) < 80
    (le,) = parse_search("Observation", {"date": "le1815-12-10"})
    assert len(any_of_tokens(le)) < 80
    assert len(set(_date_tokens({"start": "2020-03-05"}))) < 300
