"""Problems found in a FHIR resource, reported like an OperationOutcome and as a BadRequest.

Every location is a FHIR path built from element names the schema defines and array indices
(``component[1].valueQuantity.value``); every diagnostic is a fixed sentence of ours. Nothing
the client sent is repeated: not a value, not an unknown element's name (those are reported at
their parent), not a library's message (pydantic's quote the input).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from medledger.common.errors import FieldViolation, InvalidArgument

RESOURCE_INVALID: Final = "RESOURCE_INVALID"
SEARCH_INVALID: Final = "SEARCH_INVALID"

DOCUMENT: Final = "resource_json"
"""The location of problems with the document as a whole (not JSON, too large, too deep):
the request field that carries it."""


@dataclass(frozen=True)
class ResourceIssue:
    """One OperationOutcome issue: ``code`` is a FHIR issue-type (``required``, ``value``,
    ``code-invalid``, ``structure``, ``invalid``, ``not-supported``, ``too-long``, ...)."""

    code: str
    location: str
    diagnostics: str


class ResourceInvalid(InvalidArgument):
    """A resource refused: INVALID_ARGUMENT with one field violation per issue."""

    def __init__(self, issues: Sequence[ResourceIssue], *, reason: str = RESOURCE_INVALID) -> None:
        unique = list(dict.fromkeys(issues))
        super().__init__(
            [FieldViolation(i.location, f"{i.code}: {i.diagnostics}") for i in unique],
            reason=reason,
        )
        self.issues = unique


def operation_outcome(issues: Iterable[ResourceIssue]) -> dict[str, Any]:
    """The issues as a FHIR R4 OperationOutcome (JSON), each an error located by its path."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": issue.code,
                "diagnostics": issue.diagnostics,
                "expression": [issue.location],
            }
            for issue in issues
        ],
    }


def child(path: str, element: str) -> str:
    """The path of ``element`` under ``path`` (the root's path is empty)."""
    return f"{path}.{element}" if path else element


def item(path: str, index: int) -> str:
    return f"{path}[{index}]"


def raise_if_any(issues: Iterable[ResourceIssue], *, reason: str = RESOURCE_INVALID) -> None:
    found = list(issues)
    if found:
        raise ResourceInvalid(found, reason=reason)
