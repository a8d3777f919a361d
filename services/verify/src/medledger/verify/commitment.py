"""Salted commitments to record content, as the ledger carries them and verifiers recompute them.

A ledger entry about a resource version holds ``content_commitment``; an export gives, for each
version, the resource and the salt that opens the commitment. A partner re-implements the
format in three steps:

1. ``canonical`` = the resource's JSON in the JSON Canonicalization Scheme (RFC 8785): members
   sorted by UTF-16 code units, no insignificant whitespace, numbers as ECMAScript prints
   IEEE 754 doubles, strings with the minimal escapes; UTF-8.
2. ``salt`` = exactly :data:`SALT_SIZE` (32) random bytes, secret until the export.
3. ``commitment`` = ``SHA-256(b"medledger.record.v1" || 0x00 || salt || canonical)``, 32 bytes.

The domain string keeps these hashes apart from every other SHA-256 in the system (leaf and
node hashes, digests of models); the fixed salt size makes the split between salt and content
unambiguous, so no opening can be reread as another. Without the salt, the commitment says
nothing about the content (it hides); with it, only one canonical text matches (it binds).
Destroying the salt (erasure) leaves the ledger valid and the content unlinkable.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Final, cast

import rfc8785

COMMITMENT_DOMAIN: Final = b"medledger.record.v1\x00"
SALT_SIZE: Final = 32
COMMITMENT_SIZE: Final = 32
_MAX_SAFE_INTEGER: Final = 2**53 - 1


class NotCanonicalizable(ValueError):
    """The value has no RFC 8785 form: a non-finite float, an integer beyond ±(2^53 - 1), a
    string that is not Unicode text, or a key that is not a string."""


class OpeningMismatch(Exception):
    """A salt and content do not open a commitment; the message says which part is wrong."""


def canonical_json(value: object) -> bytes:
    """The RFC 8785 canonical form of a parsed JSON value (dicts, lists, strings, numbers,
    booleans, ``None``), as UTF-8 bytes.

    Numbers are IEEE 754 doubles, as RFC 8785 has them: an integer beyond ±(2^53 - 1) is
    taken as the nearest double, as a JavaScript parser reads it (the canonical text of the
    double 7.172162336950521e16 is ``71721623369505210``, which Python parses back as an int),
    and refused beyond the largest double.
    """
    try:
        # Any parsed JSON value; rfc8785 refuses (below) whatever is not one.
        return rfc8785.dumps(cast("Any", _as_doubles(value)))
    except rfc8785.CanonicalizationError as error:
        # The library's message may quote the value; ours names only the rule broken.
        raise NotCanonicalizable(
            "value has no RFC 8785 form (non-finite or out-of-range number, invalid text)"
        ) from error


def _as_doubles(value: object) -> object:
    if isinstance(value, dict):
        return {key: _as_doubles(member) for key, member in value.items()}
    if isinstance(value, list):
        return [_as_doubles(element) for element in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_SAFE_INTEGER:
        try:
            return float(value)
        except OverflowError:
            raise NotCanonicalizable("an integer beyond the largest IEEE 754 double") from None
    return value


def commit(salt: bytes, canonical: bytes) -> bytes:
    """``SHA-256(COMMITMENT_DOMAIN || salt || canonical)``; ``salt`` must be 32 bytes."""
    if len(salt) != SALT_SIZE:
        raise ValueError(f"a commitment salt is {SALT_SIZE} bytes, not {len(salt)}")
    return hashlib.sha256(COMMITMENT_DOMAIN + salt + canonical).digest()


def commit_json(salt: bytes, value: object) -> bytes:
    """The commitment to a parsed JSON value: ``commit(salt, canonical_json(value))``."""
    return commit(salt, canonical_json(value))


def check_opening(commitment: bytes, salt: bytes, canonical: bytes) -> None:
    """Raises :class:`OpeningMismatch` unless ``salt`` and ``canonical`` open ``commitment``.

    ``canonical`` must already be canonical: recompute it with :func:`canonical_json` from the
    exported resource rather than hashing the export's own text, whose formatting is free.
    """
    if len(commitment) != COMMITMENT_SIZE:
        raise OpeningMismatch(
            f"a commitment is {COMMITMENT_SIZE} bytes; this one has {len(commitment)}"
        )
    if len(salt) != SALT_SIZE:
        raise OpeningMismatch(f"a commitment salt is {SALT_SIZE} bytes; this one has {len(salt)}")
    if not hmac.compare_digest(commit(salt, canonical), commitment):
        raise OpeningMismatch("the content and salt do not match the ledgered commitment")
