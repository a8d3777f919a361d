"""Pagination (AIP-158): bounded page sizes and opaque page tokens.

A token names the listing it continues (what is listed and the filter), so a token from
one listing cannot be replayed against another; it is a cursor, not a credential.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from medledger.common.bounded_json import parse_json
from medledger.common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 200

T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is lowered to it; negative is an error."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _encode(listing: str, filter_value: str, after: str) -> str:
    data = json.dumps({"l": listing, "f": filter_value, "a": after}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def start_after(token: str, listing: str, filter_value: str = "") -> str:
    """The key the page starts after ("" for the first page)."""
    if not token:
        return ""
    try:
        data = parse_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["l"] != listing or data["f"] != filter_value or not isinstance(data["a"], str):
            raise ValueError(listing)
        return str(data["a"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token this listing issued")]
        ) from None


def page(
    found: Sequence[T],
    size: int,
    key: Callable[[T], str],
    listing: str,
    filter_value: str = "",
) -> Page[T]:
    """``found`` holds up to ``size + 1`` items: one more than the page means another page."""
    if len(found) <= size:
        return Page(found, "")
    items = found[:size]
    return Page(items, _encode(listing, filter_value, key(items[-1])))
