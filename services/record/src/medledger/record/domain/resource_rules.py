"""The FHIR R4 rules fhir.resources does not check, run on a resource its models accepted.

Two walks. One over the JSON: no empty objects, arrays or strings and no nulls (FHIR JSON,
https://hl7.org/fhir/R4/json.html: "no empty elements"; a null only stands in a primitive
array paired with its ``_name`` array), integers within ±(2^53 - 1) so that the canonical
form (RFC 8785) of the stored resource exists, strings that are Unicode text (no lone
surrogates). One over the model, which knows each element's FHIR type: decimals, integers
and booleans as JSON numbers and booleans (the models take "141" and "true" too), required
value set bindings (:mod:`.value_sets`), ids, reference formats and ref-1, and the invariants
below.
"""

from __future__ import annotations

import decimal
import functools
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from fhir.resources.R4B.resource import Resource
from fhir_core.fhirabstractmodel import FHIRAbstractModel

from medledger.record.domain.fhir_references import ReferenceForm, is_fhir_id, reference_form
from medledger.record.domain.resource_issues import ResourceIssue, child, item
from medledger.record.domain.value_sets import (
    ALLERGY_CLINICAL,
    ALLERGY_VERIFICATION,
    CODE_BINDINGS,
    CONCEPT_BINDINGS,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    ValueSet,
)

MAX_SAFE_INTEGER: Final = 2**53 - 1
UCUM: Final = "http://unitsofmeasure.org"


def rule_issues(model: FHIRAbstractModel, document: Mapping[str, Any]) -> list[ResourceIssue]:
    issues = list(_json_issues(document, ""))
    contained = document.get("contained")
    contained_ids = (
        frozenset(
            r["id"] for r in contained if isinstance(r, dict) and isinstance(r.get("id"), str)
        )
        if isinstance(contained, list)
        else frozenset()
    )
    issues.extend(_model_issues(model, document, "", _Context(contained_ids)))
    return issues


# -- JSON ---------------------------------------------------------------------------------------


def _json_issues(value: object, path: str) -> Iterator[ResourceIssue]:
    if isinstance(value, dict):
        if not value:
            yield _empty(path)
        for key, member in value.items():
            yield from _member_issues(value, key, member, child(path, key))
    elif isinstance(value, str):
        if not value:
            yield _empty(path)
        elif not _is_text(value):
            yield ResourceIssue("value", path, "not Unicode text (a lone surrogate escape)")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SAFE_INTEGER:
        yield ResourceIssue(
            "value", path, "an integer beyond ±(2^53 - 1) cannot be kept exactly in JSON"
        )


def _member_issues(
    parent: Mapping[str, Any], key: str, member: object, location: str
) -> Iterator[ResourceIssue]:
    if member is None:
        yield ResourceIssue("structure", location, "null is not allowed; omit the element")
    elif isinstance(member, list):
        if not member:
            yield _empty(location)
        # ``given: [null, "x"]`` beside ``_given: [{...}, null]``: nulls align the two arrays.
        paired = key.startswith("_") or f"_{key}" in parent
        for index, element in enumerate(member):
            if element is not None:
                yield from _json_issues(element, item(location, index))
            elif not paired:
                yield ResourceIssue("structure", item(location, index), "null is not allowed here")
    else:
        yield from _json_issues(member, location)


def _empty(path: str) -> ResourceIssue:
    return ResourceIssue("structure", path, "empty elements are not allowed; omit the element")


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# -- the model ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    contained_ids: frozenset[str]


_Rule = Callable[[Mapping[str, Any], str, _Context], Iterator[ResourceIssue]]


@functools.cache
def _aliases(model_class: type[FHIRAbstractModel]) -> dict[str, str]:
    """JSON name -> attribute name (``class`` -> ``class_fhir``, ``_status`` -> ``status__ext``)."""
    return {(field.alias or name): name for name, field in model_class.model_fields.items()}


@functools.cache
def _type_names(model_class: type[FHIRAbstractModel]) -> tuple[str, ...]:
    """The FHIR types a model class is (``Age`` is a ``Quantity``)."""
    return tuple(c.__name__ for c in model_class.__mro__ if issubclass(c, FHIRAbstractModel))


def _model_issues(
    model: FHIRAbstractModel, data: Mapping[str, Any], path: str, context: _Context
) -> Iterator[ResourceIssue]:
    model_class = type(model)
    types = _type_names(model_class)
    aliases = _aliases(model_class)
    if isinstance(model, Resource):
        yield from _resource_issues(data, path)
    kinds = _primitive_kinds(model_class)
    for key, value in data.items():
        attribute = aliases.get(key)
        if attribute is None or key == "resourceType":
            continue
        location = child(path, key)
        if (kind := kinds.get(key)) is not None:
            yield from _primitive_issues(value, location, kind)
        yield from _binding_issues(types, key, value, location)
        nested = getattr(model, attribute, None)
        if isinstance(nested, FHIRAbstractModel) and isinstance(value, Mapping):
            yield from _model_issues(nested, value, location, context)
        elif isinstance(nested, list) and isinstance(value, list):
            for index, (element, element_data) in enumerate(zip(nested, value, strict=False)):
                if isinstance(element, FHIRAbstractModel) and isinstance(element_data, Mapping):
                    yield from _model_issues(element, element_data, item(location, index), context)
    for type_name in types:
        check = _TYPE_RULES.get(type_name)
        if check is not None:
            yield from check(data, path, context)


# FHIR JSON represents decimal, integer and boolean primitives as JSON numbers and booleans
# (https://hl7.org/fhir/R4/json.html#primitive); the models also accept "141" or "true".
_NUMBER: Final = "a decimal is a JSON number, not a string"
_INTEGER: Final = "an integer is a JSON number without a fraction, not a string"
_BOOLEAN: Final = "a boolean is JSON true or false, not a string or number"


def _leaf_types(annotation: object) -> set[type]:
    """The Python types an annotation can hold (Optional, list and Annotated unwrapped)."""
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return {annotation}
    found: set[type] = set()
    for argument in typing.get_args(annotation):
        found |= _leaf_types(argument)
    return found


@functools.cache
def _primitive_kinds(model_class: type[FHIRAbstractModel]) -> dict[str, str]:
    """JSON name -> what its JSON value must be, for the decimal, integer and boolean
    elements of a model class."""
    kinds: dict[str, str] = {}
    for name, field in model_class.model_fields.items():
        leaves = _leaf_types(field.annotation)
        if bool in leaves:
            kinds[field.alias or name] = _BOOLEAN
        elif decimal.Decimal in leaves:
            kinds[field.alias or name] = _NUMBER
        elif int in leaves:
            kinds[field.alias or name] = _INTEGER
    return kinds


def _primitive_issues(value: object, path: str, kind: str) -> Iterator[ResourceIssue]:
    if isinstance(value, list):
        for index, element in enumerate(value):
            if element is not None:  # a null pairs with an extension (checked above)
                yield from _primitive_issues(element, item(path, index), kind)
        return
    if kind == _BOOLEAN:
        fits = isinstance(value, bool)
    elif kind == _INTEGER:
        fits = isinstance(value, int) and not isinstance(value, bool)
    else:
        fits = isinstance(value, int | float) and not isinstance(value, bool)
    if not fits:
        yield ResourceIssue("value", path, kind)


def _binding_issues(
    types: tuple[str, ...], key: str, value: object, location: str
) -> Iterator[ResourceIssue]:
    """The required value set bindings of element ``key`` of a model of ``types``."""
    for type_name in types:
        if (binding := CODE_BINDINGS.get((type_name, key))) is not None:
            yield from _code_issues(value, location, binding)
        if (binding := CONCEPT_BINDINGS.get((type_name, key))) is not None:
            yield from _concept_issues(value, location, binding)


def _resource_issues(data: Mapping[str, Any], path: str) -> Iterator[ResourceIssue]:
    if "id" in data and not is_fhir_id(data["id"]):
        yield ResourceIssue(
            "value", child(path, "id"), "an id is 1 to 64 characters of A-Z a-z 0-9 - ."
        )
    if path and "contained" in data:
        yield ResourceIssue(
            "invariant", child(path, "contained"), "dom-2: contained resources contain none"
        )


def _code_issues(value: object, path: str, binding: ValueSet) -> Iterator[ResourceIssue]:
    codes = value if isinstance(value, list) else [value]
    for index, code in enumerate(codes):
        if isinstance(code, str) and code not in binding.codes:
            location = item(path, index) if isinstance(value, list) else path
            yield ResourceIssue(
                "code-invalid", location, f"not a code of the required value set {binding.url}"
            )


def _concept_issues(value: object, path: str, binding: ValueSet) -> Iterator[ResourceIssue]:
    codings = value.get("coding") if isinstance(value, Mapping) else None
    codings = codings if isinstance(codings, list) else []
    found = False
    for index, coding in enumerate(codings):
        if not isinstance(coding, Mapping) or coding.get("system") != binding.system:
            continue
        if coding.get("code") in binding.codes:
            found = True
        else:
            yield ResourceIssue(
                "code-invalid",
                child(item(child(path, "coding"), index), "code"),
                f"not a code of the required value set {binding.url}",
            )
    if not found:
        yield ResourceIssue(
            "code-invalid",
            child(path, "coding"),
            f"needs a coding from the required value set {binding.url}",
        )


def _reference_rules(
    data: Mapping[str, Any], path: str, context: _Context
) -> Iterator[ResourceIssue]:
    reference = data.get("reference")
    if not isinstance(reference, str):
        return
    location = child(path, "reference")
    form = reference_form(reference)
    if form is None:
        yield ResourceIssue(
            "value",
            location,
            "a reference is Type/id, an absolute URL, or #id of a contained resource",
        )
    elif (
        form is ReferenceForm.LOCAL
        and reference != "#"
        and reference[1:] not in context.contained_ids
    ):
        yield ResourceIssue(
            "invariant", location, "ref-1: a #id reference names a contained resource"
        )


def _extension_rules(
    data: Mapping[str, Any], path: str, context: _Context
) -> Iterator[ResourceIssue]:
    has_value = any(key.startswith("value") for key in data)
    if has_value == ("extension" in data):
        yield ResourceIssue(
            "invariant", path, "ext-1: an extension has either extensions or a value, not both"
        )


def _prediction_rules(
    data: Mapping[str, Any], path: str, context: _Context
) -> Iterator[ResourceIssue]:
    probability = data.get("probabilityDecimal")
    if isinstance(probability, int | float) and probability > 100:
        yield ResourceIssue(
            "invariant",
            child(path, "probabilityDecimal"),
            "ras-2: a probability is at most 100",
        )
    bounds = data.get("probabilityRange")
    for bound in ("low", "high"):
        quantity = bounds.get(bound) if isinstance(bounds, Mapping) else None
        if isinstance(quantity, Mapping) and (
            quantity.get("code") != "%" or quantity.get("system") != UCUM
        ):
            yield ResourceIssue(
                "invariant",
                child(child(path, "probabilityRange"), bound),
                "ras-1: the bounds of a probability range are percentages (UCUM %)",
            )


def _has_code(concept: object, system: str, codes: frozenset[str]) -> bool:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return isinstance(codings, list) and any(
        isinstance(c, Mapping) and c.get("system") == system and c.get("code") in codes
        for c in codings
    )


def _status_rules(clinical: ValueSet, verification: ValueSet, *, clinical_required: bool) -> _Rule:
    """con-5 / ait-2: no clinical status on an entry in error; ait-1: otherwise one."""

    def check(data: Mapping[str, Any], path: str, context: _Context) -> Iterator[ResourceIssue]:
        in_error = _has_code(
            data.get("verificationStatus"), verification.system, frozenset({"entered-in-error"})
        )
        if in_error and "clinicalStatus" in data:
            yield ResourceIssue(
                "invariant",
                child(path, "clinicalStatus"),
                "no clinical status when the verification status is entered-in-error",
            )
        if clinical_required and not in_error and "clinicalStatus" not in data:
            yield ResourceIssue(
                "invariant",
                child(path, "clinicalStatus"),
                "a clinical status is required unless the entry is entered-in-error",
            )
        if (
            clinical is CONDITION_CLINICAL
            and any(key.startswith("abatement") for key in data)
            and not _has_code(
                data.get("clinicalStatus"),
                clinical.system,
                frozenset({"inactive", "resolved", "remission"}),
            )
        ):
            yield ResourceIssue(
                "invariant",
                child(path, "clinicalStatus"),
                "con-4: an abated condition is inactive, resolved or in remission",
            )

    return check


def _observation_rules(
    data: Mapping[str, Any], path: str, context: _Context
) -> Iterator[ResourceIssue]:
    if "dataAbsentReason" in data and any(key.startswith("value") for key in data):
        yield ResourceIssue(
            "invariant",
            child(path, "dataAbsentReason"),
            "obs-6: a data absent reason only when there is no value",
        )


_TYPE_RULES: Final[dict[str, _Rule]] = {
    "Reference": _reference_rules,
    "Extension": _extension_rules,
    "RiskAssessmentPrediction": _prediction_rules,
    "Observation": _observation_rules,
    "Condition": _status_rules(CONDITION_CLINICAL, CONDITION_VERIFICATION, clinical_required=False),
    "AllergyIntolerance": _status_rules(
        ALLERGY_CLINICAL, ALLERGY_VERIFICATION, clinical_required=True
    ),
}
"""Rules of a FHIR type, run on each element of that type (with its JSON and path)."""
