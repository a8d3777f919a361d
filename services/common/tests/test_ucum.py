"""UCUM codes (medledger.common.ucum): parsing and exact conversions."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.ucum import (
    ATOMS,
    PREFIXES,
    UcumSyntaxError,
    conversion_factor,
    is_ucum,
    parse,
)

GLUCOSE = Fraction("180.16")


@pytest.mark.parametrize(
    ("source", "target", "factor"),
    [
        ("g/L", "mg/dL", Fraction(100)),
        ("mg/dL", "g/L", Fraction(1, 100)),
        ("mg/dl", "mg/dL", Fraction(1)),
        ("kg/m2", "kg.m-2", Fraction(1)),
        ("kg/m2", "kg/(m.m)", Fraction(1)),
        ("kg/m2", "g/cm2", Fraction(1, 10)),
        ("mmol/L", "umol/mL", Fraction(1)),
        ("mmol/L", "mol/m3", Fraction(1)),
        ("mm[Hg]", "kPa", Fraction("0.133322")),
        ("mm[Hg]", "m[Hg]", Fraction(1, 1000)),
        ("10*9/L", "/nL", Fraction(1)),
        ("10*3/uL", "10*9/L", Fraction(1)),
        ("/min", "Hz", Fraction(1, 60)),
        ("h", "min", Fraction(60)),
        ("a", "mo", Fraction(12)),
        ("wk", "d", Fraction(7)),
        ("%", "1", Fraction(1, 100)),
        ("%", "[ppth]", Fraction(10)),
        ("{score}", "{score}", Fraction(1)),
        ("mL{rbc}", "L{rbc}", Fraction(1, 1000)),
        ("10*3{cells}/uL", "10*9{cells}/L", Fraction(1)),
        ("g%", "g/dL", Fraction(1)),
        ("[lb_av]", "kg", Fraction("0.45359237")),
        ("[in_i]", "cm", Fraction("2.54")),
        ("[ft_i]", "[in_i]", Fraction(12)),
        ("meq/L", "mmol/L", Fraction(1)),
        ("U/L", "ukat/L", Fraction(1, 60)),
        ("[IU]/L", "m[IU]/mL", Fraction(1)),
        ("Cel", "Cel", Fraction(1)),
        ("dam", "m", Fraction(10)),
        ("cd", "mcd", Fraction(1000)),
    ],
)
def test_conversions_that_ucum_allows_are_exact(source: str, target: str, factor: Fraction) -> None:
    assert conversion_factor(source, target) == factor


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("mmol/L", "mg/dL"),  # needs the analyte's molar mass
        ("mg/dL", "mmol/L"),
        ("mg", "mg/dL"),
        ("kg/m2", "kg"),
        ("mm[Hg]", "mm"),
        ("Cel", "K"),  # offset units never convert
        ("Cel", "mCel"),
        ("[degF]", "Cel"),
        ("[IU]/L", "mg/L"),
        ("mmHg", "mm[Hg]"),  # "mmHg" is not UCUM
        ("mEq/L", "mmol/L"),  # nor "mEq" (case-sensitive UCUM: "meq")
        ("mg/dL", "mg/dL/"),
        # An annotation says what is counted: UCUM counts it as 1, we keep it apart.
        ("{score}", "1"),
        ("{image-length}", "{image-area}"),
        ("mL{rbc}", "L"),
        ("10*3{cells}/uL", "10*9/L"),
        ("mosm/kg", "mmol/kg"),  # osmoles count particles, not the analyte
        ("[arb'U]/mL", "/mL"),
    ],
)
def test_conversions_ucum_does_not_allow_are_refused(source: str, target: str) -> None:
    assert conversion_factor(source, target) is None


def test_molar_mass_converts_amount_and_mass_both_ways() -> None:
    to_mass = conversion_factor("mmol/L", "mg/dL", molar_mass=GLUCOSE)
    assert to_mass == Fraction("18.016")
    assert conversion_factor("mg/dL", "mmol/L", molar_mass=GLUCOSE) == 1 / Fraction("18.016")
    assert conversion_factor("umol/L", "mg/L", molar_mass=GLUCOSE) == Fraction("0.18016")
    assert conversion_factor("mmol", "g", molar_mass=GLUCOSE) == Fraction("0.18016")
    # Only mass against amount: a molar mass makes nothing else convert.
    assert conversion_factor("mmol/L", "mg", molar_mass=GLUCOSE) is None
    assert conversion_factor("mmol/L", "mg/dL", molar_mass=Fraction(0)) is None


@pytest.mark.parametrize(
    "code",
    [
        *("mg/dL", "kg/m2", "kg.m-2", "mm[Hg]", "10*9/L", "/min", "{score}", "1", "%", "m2"),
        "s-1",
        # Laboratory results.
        *("mosm/kg", "[arb'U]/mL", "/[HPF]", "[ppb]", "m[IU]/mL", "fL", "10*3/uL", "U/L"),
        "mL/min/{1.73_m2}",
    ],
)
def test_ucum_codes_parse(code: str) -> None:
    assert is_ucum(code)


@pytest.mark.parametrize(
    "code",
    [
        "",
        "mmHg",
        "mg/",
        "mg//dL",
        "(mg",
        "mg)",
        "m[Hg",
        "{unclosed",
        "mg {x}",
        " mg",
        "m^2",
        "kilogram",
        "µg",
        "m" + "9" * 3,
        "10*99",
        "g" * 65,
        "-2",
        "0",
        "/0",
        "mg/00",
    ],
)
def test_what_is_not_ucum_is_refused(code: str) -> None:
    assert not is_ucum(code)
    with pytest.raises(UcumSyntaxError):
        parse(code)


def test_prefixed_metric_atoms_only() -> None:
    assert parse("kg").factor == 1000
    assert parse("ug").factor == Fraction(1, 10**6)
    assert parse("min").factor == 60  # an atom of its own, not milli-inch
    assert not is_ucum("kmin")  # minutes take no prefix
    assert not is_ucum("k%")
    assert set(PREFIXES) >= {"k", "m", "u", "n", "d", "c", "da"}
    assert {"g", "L", "mol", "m[Hg]"} <= set(ATOMS)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_a_syntax_error(text: str) -> None:
    try:
        unit = parse(text)
    except UcumSyntaxError:
        return
    assert unit.factor > 0


@given(
    st.sampled_from(
        ["mg/dL", "g/L", "kg/m3", "ug/mL", "mg/(100.mL)", "g%", "ng/uL", "[lb_av]/[ft_i]3"]
    ),
    st.sampled_from(
        ["mg/dL", "g/L", "kg/m3", "ug/mL", "mg/(100.mL)", "g%", "ng/uL", "[lb_av]/[ft_i]3"]
    ),
)
def test_conversions_between_spellings_of_one_dimension_invert(source: str, target: str) -> None:
    forward, back = conversion_factor(source, target), conversion_factor(target, source)
    assert forward is not None
    assert back is not None
    assert forward * back == 1
