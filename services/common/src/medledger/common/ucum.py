"""UCUM unit codes (case-sensitive, "c/s"): parsing and the conversions UCUM allows.

A code such as ``mg/dL``, ``kg/m2``, ``kg.m-2``, ``mm[Hg]``, ``10*9/L`` or ``/min`` is parsed
by the UCUM grammar (``.`` multiplies, ``/`` divides left to right, integer exponents, metric
prefixes, ``{annotations}``, parentheses, integer factors) into a magnitude and a dimension.
Two codes convert when their dimensions agree; the factor is exact (a
:class:`~fractions.Fraction`: UCUM's prefixes and definitions are decimal), so ``g/L`` to
``mg/dL`` is exactly 100. Mass and amount of substance never convert by UCUM alone: that
needs the analyte's molar mass, which the caller passes (UCUM makes ``mol`` a pure number; here
it is a dimension of its own, which only refuses conversions, never allows a wrong one).

Shared by the inference service (feature units) and the record service (the units of
ingested lab results). The atom table holds the units clinical data uses for the quantities
the models read and for common laboratory results (SI base and derived units, litre, mole,
equivalents, osmoles, enzyme units, pressure including ``mm[Hg]``, time, percent, parts per
thousand/million/billion, ``10*n``, avoirdupois pound and ounce, inch and foot, international
and arbitrary units, per high/low power field). A code using any other atom is not
recognised: it converts to nothing but its own spelling. UCUM counts an annotation as 1, so
that ``{score}``, ``{ratio}`` and ``1`` would all convert to each other: here an annotation is
a dimension of its own, and ``mL{rbc}`` converts to ``L{rbc}`` but not to ``L`` (an
annotation says what is counted, and two counts of different things are not one quantity).
Non-ratio units (``Cel``, ``[degF]``, ``[pH]``) never convert, not even scaled, except to
exactly their own spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType
from typing import Final

MAX_CODE_LENGTH: Final = 64
"""Longer codes are refused unparsed: clinical unit codes are a few characters."""
MAX_EXPONENT: Final = 24
"""Bound on an exponent's magnitude, so that a hostile code cannot make huge numbers."""

Dimension = tuple[tuple[str, int], ...]
"""Base unit symbol and its exponent, sorted by symbol, no zero exponents."""


class UcumSyntaxError(ValueError):
    """The text is not a UCUM code this module understands."""


@dataclass(frozen=True)
class UcumUnit:
    """A parsed code: ``factor`` base units (m, s, g, rad, K, C, cd, mol, or an arbitrary
    unit), raised to ``dimension``. ``special`` marks a non-ratio unit (an offset or a
    logarithm), which no factor converts."""

    factor: Fraction
    dimension: Dimension
    special: bool = False

    def __mul__(self, other: UcumUnit) -> UcumUnit:
        return UcumUnit(
            self.factor * other.factor,
            _combine(self.dimension, other.dimension, 1),
            self.special or other.special,
        )

    def __truediv__(self, other: UcumUnit) -> UcumUnit:
        return UcumUnit(
            self.factor / other.factor,
            _combine(self.dimension, other.dimension, -1),
            self.special or other.special,
        )

    def __pow__(self, exponent: int) -> UcumUnit:
        return UcumUnit(
            self.factor**exponent,
            tuple((base, power * exponent) for base, power in self.dimension if exponent),
            self.special,
        )


def _combine(left: Dimension, right: Dimension, sign: int) -> Dimension:
    powers = dict(left)
    for base, power in right:
        powers[base] = powers.get(base, 0) + sign * power
    return tuple(sorted((base, power) for base, power in powers.items() if power))


def _unit(factor: Fraction | int | str, *dimension: tuple[str, int]) -> UcumUnit:
    return UcumUnit(Fraction(factor), _combine((), tuple(dimension), 1))


UNITY: Final = UcumUnit(Fraction(1), ())
_M = ("m", 1)
_S = ("s", 1)
_G = ("g", 1)
_MOL = ("mol", 1)
_PER_S2 = ("s", -2)
_PASCAL = _unit(1000, _G, ("m", -1), _PER_S2)  # N/m2, with the gram as base of mass


@dataclass(frozen=True)
class _Atom:
    unit: UcumUnit
    metric: bool  # takes a prefix


def _atoms() -> dict[str, _Atom]:
    year = Fraction(36525, 100) * 86400
    pound = Fraction("453.59237")
    inch = Fraction("0.0254")
    table: dict[str, tuple[UcumUnit, bool]] = {
        # SI base units (the gram for mass, as UCUM does) and the mole.
        "m": (_unit(1, _M), True),
        "s": (_unit(1, _S), True),
        "g": (_unit(1, _G), True),
        "rad": (_unit(1, ("rad", 1)), True),
        "K": (_unit(1, ("K", 1)), True),
        "C": (_unit(1, ("C", 1)), True),
        "cd": (_unit(1, ("cd", 1)), True),
        "mol": (_unit(1, _MOL), True),
        # Derived units.
        "L": (_unit("0.001", ("m", 3)), True),
        "l": (_unit("0.001", ("m", 3)), True),
        "Hz": (_unit(1, ("s", -1)), True),
        "N": (_unit(1000, _G, _M, _PER_S2), True),
        "Pa": (_PASCAL, True),
        "J": (_unit(1000, _G, ("m", 2), _PER_S2), True),
        "W": (_unit(1000, _G, ("m", 2), ("s", -3)), True),
        "bar": (_PASCAL * _unit(100_000), True),
        "m[Hg]": (_PASCAL * _unit(133_322), True),
        "m[H2O]": (_PASCAL * _unit("9806.65"), True),
        "eq": (_unit(1, _MOL), True),
        "kat": (_unit(1, _MOL, ("s", -1)), True),
        "U": (_unit(Fraction(1, 60_000_000), _MOL, ("s", -1)), True),  # umol/min
        "[IU]": (_unit(1, ("[IU]", 1)), True),
        "[iU]": (_unit(1, ("[IU]", 1)), True),
        # Counted things UCUM makes pure numbers or moles, each a dimension of its own here
        # (see above: two counts of different things are not one quantity).
        "osm": (_unit(1, ("osm", 1)), True),
        "[arb'U]": (_unit(1, ("[arb'U]", 1)), False),
        "[HPF]": (_unit(1, ("[HPF]", 1)), False),
        "[LPF]": (_unit(1, ("[LPF]", 1)), False),
        # Time beyond the second (the Julian year and month, as UCUM's "a" and "mo").
        "min": (_unit(60, _S), False),
        "h": (_unit(3600, _S), False),
        "d": (_unit(86400, _S), False),
        "wk": (_unit(7 * 86400, _S), False),
        "mo": (_unit(year / 12, _S), False),
        "a": (_unit(year, _S), False),
        # Pure numbers.
        "%": (_unit(Fraction(1, 100)), False),
        "[ppth]": (_unit(Fraction(1, 1000)), False),
        "[ppm]": (_unit(Fraction(1, 1_000_000)), False),
        "[ppb]": (_unit(Fraction(1, 1_000_000_000)), False),
        "10*": (_unit(10), False),
        "10^": (_unit(10), False),
        # Customary units.
        "g%": (_unit(10_000, _G, ("m", -3)), False),  # g/dL
        "[lb_av]": (_unit(pound, _G), False),
        "[oz_av]": (_unit(pound / 16, _G), False),
        "[in_i]": (_unit(inch, _M), False),
        "[ft_i]": (_unit(inch * 12, _M), False),
    }
    atoms = {symbol: _Atom(unit, metric) for symbol, (unit, metric) in table.items()}
    for symbol, dimension in (("Cel", "K"), ("[degF]", "K"), ("[pH]", "mol")):
        atoms[symbol] = _Atom(UcumUnit(Fraction(1), ((dimension, 1),), special=True), False)
    return atoms


ATOMS: Final[Mapping[str, _Atom]] = MappingProxyType(_atoms())
_PREFIX_POWERS: Final = {
    "Y": 24, "Z": 21, "E": 18, "P": 15, "T": 12, "G": 9, "M": 6, "k": 3, "h": 2, "da": 1,
    "d": -1, "c": -2, "m": -3, "u": -6, "n": -9, "p": -12, "f": -15, "a": -18, "z": -21, "y": -24,
}  # fmt: skip
PREFIXES: Final[Mapping[str, Fraction]] = MappingProxyType(
    {symbol: Fraction(10) ** power for symbol, power in _PREFIX_POWERS.items()}
)
_PREFIXES_LONGEST_FIRST: Final = sorted(PREFIXES, key=len, reverse=True)
_DELIMITERS: Final = frozenset("./(){}")


def parse(code: str) -> UcumUnit:
    """The unit ``code`` denotes, or :class:`UcumSyntaxError`."""
    if not code or len(code) > MAX_CODE_LENGTH or not code.isascii() or not code.isprintable():
        raise UcumSyntaxError("not a UCUM code")
    if any(c.isspace() for c in code):
        raise UcumSyntaxError("a UCUM code has no spaces")
    return _Parser(code).main_term()


def is_ucum(code: str) -> bool:
    """Whether ``code`` parses as a UCUM code (of the atoms this module knows)."""
    try:
        parse(code)
    except UcumSyntaxError:
        return False
    return True


def conversion_factor(
    source: str, target: str, *, molar_mass: Fraction | None = None
) -> Fraction | None:
    """What a value in ``source`` is multiplied by to be in ``target``, or None when they do
    not convert. ``molar_mass`` (grams per mole of the analyte measured) also lets an amount
    of substance convert to a mass and back (``mmol/L`` to ``mg/dL``)."""
    if source == target:
        return Fraction(1)
    try:
        source_unit, target_unit = parse(source), parse(target)
    except UcumSyntaxError:
        return None
    if source_unit.special or target_unit.special:
        return None
    if source_unit.dimension == target_unit.dimension:
        return source_unit.factor / target_unit.factor
    return _molar_factor(source_unit, target_unit, molar_mass)


def _molar_factor(
    source: UcumUnit, target: UcumUnit, molar_mass: Fraction | None
) -> Fraction | None:
    """Moles of the analyte to grams (or back) through its molar mass, other units equal."""
    if molar_mass is None or molar_mass <= 0:
        return None
    difference = _combine(source.dimension, target.dimension, -1)
    if difference == (("g", -1), ("mol", 1)):  # source counts moles where target weighs grams
        return source.factor * molar_mass / target.factor
    if difference == (("g", 1), ("mol", -1)):
        return source.factor / (molar_mass * target.factor)
    return None


class _Parser:
    """Recursive descent over UCUM's grammar: mainTerm = "/" term | term; term = component
    (("." | "/") component)*; component = "(" term ")" | annotation | factor |
    simple-unit exponent? annotation?."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._at = 0

    def main_term(self) -> UcumUnit:
        if self._peek() == "/":
            self._at += 1
            unit = UNITY / self._term()
        else:
            unit = self._term()
        if self._at != len(self._text):
            raise UcumSyntaxError("unexpected text in a UCUM code")
        return unit

    def _peek(self) -> str:
        return self._text[self._at] if self._at < len(self._text) else ""

    def _term(self) -> UcumUnit:
        unit = self._component()
        while (operator := self._peek()) in (".", "/"):
            self._at += 1
            following = self._component()
            unit = unit * following if operator == "." else unit / following
        return unit

    def _component(self) -> UcumUnit:
        if self._peek() == "(":
            self._at += 1
            unit = self._term()
            if self._peek() != ")":
                raise UcumSyntaxError("unbalanced parenthesis in a UCUM code")
            self._at += 1
            return unit
        if self._peek() == "{":
            return self._annotation()
        token = self._symbol_token()
        if token.isdigit():
            if int(token) == 0:
                raise UcumSyntaxError("a UCUM factor is a positive integer")
            return _unit(int(token))
        unit = _simple_unit_with_exponent(token)
        if self._peek() == "{":
            unit = unit * self._annotation()
        return unit

    def _annotation(self) -> UcumUnit:
        end = self._text.find("}", self._at)
        if end < 0 or "{" in self._text[self._at + 1 : end]:
            raise UcumSyntaxError("unbalanced annotation in a UCUM code")
        annotation = self._text[self._at : end + 1]
        self._at = end + 1
        return _unit(1, (annotation, 1))

    def _symbol_token(self) -> str:
        start = self._at
        depth = 0
        while self._at < len(self._text):
            char = self._text[self._at]
            if char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
                if depth < 0:
                    raise UcumSyntaxError("unbalanced bracket in a UCUM code")
            elif depth == 0 and char in _DELIMITERS:
                break
            self._at += 1
        if depth:
            raise UcumSyntaxError("unbalanced bracket in a UCUM code")
        if self._at == start:
            raise UcumSyntaxError("a UCUM component is missing")
        return self._text[start : self._at]


def _simple_unit_with_exponent(token: str) -> UcumUnit:
    symbol, exponent = _split_exponent(token)
    unit = _simple_unit(symbol)
    if exponent is None:
        return unit
    if abs(exponent) > MAX_EXPONENT:
        raise UcumSyntaxError("a UCUM exponent is too large")
    return unit**exponent


def _split_exponent(token: str) -> tuple[str, int | None]:
    end = len(token)
    while end > 0 and token[end - 1].isdigit():
        end -= 1
    if end == len(token):
        return token, None
    if end > 0 and token[end - 1] in "+-":
        end -= 1
    if end == 0:
        raise UcumSyntaxError("a UCUM exponent needs a unit")
    return token[:end], int(token[end:])


def _simple_unit(symbol: str) -> UcumUnit:
    atom = ATOMS.get(symbol)
    if atom is not None:
        return atom.unit
    for prefix in _PREFIXES_LONGEST_FIRST:
        if symbol.startswith(prefix):
            prefixed = ATOMS.get(symbol[len(prefix) :])
            if prefixed is not None and prefixed.metric:
                return _unit(PREFIXES[prefix]) * prefixed.unit
    raise UcumSyntaxError("not a UCUM unit this service knows")
