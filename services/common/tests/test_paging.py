"""Page tokens (AIP-158): a token round-trips to its cursor, and is refused, naming
``page_token``, by any other listing, any other filters, or once edited; one page-size rule."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medledger.common.errors import InvalidArgument
from medledger.common.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    Listing,
    page,
    page_size,
)

CONSENTS = Listing("identity.ListConsents", ("pat-1", "", ""))
texts = st.text(max_size=80)


def refused(listing: Listing, token: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        listing.cursor(token)
    assert caught.value.field_names == ["page_token"]


@given(cursor=texts, filters=st.lists(texts, max_size=4))
def test_a_token_round_trips_to_its_cursor(cursor: str, filters: list[str]) -> None:
    listing = Listing("identity.ListConsents", tuple(filters))
    token = listing.token(cursor)
    assert token.isascii()
    assert "=" not in token
    assert listing.cursor(token) == cursor


def test_no_token_is_the_first_page_and_no_cursor_no_token() -> None:
    assert CONSENTS.cursor("") is None
    assert CONSENTS.token(None) == ""


@given(cursor=texts, first=st.lists(texts, max_size=3), second=st.lists(texts, max_size=3))
def test_a_token_is_refused_with_other_filters(
    cursor: str, first: list[str], second: list[str]
) -> None:
    if first == second:
        return
    token = Listing("identity.ListConsents", tuple(first)).token(cursor)
    refused(Listing("identity.ListConsents", tuple(second)), token)


def test_a_token_is_refused_by_another_listing() -> None:
    entries = Listing("ledger.ListEntries")
    refused(Listing("ledger.ListCheckpoints"), entries.token("7"))
    # Filters are not confusable with one another by joining them differently.
    refused(Listing("l", ("a", "b")), Listing("l", ("a\x00b",)).token("x"))
    refused(Listing("l", ("ab", "")), Listing("l", ("a", "b")).token("x"))


@given(cursor=texts, position=st.integers(min_value=0), flip=st.integers(1, 255))
def test_an_edited_token_is_refused(cursor: str, position: int, flip: int) -> None:
    data = bytearray(base64.urlsafe_b64decode(CONSENTS.token(cursor) + "=="))
    data[position % len(data)] ^= flip
    edited = base64.urlsafe_b64encode(bytes(data)).decode().rstrip("=")
    refused(CONSENTS, edited)


def test_a_token_with_another_cursor_is_refused() -> None:
    """Only the tag of the cursor it carries matches: swapping the cursor is caught."""
    good = base64.urlsafe_b64decode(CONSENTS.token("c-0001") + "==")
    forged = good[:17] + b"c-9999"
    refused(CONSENTS, base64.urlsafe_b64encode(forged).decode())


@given(token=st.text(max_size=200))
def test_garbage_is_refused_never_an_error_of_another_kind(token: str) -> None:
    if not token:
        return
    refused(CONSENTS, token)


def test_garbage_examples() -> None:
    for token in ("garbage", "v1:1", "====", "A" * 5000, "é", base64.b64encode(b"\x01").decode()):
        refused(CONSENTS, token)


def test_integer_cursors() -> None:
    entries = Listing("ledger.ListEntries")
    assert entries.int_cursor(entries.token("42")) == 42
    assert entries.int_cursor("") is None
    for cursor in ("-1", "4.2", "", "²", "x"):
        with pytest.raises(InvalidArgument) as caught:
            entries.int_cursor(entries.token(cursor))
        assert caught.value.field_names == ["page_token"]


def test_one_page_size_rule() -> None:
    assert page_size(0) == DEFAULT_PAGE_SIZE
    assert page_size(7) == 7
    assert page_size(MAX_PAGE_SIZE + 1) == MAX_PAGE_SIZE
    with pytest.raises(InvalidArgument) as caught:
        page_size(-1)
    assert caught.value.field_names == ["page_size"]


def test_page_continues_after_the_last_item_only_when_there_is_more() -> None:
    listing = Listing("identity.ListUsers", ("org-a",))
    last = page(["a", "b"], 2, str, listing)
    assert list(last.items) == ["a", "b"]
    assert last.next_page_token == ""
    more = page(["a", "b", "c"], 2, str, listing)
    assert list(more.items) == ["a", "b"]
    assert listing.cursor(more.next_page_token) == "b"
