"""Purposes of use: HL7 v3 PurposeOfUse codes (TREAT, ETREAT, …) and the contract's enum.

Tokens, stored documents and ledger-free logic use the codes; only the servicer converts
to and from the protobuf enum.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final

from medledger.api.common.v1 import purpose_pb2

_PREFIX = "PURPOSE_OF_USE_"

CODE_BY_PURPOSE: Final[Mapping[int, str]] = MappingProxyType(
    {
        value: name.removeprefix(_PREFIX)
        for name, value in purpose_pb2.PurposeOfUse.items()
        if value != purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED
    }
)
PURPOSE_BY_CODE: Final[Mapping[str, int]] = MappingProxyType(
    {code: value for value, code in CODE_BY_PURPOSE.items()}
)

TREAT: Final = "TREAT"
ETREAT: Final = "ETREAT"
HOPERAT: Final = "HOPERAT"
PATRQT: Final = "PATRQT"


def purpose_codes(purposes: Iterable[int]) -> tuple[str, ...]:
    """Codes of known, specified purposes, deduplicated in order; ValueError otherwise."""
    codes: list[str] = []
    for purpose in purposes:
        code = CODE_BY_PURPOSE.get(purpose)
        if code is None:
            raise ValueError("must be specified purposes of use")
        if code not in codes:
            codes.append(code)
    return tuple(codes)


def purpose_values(codes: Iterable[str]) -> list[purpose_pb2.PurposeOfUse.ValueType]:
    return [purpose_pb2.PurposeOfUse.ValueType(PURPOSE_BY_CODE[c]) for c in codes]
