"""The bounded JSON parser: deep input is refused before parsing, as a ValueError, and
everything else parses exactly as ``json.loads`` would."""

from __future__ import annotations

import base64
import contextlib
import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.bounded_json import (
    MAX_DEPTH,
    JsonTooDeep,
    check_jws_header_depth,
    parse_json,
)

documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab:,'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@given(documents)
def test_documents_within_the_limit_parse_as_json_loads_would(document: Any) -> None:
    text = json.dumps(document)
    if depth(document) <= 6:
        assert parse_json(text, max_depth=6) == json.loads(text)
    else:
        with pytest.raises(JsonTooDeep):
            parse_json(text, max_depth=6)


@given(st.integers(min_value=MAX_DEPTH + 1, max_value=200_000), st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_a_value_error_not_a_recursion_error(levels: int, opener: str) -> None:
    with pytest.raises(ValueError, match="nested deeper"):
        parse_json(opener * levels)


@given(st.text(max_size=300))
def test_any_text_is_json_or_a_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_json(text)


def test_brackets_inside_strings_do_not_count() -> None:
    text = json.dumps({"kid": "[" * 1000, "x": ['{\\"' * 100]})
    assert parse_json(text)["kid"] == "[" * 1000


def test_the_scan_stays_linear_on_unterminated_strings() -> None:
    text = '"' + '\\"' * 200_000
    start = time.monotonic()
    with pytest.raises(ValueError, match="Unterminated string"):
        parse_json(text)
    assert time.monotonic() - start < 1


def test_a_jws_header_is_bounded_before_a_jose_library_parses_it() -> None:
    def segment(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    claims = segment(b"{}")
    check_jws_header_depth(segment(b'{"alg":"EdDSA"}') + f".{claims}.sig")
    with pytest.raises(JsonTooDeep):
        check_jws_header_depth(segment(b"[" * 5000) + f".{claims}.sig")
    with pytest.raises(UnicodeError):
        check_jws_header_depth("é.b.c")
