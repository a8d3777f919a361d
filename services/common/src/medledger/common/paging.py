"""Pagination (AIP-158) for every List method: one page-size rule and one page-token format.

A page token is opaque to clients: ``base64url(version || tag || cursor)``, where the cursor
is where the next page starts (an id, a leaf index) and the tag is the first 16 bytes of a
SHA-256 over the method, its filters and the cursor. A token is accepted only by the listing
and filters it was issued for (AIP-158: changing them with a token is INVALID_ARGUMENT), and
an edited cursor no longer matches its tag.

Why a hash and not an HMAC with a secret: a token is a position, not a credential. Every page
is authorised and filtered again on each call, so a client that builds a token by hand can
only start a listing it may already read at a place of its choosing, which ``start_index``
and ``after_size`` already let it do. A keyless tag needs no key shared between replicas or
rotated, and tokens stay valid across restarts and rollouts. The binding is what matters:
a token sent with other filters or to another method is refused, never silently
misapplied. The version byte lets the format change without misreading old tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from medledger.common.errors import FieldViolation, InvalidArgument

DEFAULT_PAGE_SIZE: Final = 100
MAX_PAGE_SIZE: Final = 1000

_VERSION: Final = b"\x01"
_TAG_SIZE: Final = 16
_MAX_TOKEN_LENGTH: Final = 1024

T = TypeVar("T")


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is lowered to it (AIP-158); negative is
    INVALID_ARGUMENT naming ``page_size``."""
    if requested < 0:
        raise InvalidArgument([FieldViolation("page_size", "must not be negative")])
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True)
class Listing:
    """What a page token is bound to: the method (``"ledger.ListEntries"``) and the values
    of the request's filters, in a fixed order (empty strings for filters not set)."""

    method: str
    filters: tuple[str, ...] = ()

    def _tag(self, cursor: str) -> bytes:
        canonical = json.dumps([self.method, list(self.filters), cursor], separators=(",", ":"))
        digest = hashlib.sha256(b"medledger page token\x00" + canonical.encode()).digest()
        return digest[:_TAG_SIZE]

    def token(self, cursor: str | None) -> str:
        """The page token for the page starting at ``cursor``; "" when there is none."""
        if cursor is None:
            return ""
        data = _VERSION + self._tag(cursor) + cursor.encode()
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    def cursor(self, token: str) -> str | None:
        """The position ``token`` carries; None for no token (the first page).
        INVALID_ARGUMENT naming ``page_token`` for a token not issued for this listing."""
        if not token:
            return None
        try:
            if len(token) > _MAX_TOKEN_LENGTH:
                raise ValueError("too long")
            data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, tag, cursor = data[:1], data[1 : 1 + _TAG_SIZE], data[1 + _TAG_SIZE :]
            text = cursor.decode()
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _refused() from None
        if version != _VERSION or tag != self._tag(text):
            raise _refused()
        return text

    def int_cursor(self, token: str) -> int | None:
        """:meth:`cursor` for listings whose cursor is a non-negative integer."""
        cursor = self.cursor(token)
        if cursor is None:
            return None
        if not (cursor.isascii() and cursor.isdigit()):  # a token built by hand
            raise _refused()
        return int(cursor)


def _refused() -> InvalidArgument:
    return InvalidArgument(
        [FieldViolation("page_token", "is not a token issued for this listing and filters")]
    )


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str


def page(found: Sequence[T], size: int, key: Callable[[T], str], listing: Listing) -> Page[T]:
    """The page of ``found``, read with a limit of ``size + 1``: an item beyond ``size``
    means another page, which starts after the last item's ``key``."""
    if len(found) <= size:
        return Page(found, "")
    items = found[:size]
    return Page(items, listing.token(key(items[-1])))
