"""The one parser for JSON that callers send (JWKS, client assertions, tokens, page tokens).

Python's ``json`` recurses once per nested array or object, so a few kilobytes of ``[[[[``
exhaust the interpreter's stack (``RecursionError``), and joserfc parses a JWS header the
same way. Nesting is therefore measured before anything is parsed, by a scan that does not
recurse, and deep input is refused as an ordinary ``ValueError`` that callers already
turn into a client error.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Final

MAX_DEPTH: Final = 32
"""Deeper than any document we accept (a JWKS is 3 levels, JWT claims rarely 5)."""

# A JSON string (its closing quote optional, so an unterminated one is consumed once and
# the scan stays linear) or a bracket. Brackets inside strings are thus never counted.
_TOKEN: Final = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', re.DOTALL)


class JsonTooDeep(ValueError):
    """The document nests arrays and objects deeper than allowed."""


def check_depth(text: str | bytes, max_depth: int = MAX_DEPTH) -> None:
    """Raises :class:`JsonTooDeep` when ``text`` nests deeper than ``max_depth``.

    It only counts: text that is not JSON at all is left for the parser to refuse. For
    valid JSON the scan finds the same strings the parser does, so it never undercounts.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = 0
    for token in _TOKEN.finditer(text):
        first = text[token.start()]
        if first in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonTooDeep(f"JSON nested deeper than {max_depth} levels")
        elif first in "]}":
            depth -= 1


def parse_json(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` for untrusted input: ``ValueError`` (never ``RecursionError``) when the
    text is not JSON, not UTF-8, or nests deeper than ``max_depth``."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    check_depth(text, max_depth)
    return json.loads(text)


def check_jws_header_depth(compact: str | bytes, max_depth: int = MAX_DEPTH) -> None:
    """Bounds the protected header of a compact JWS before a JOSE library parses it (joserfc
    caps headers at 512 bytes today; this does not rely on that default).

    ``ValueError`` when the header is not base64url or nests deeper than ``max_depth``.
    """
    if isinstance(compact, str):
        compact = compact.encode("ascii")
    header = compact.split(b".", 1)[0]
    check_depth(base64.urlsafe_b64decode(header + b"=" * (-len(header) % 4)), max_depth)
