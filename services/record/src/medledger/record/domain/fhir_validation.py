"""FHIR R4 JSON in, a resource we can store out, or every problem as an issue.

The order of checks, each stage only on what the one before accepted:

1. the document: at most :data:`MAX_RESOURCE_BYTES` of UTF-8, JSON nested at most
   :data:`MAX_RESOURCE_DEPTH` deep, at most :data:`MAX_RESOURCE_OBJECTS` objects and
   :data:`MAX_RESOURCE_VALUES` values, no duplicate member names, no NaN or Infinity, an object;
2. its ``resourceType``: one of :data:`SUPPORTED_TYPES`, the one the request expects;
3. the structure and primitive formats, by fhir.resources' R4B models (they accept R4 JSON;
   the default models are R5, which is not what we store);
4. what those models skip (:mod:`.resource_rules`): empty and null elements, numbers the
   canonical form cannot carry, required value set bindings, reference formats, ids,
   invariants (ras-1/2, con-4/5, ait-1/2, obs-6, ext-1, ref-1, dom-2);
5. the patient compartment (:mod:`.compartment`).

The resource is kept as the client's JSON (the parsed dict), never re-serialised from the
model: the model is only a checker, and FHIR JSON goes through the service unchanged.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from medledger.common.bounded_json import JsonTooDeep, check_depth
from medledger.record.domain.compartment import SUPPORTED_TYPES, find_compartment
from medledger.record.domain.fhir_references import LiteralReference, is_resource_type
from medledger.record.domain.resource_issues import (
    DOCUMENT,
    ResourceInvalid,
    ResourceIssue,
    child,
    item,
    raise_if_any,
)
from medledger.record.domain.resource_rules import rule_issues

MAX_RESOURCE_BYTES: Final = 1024 * 1024
"""1 MiB: larger than any clinical resource we hold (a DocumentReference carries a URL to its
content, not the content), well under gRPC's 4 MiB message limit."""

MAX_RESOURCE_DEPTH: Final = 32
"""Nesting of JSON arrays and objects; FHIR resources rarely pass 12 (extensions in contained
resources). Checked before parsing: Python's parser recurses once a level."""


MAX_RESOURCE_OBJECTS: Final = 5000
MAX_RESOURCE_VALUES: Final = 20_000
"""JSON objects (FHIR elements of complex types), and values of any kind (members and array
items), in one resource; a rich Patient has about 50 objects and 200 values. Validating costs
about 0.1 ms an object and some microseconds a value, and each bad one becomes an issue, so
these bound a request's CPU time where the size limit alone does not (a megabyte of ``""``
is 200,000 array items)."""


@dataclass(frozen=True)
class ValidResource:
    """A resource that passed every check.

    ``resource`` is the JSON object as the client sent it. ``patient_id`` is the compartment's
    patient: the Patient's own id (None when a Patient has none yet), otherwise the one its
    patient reference names. ``compartment_members`` are resources that must already lie in
    that compartment (a Provenance's targets other than the patient).
    """

    resource_type: str
    id: str | None
    resource: dict[str, Any]
    patient_id: str | None
    compartment_members: tuple[LiteralReference, ...] = ()


def validate_resource(text: str, *, expected_type: str | None = None) -> ValidResource:
    """Parses and checks one FHIR R4 resource; :class:`ResourceInvalid` (INVALID_ARGUMENT,
    reason RESOURCE_INVALID) lists every problem found at the stage that failed."""
    return validate_document(parse_resource_json(text), expected_type=expected_type)


def parse_resource_json(text: str) -> object:
    """The JSON value of ``text``, within the size and depth limits, or ResourceInvalid."""
    if len(text) > MAX_RESOURCE_BYTES or len(_utf8(text)) > MAX_RESOURCE_BYTES:
        _refuse("too-long", DOCUMENT, f"a resource is at most {MAX_RESOURCE_BYTES} bytes")
    try:
        check_depth(text, MAX_RESOURCE_DEPTH)
    except JsonTooDeep:
        _refuse("too-costly", DOCUMENT, f"JSON nested deeper than {MAX_RESOURCE_DEPTH} levels")
    try:
        document = json.loads(
            text,
            object_pairs_hook=_ObjectBuilder(),
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except _DuplicateMember:
        _refuse("structure", DOCUMENT, "a JSON object repeats a member name")
    except _TooManyObjects:
        _refuse("too-costly", DOCUMENT, f"a resource has at most {MAX_RESOURCE_OBJECTS} objects")
    except (ValueError, RecursionError):
        _refuse("structure", DOCUMENT, "not JSON (RFC 8259; NaN and Infinity are not JSON)")
    if _count_values(document) > MAX_RESOURCE_VALUES:
        _refuse("too-costly", DOCUMENT, f"a resource has at most {MAX_RESOURCE_VALUES} values")
    return document


def validate_document(document: object, *, expected_type: str | None = None) -> ValidResource:
    """Checks a parsed JSON value as a resource (stages 2 to 5 of the module's list)."""
    if not isinstance(document, dict):
        _refuse("structure", DOCUMENT, "a resource is a JSON object")
    resource_type = _resource_type(document, expected_type)
    raise_if_any(_contained_types(document))
    model_class = get_fhir_model_class(resource_type)
    try:
        model = model_class.model_validate(document)
    except ValidationError as error:
        raise ResourceInvalid(issues_from_validation_error(error)) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError):
        # fhir.resources raises these on some odd shapes instead of a ValidationError.
        _refuse("structure", DOCUMENT, "not a valid FHIR R4 resource")
    issues = rule_issues(model, document)
    compartment, compartment_issues = find_compartment(document)
    raise_if_any([*issues, *compartment_issues])
    assert compartment is not None  # no issues means a compartment
    own_id = document.get("id")
    return ValidResource(
        resource_type=resource_type,
        id=own_id if isinstance(own_id, str) else None,
        resource=document,
        patient_id=compartment.patient_id,
        compartment_members=compartment.members,
    )


def _resource_type(document: dict[str, Any], expected_type: str | None) -> str:
    resource_type = document.get("resourceType")
    if not isinstance(resource_type, str):
        _refuse("required", "resourceType", "resourceType is required (a string)")
    if resource_type not in SUPPORTED_TYPES:
        _refuse("not-supported", "resourceType", "this resource type is not stored here")
    if expected_type is not None and resource_type != expected_type:
        _refuse("value", "resourceType", "does not match the resource type of the request")
    return resource_type


def _contained_types(document: dict[str, Any]) -> list[ResourceIssue]:
    """fhir.resources raises a KeyError (not a ValidationError) on a contained resource of an
    unknown type, so those are refused first."""
    contained = document.get("contained")
    if not isinstance(contained, list):
        return []
    issues = []
    for index, resource in enumerate(contained):
        if not isinstance(resource, dict):
            continue  # the models report the wrong JSON type
        name = resource.get("resourceType")
        if not isinstance(name, str) or not is_resource_type(name):
            issues.append(
                ResourceIssue(
                    "value",
                    child(item("contained", index), "resourceType"),
                    "a contained resource needs a FHIR R4 resourceType",
                )
            )
    return issues


# -- pydantic's errors as FHIR paths ------------------------------------------------------------

_ELEMENT_NAME: Final = re.compile(r"_?[A-Za-z][A-Za-z0-9]{0,63}")
# fhir_core's two messages for choice types; the list holds the model's element names.
_CHOICE_ERROR: Final = re.compile(
    r"Value error, (Any of one field value is expected|Expect any of field value)"
    r" from this list \[((?:'[a-z][A-Za-z0-9]*'(?:, )?)+)\](, but got multiple!|\.)"
)
_CHOICE_NAMES: Final = re.compile(r"'([a-z][A-Za-z0-9]*)'")
_RANGE_ERRORS: Final = frozenset(
    {"less_than", "less_than_equal", "greater_than", "greater_than_equal", "finite_number"}
)
_FORMAT_ERRORS: Final = frozenset(
    {"string_pattern_mismatch", "string_too_short", "string_too_long"}
)


def issues_from_validation_error(error: ValidationError) -> list[ResourceIssue]:
    """pydantic's errors from a fhir.resources model as issues located by FHIR path.

    Only the error's location and type are read, never its ``input`` or message (both quote
    the client's values), except the list of choice element names in a choice-type error,
    which the model, not the input, provides. An unknown element is located at its parent:
    its name is the client's text.
    """
    issues = []
    for detail in error.errors(include_url=False, include_input=False, include_context=False):
        kind = str(detail["type"])
        location = tuple(detail["loc"])
        if kind == "extra_forbidden":
            location = location[:-1]
        path = _fhir_path(location)
        if kind == "value_error" and (choice := _choice_element(str(detail["msg"]))):
            code, text = choice[1]
            issues.append(ResourceIssue(code, child(path, choice[0]), text))
            continue
        code, text = _describe(kind)
        issues.append(ResourceIssue(code, path or DOCUMENT, text))
    return list(dict.fromkeys(issues)) or [
        ResourceIssue("invalid", DOCUMENT, "not a valid FHIR R4 resource")
    ]


def _fhir_path(location: Sequence[int | str]) -> str:
    path = ""
    for part in location:
        if isinstance(part, int):
            if not path:
                break
            path = item(path, part)
        elif part == "resource_type":
            path = child(path, "resourceType")
        elif _ELEMENT_NAME.fullmatch(part):
            path = child(path, part)
        else:  # a label of pydantic's (a validator's name), not an element
            break
    return path


def _choice_element(message: str) -> tuple[str, tuple[str, str]] | None:
    """``value[x]`` and what is wrong, from fhir_core's choice-type errors."""
    match = _CHOICE_ERROR.fullmatch(message)
    names = _CHOICE_NAMES.findall(match[2]) if match else []
    prefix = _common_stem(names) if len(names) > 1 else ""
    if match is None or not prefix:
        return None
    if match[3] != ".":
        return f"{prefix}[x]", ("structure", "only one type of this choice element may be present")
    return f"{prefix}[x]", ("required", "one type of this choice element is required")


def _common_stem(names: Sequence[str]) -> str:
    """The longest prefix after which every name continues with a capital letter
    (``value`` for valueDate and valueDateTime)."""
    shortest = min(names, key=len)
    for end in range(len(shortest), 0, -1):
        if all(len(n) > end and n[end].isupper() for n in names) and all(
            n.startswith(shortest[:end]) for n in names
        ):
            return shortest[:end]
    return ""


_DESCRIPTIONS: Final[dict[str, tuple[str, str]]] = {
    "extra_forbidden": ("structure", "holds an element that FHIR R4 does not define here"),
    "fhir-validation-wrong-resource-type": ("value", "does not match the model's resource type"),
    "json_invalid": ("structure", "has the wrong JSON type for its FHIR data type"),
    "is_instance_of": ("structure", "has the wrong JSON type for its FHIR data type"),
    "value_error": ("value", "not a valid value of its FHIR data type"),
    "string_unicode": ("value", "not Unicode text (a lone surrogate escape)"),
    **dict.fromkeys(_FORMAT_ERRORS, ("value", "does not match the format of its FHIR data type")),
    **dict.fromkeys(_RANGE_ERRORS, ("value", "outside the range of its FHIR data type")),
}


def _describe(kind: str) -> tuple[str, str]:
    """The issue code and text for a pydantic error type."""
    if kind in _DESCRIPTIONS:
        return _DESCRIPTIONS[kind]
    if kind.endswith("missing"):
        return "required", "a required element is missing"
    if kind.startswith(("date", "time")):
        return "value", "not a valid FHIR date or time"
    if kind.endswith("_type"):
        return "structure", "has the wrong JSON type for its FHIR data type"
    return "invalid", "not valid here in FHIR R4"


# -- parsing ------------------------------------------------------------------------------------


def _count_values(document: object) -> int:
    """Members and array items, everywhere (a loop: the depth is bounded, but need not be)."""
    count = 0
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            count += len(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            count += len(value)
            pending.extend(value)
    return count


class _DuplicateMember(ValueError):
    pass


class _TooManyObjects(ValueError):
    pass


class _ObjectBuilder:
    """Builds each JSON object: refuses repeated member names and counts the objects."""

    def __init__(self) -> None:
        self.objects = 0

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.objects += 1
        if self.objects > MAX_RESOURCE_OBJECTS:
            raise _TooManyObjects
        document = dict(pairs)
        if len(document) != len(pairs):
            raise _DuplicateMember
        return document


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError("NaN and Infinity are not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError("number out of range")
    return value


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", errors="surrogatepass")


def _refuse(code: str, location: str, diagnostics: str) -> NoReturn:
    raise ResourceInvalid([ResourceIssue(code, location, diagnostics)])
