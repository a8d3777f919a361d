"""Date search over exact-match tokens: ``eq`` and the ranges ``ge``, ``gt``, ``le``, ``lt``.

A blind index matches tokens exactly, so every comparison a query may ask is decided by
tokens written with the resource. Dates are calendar intervals (FHIR: ``2024`` is the whole
year, ``2024-03`` the month, ``2024-03-05`` or a dateTime that day, a Period from its start's
first day to its end's last day, open ends reaching the first or last day FHIR can write).
Calendar units nest: millennium (``2xxx``), century (``20xx``), decade (``202x``), year, month,
day; two units either nest or do not meet.

A resource's interval ``T`` is written as three kinds of token:

- plain units (``2024``, ``2024-03``, ``2024-03-05``): the year, month and day that contain
  ALL of ``T`` (the smallest unit holding it, and its year and month above). FHIR's ``eq X``
  means ``X`` contains ``T``: it is the one token ``X``. For a single date these are the
  tokens the index always wrote.
- ``~U`` for every unit ``U`` containing a unit of ``T``'s cover (the fewest whole units that
  tile ``T`` exactly), and ``=U`` for the cover's units themselves.

A range query is an interval ``Q`` too (``ge X``: from X's first day on; ``gt X``: after X's
last day; ``le X``: up to X's last day; ``lt X``: before X's first day), and FHIR's ranges ask
whether ``Q`` and ``T`` overlap. Two intervals overlap exactly when a unit of one's cover and
a unit of the other's nest (tiles of the same calendar either nest or are apart), so the
query is the union of ``~q`` for each unit ``q`` of ``Q``'s cover (a unit of ``T`` inside
``q``) and ``=a`` for each unit ``a`` strictly above one (a unit of ``T`` holding ``q``). A
range finds every overlapping resource and nothing else; an ``eq`` finds exactly the values
it contains.

Dates are taken as written: a dateTime's local date, before any offset.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

FIRST_DAY: Final = datetime.date(1, 1, 1)
LAST_DAY: Final = datetime.date(9999, 12, 31)
RANGE_PREFIXES: Final = frozenset({"ge", "gt", "le", "lt"})
_ONE_DAY: Final = datetime.timedelta(days=1)
_DATE: Final = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")

# unit kinds, coarsest first
MILLENNIUM, CENTURY, DECADE, YEAR, MONTH, DAY = range(6)
_SPAN: Final = {MILLENNIUM: 1000, CENTURY: 100, DECADE: 10}  # years of the coarse kinds


@dataclass(frozen=True, order=True)
class Unit:
    """A calendar unit: its kind and its first day's year, month and day (a millennium,
    century or decade by its first year: 2000 for ``2xxx`` and ``20xx``, 2020 for ``202x``;
    the first ones start at year 1, the first day FHIR can write)."""

    kind: int
    year: int
    month: int = 1
    day: int = 1

    @property
    def name(self) -> str:
        if self.kind == MILLENNIUM:
            return f"{self.year // 1000:01d}xxx"
        if self.kind == CENTURY:
            return f"{self.year // 100:02d}xx"
        if self.kind == DECADE:
            return f"{self.year // 10:03d}x"
        if self.kind == YEAR:
            return f"{self.year:04d}"
        if self.kind == MONTH:
            return f"{self.year:04d}-{self.month:02d}"
        return f"{self.year:04d}-{self.month:02d}-{self.day:02d}"

    @property
    def first(self) -> datetime.date:
        return max(FIRST_DAY, datetime.date(max(self.year, 1), self.month, self.day))

    @property
    def last(self) -> datetime.date:
        if self.kind in _SPAN:
            return datetime.date(self.year + _SPAN[self.kind] - 1, 12, 31)
        if self.kind == YEAR:
            return datetime.date(self.year, 12, 31)
        if self.kind == MONTH:
            if self.month == 12:
                return datetime.date(self.year, 12, 31)
            return datetime.date(self.year, self.month + 1, 1) - _ONE_DAY
        return self.first

    def above(self) -> Iterator[Unit]:
        """The units strictly containing this one, finest first."""
        if self.kind > MONTH:
            yield Unit(MONTH, self.year, self.month)
        if self.kind > YEAR:
            yield Unit(YEAR, self.year)
        for kind in (DECADE, CENTURY, MILLENNIUM):
            if self.kind > kind:
                yield Unit(kind, self.year - self.year % _SPAN[kind])


def _starting_at(day: datetime.date) -> Iterator[Unit]:
    """The units whose first day is ``day``, coarsest first."""
    if day.month == 1 and day.day == 1:
        for kind in (MILLENNIUM, CENTURY, DECADE):
            if day.year % _SPAN[kind] == 0 or day == FIRST_DAY:
                yield Unit(kind, day.year - day.year % _SPAN[kind])
        yield Unit(YEAR, day.year)
    if day.day == 1:
        yield Unit(MONTH, day.year, day.month)
    yield Unit(DAY, day.year, day.month, day.day)


def cover(first: datetime.date, last: datetime.date) -> list[Unit]:
    """The fewest whole units tiling ``first``..``last`` (greedy: the coarsest unit that
    starts at each point and ends inside), in order."""
    units: list[Unit] = []
    day = first
    while day <= last:
        unit = next(u for u in _starting_at(day) if u.last <= last)
        units.append(unit)
        if unit.last == LAST_DAY:
            break
        day = unit.last + _ONE_DAY
    return units


def parse_date(text: str) -> Unit | None:
    """The unit a FHIR date, dateTime or instant names (its local date, as written); None
    when it is not one."""
    match = _DATE.match(text)
    if match is None:
        return None
    year, month, day = match.groups()
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    if int(year) < 1:
        return None
    if day:
        return Unit(DAY, int(year), int(month), int(day))
    if month:
        return Unit(MONTH, int(year), int(month))
    return Unit(YEAR, int(year))


def _smallest_holding(first: datetime.date, last: datetime.date) -> Unit | None:
    """The finest of year, month, day containing the whole interval (None: wider than a year)."""
    if first.year != last.year:
        return None
    if first.month != last.month:
        return Unit(YEAR, first.year)
    if first != last:
        return Unit(MONTH, first.year, first.month)
    return Unit(DAY, first.year, first.month, first.day)


def interval_tokens(first: datetime.date, last: datetime.date) -> set[str]:
    """The tokens of a resource's date interval (see the module's text)."""
    tokens: set[str] = set()
    holding = _smallest_holding(first, last)
    if holding is not None:
        tokens.add(holding.name)
        tokens.update(u.name for u in holding.above() if u.kind >= YEAR)
    for unit in cover(first, last):
        tokens.add("=" + unit.name)
        tokens.add("~" + unit.name)
        tokens.update("~" + u.name for u in unit.above())
    return tokens


def range_interval(prefix: str, unit: Unit) -> tuple[datetime.date, datetime.date] | None:
    """The days a ``ge``/``gt``/``le``/``lt`` query on ``unit`` asks about; None when none
    (before the first day FHIR can write, or after the last)."""
    if prefix == "ge":
        return unit.first, LAST_DAY
    if prefix == "gt":
        return (unit.last + _ONE_DAY, LAST_DAY) if unit.last < LAST_DAY else None
    if prefix == "le":
        return FIRST_DAY, unit.last
    return (FIRST_DAY, unit.first - _ONE_DAY) if unit.first > FIRST_DAY else None


def range_tokens(first: datetime.date, last: datetime.date) -> tuple[str, ...]:
    """The tokens any one of which marks a resource whose interval overlaps the query's."""
    wanted: set[str] = set()
    for unit in cover(first, last):
        wanted.add("~" + unit.name)
        wanted.update("=" + u.name for u in unit.above())
    return tuple(sorted(wanted))
