"""Canonical JSON (RFC 8785 vectors) and the content commitment (a known answer)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.verify.commitment import (
    COMMITMENT_DOMAIN,
    NotCanonicalizable,
    OpeningMismatch,
    canonical_json,
    check_opening,
    commit,
    commit_json,
)

# RFC 8785 §3.2.2: the sample input and its canonical form.
RFC_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_OUTPUT = (
    '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)

# RFC 8785 §3.2.3: members sorted by their UTF-16 code units.
RFC_SORTING_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
RFC_SORTED_VALUES = [
    "Carriage Return",
    "One",
    "Control",
    "Latin Small Letter O With Diaeresis",
    "Euro Sign",
    "Emoji: Grinning Face",
    "Hebrew Letter Dalet With Dagesh",
]

# RFC 8785 Appendix B: IEEE 754 doubles (hex) and how they serialise.
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


def test_rfc8785_sample() -> None:
    assert canonical_json(json.loads(RFC_INPUT)) == RFC_OUTPUT.encode("utf-8")


def test_rfc8785_member_order() -> None:
    canonical = canonical_json(json.loads(RFC_SORTING_INPUT))
    assert list(json.loads(canonical).values()) == RFC_SORTED_VALUES


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_rfc8785_numbers(bits: str, expected: str) -> None:
    (number,) = struct.unpack(">d", bytes.fromhex(bits))
    assert canonical_json(number) == expected.encode()


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), 10**400, -(10**400), "\ud800", {1: 2}]
)
def test_values_without_a_canonical_form_are_refused(value: object) -> None:
    with pytest.raises(NotCanonicalizable):
        canonical_json(value)


def test_integers_beyond_2_to_the_53_are_the_nearest_doubles() -> None:
    assert canonical_json(2**53) == canonical_json(float(2**53)) == b"9007199254740992"
    assert canonical_json(2**53 + 1) == b"9007199254740992"
    assert canonical_json([10**16, -(2**60)]) == b"[10000000000000000,-1152921504606847000]"


def test_canonical_json_ignores_formatting_and_member_order() -> None:
    a = json.loads('{"b": [1.0, 2.50], "a": {"y": true, "x": null}}')
    b = json.loads('{ "a" : { "x" : null , "y" : true } , "b" : [ 1 , 2.5 ] }')
    assert canonical_json(a) == canonical_json(b) == b'{"a":{"x":null,"y":true},"b":[1,2.5]}'


SALT = bytes(range(32))
CANONICAL = b'{"resourceType":"Patient"}'
# printf 'medledger.record.v1\0' + bytes 00..1f + the canonical text | sha256sum
KNOWN_COMMITMENT = bytes.fromhex("d57b275d8c91eb5ffb83fc1a58303a4dd34aaf02246d79ddf5534ada40ca7a1d")


def test_commitment_known_answer() -> None:
    assert COMMITMENT_DOMAIN == b"medledger.record.v1\x00"
    assert commit(SALT, CANONICAL) == KNOWN_COMMITMENT
    assert commit_json(SALT, {"resourceType": "Patient"}) == KNOWN_COMMITMENT
    check_opening(KNOWN_COMMITMENT, SALT, CANONICAL)


def test_only_the_right_salt_and_content_open_a_commitment() -> None:
    with pytest.raises(OpeningMismatch):
        check_opening(KNOWN_COMMITMENT, bytes(32), CANONICAL)
    with pytest.raises(OpeningMismatch):
        check_opening(KNOWN_COMMITMENT, SALT, b'{"resourceType":"Patient" }')
    with pytest.raises(OpeningMismatch):
        check_opening(KNOWN_COMMITMENT[:31], SALT, CANONICAL)
    with pytest.raises(OpeningMismatch):
        check_opening(KNOWN_COMMITMENT, SALT[:31], CANONICAL)


@pytest.mark.parametrize("size", [0, 16, 31, 33])
def test_a_salt_is_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        commit(bytes(size), CANONICAL)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_the_canonical_form_survives_a_json_round_trip(value: object) -> None:
    canonical = canonical_json(value)
    assert canonical_json(json.loads(canonical)) == canonical
    assert canonical_json(json.loads(json.dumps(value, indent=2))) == canonical
