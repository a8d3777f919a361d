"""FHIR search parameters as exact-match tokens, for blind indexes.

The store never sees a value in clear: for each parameter a resource gets a set of normalised
tokens (:func:`search_values`), which the store blinds (HMAC with the parameter's name) and
matches exactly against the blinded token of a query (:func:`parse_search`). So every kind
of match a query may ask for is a token written at write time:

- **token** parameters (``identifier``, ``code``, ``category``): ``system|code`` and ``code``
  alone, and ``|code`` for a code without a system, with ``\\`` and ``|`` escaped by a
  backslash inside each part (FHIR's own search escaping), so two different pairs never
  share a token. ``system|`` (any code of a system) is not supported.
- **status**, ``gender``: the code alone.
- **string** parameters (``family``, ``given``): each name part case-folded, accents removed,
  spaces collapsed (``"  Müller "`` and ``"muller"`` match); whole parts, not prefixes.
- **date** parameters (``birthdate``, ``date``): FHIR's ``eq`` (no prefix: the searched day,
  month or year contains the value, or the whole Period) and the ranges ``ge``, ``gt``,
  ``le``, ``lt`` (the value or Period overlaps the days asked about), exactly, through
  calendar-unit tokens; see :mod:`~medledger.record.domain.date_search`. A range query is a
  union of tokens (:func:`alternatives`): a resource matches with any one of them. ``ne``,
  ``sa``, ``eb`` and ``ap`` are refused. Dates are taken as written (the local date of a
  dateTime, before any offset).
- **patient**: the compartment's patient id (``Patient/<id>`` or ``<id>`` in a query).

A value may list several, separated by commas, any ONE of which must match (FHIR's OR:
``code=http://loinc.org|2345-7,http://loinc.org|2339-0``), at most
:data:`MAX_SEARCH_ALTERNATIVES`; a comma inside one of them is escaped (``\\,``). A
parameter given twice must match both times (FHIR's AND).

Which element each parameter reads per type is in :data:`CLINICAL_PARAMETERS`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from medledger.record.domain.date_search import (
    FIRST_DAY,
    LAST_DAY,
    RANGE_PREFIXES,
    interval_tokens,
    parse_date,
    range_interval,
    range_tokens,
)
from medledger.record.domain.fhir_references import is_fhir_id
from medledger.record.domain.fhir_validation import ValidResource
from medledger.record.domain.resource_issues import (
    SEARCH_INVALID,
    ResourceInvalid,
    ResourceIssue,
)
from medledger.record.domain.value_sets import ALLERGY_CLINICAL, CONDITION_CLINICAL

MAX_SEARCH_VALUE: Final = 1024
"""Characters in one query value; longer ones cannot match any stored element we index."""

MAX_SEARCH_ALTERNATIVES: Final = 64
"""Values one parameter may list (comma-separated), any one of which matches."""

SearchTerm = tuple[str, tuple[str, ...]]
"""A parsed parameter: its name and its values (normalised), any one of which must match."""

ALLERGY_CATEGORY_SYSTEM: Final = "http://hl7.org/fhir/allergy-intolerance-category"


@dataclass(frozen=True)
class ClinicalParameters:
    """The elements a clinical type's parameters read (JSON names; choice types spelled
    out). ``status`` reads a code, or the codings of ``status_system`` in a CodeableConcept."""

    code: tuple[str, ...] = ()
    category: tuple[str, ...] = ()
    status: str | None = None
    status_system: str | None = None
    date: tuple[str, ...] = ()

    def names(self) -> frozenset[str]:
        present = {
            "code": self.code,
            "category": self.category,
            "status": self.status,
            "date": self.date,
        }
        return frozenset({"patient", *(name for name, reads in present.items() if reads)})


CLINICAL_PARAMETERS: Final[Mapping[str, ClinicalParameters]] = {
    "Observation": ClinicalParameters(
        code=("code",),
        category=("category",),
        status="status",
        date=("effectiveDateTime", "effectiveInstant", "effectivePeriod"),
    ),
    "Condition": ClinicalParameters(
        code=("code",),
        category=("category",),
        status="clinicalStatus",
        status_system=CONDITION_CLINICAL.system,
        date=("onsetDateTime", "onsetPeriod"),
    ),
    "Encounter": ClinicalParameters(code=("type",), status="status", date=("period",)),
    "MedicationRequest": ClinicalParameters(
        code=("medicationCodeableConcept",),
        category=("category",),
        status="status",
        date=("authoredOn",),
    ),
    "AllergyIntolerance": ClinicalParameters(
        code=("code",),
        category=("category",),
        status="clinicalStatus",
        status_system=ALLERGY_CLINICAL.system,
        date=("recordedDate",),
    ),
    "Procedure": ClinicalParameters(
        code=("code",),
        category=("category",),
        status="status",
        date=("performedDateTime", "performedPeriod"),
    ),
    "Immunization": ClinicalParameters(
        code=("vaccineCode",), status="status", date=("occurrenceDateTime",)
    ),
    "DiagnosticReport": ClinicalParameters(
        code=("code",),
        category=("category",),
        status="status",
        date=("effectiveDateTime", "effectivePeriod"),
    ),
    "DocumentReference": ClinicalParameters(
        code=("type",), category=("category",), status="status", date=("date",)
    ),
    "RiskAssessment": ClinicalParameters(
        code=("code",), status="status", date=("occurrenceDateTime", "occurrencePeriod")
    ),
    "Provenance": ClinicalParameters(date=("recorded",)),
}

PATIENT_PARAMETERS: Final = frozenset({"identifier", "family", "given", "birthdate", "gender"})

SEARCH_PARAMETERS: Final[Mapping[str, frozenset[str]]] = {
    "Patient": PATIENT_PARAMETERS,
    **{name: spec.names() for name, spec in CLINICAL_PARAMETERS.items()},
}
"""The parameters each stored type can be searched by."""

# How few resources a parameter's value usually matches, fewest first: one patient's
# identifier or compartment, then names and birth dates, then a code, a date, and last the
# values every other resource shares (a category, a status, a gender).
_SELECTIVITY: Final[tuple[frozenset[str], ...]] = (
    frozenset({"identifier"}),
    frozenset({"patient"}),
    frozenset({"family", "birthdate"}),
    frozenset({"given"}),
    frozenset({"code"}),
    frozenset({"date"}),
    frozenset({"category", "status", "gender"}),
)


def selectivity_rank(name: str) -> int:
    """Where parameter ``name`` stands in :data:`_SELECTIVITY` (0: it usually matches the
    fewest resources). A search lets its best-ranked parameter drive when it matches few, so
    that a parameter most resources share (a LOINC code) is never looked up whole."""
    for rank, names in enumerate(_SELECTIVITY):
        if name in names:
            return rank
    return len(_SELECTIVITY)


# -- tokens of a resource -----------------------------------------------------------------------


def search_values(resource: ValidResource) -> dict[str, set[str]]:
    """The normalised tokens of each search parameter of a valid resource (parameters without
    any are left out)."""
    document = resource.resource
    found: dict[str, set[str]]
    if resource.resource_type == "Patient":
        names = list(_objects(document.get("name")))
        found = {
            "identifier": set(_identifier_tokens(document.get("identifier"))),
            "family": {
                token
                for name in names
                if isinstance(family := name.get("family"), str)
                if (token := _name_token(family))
            },
            "given": {
                token
                for name in names
                for given in _strings(name.get("given"))
                if (token := _name_token(given))
            },
            "birthdate": set(_date_tokens(document.get("birthDate"))),
            "gender": set(_strings(document.get("gender"))),
        }
    else:
        spec = CLINICAL_PARAMETERS[resource.resource_type]
        found = {
            "patient": {resource.patient_id} if resource.patient_id else set(),
            "code": {t for e in spec.code for t in _concept_tokens(document.get(e))},
            "category": {t for e in spec.category for t in _category_tokens(document.get(e))},
            "status": set(_status_tokens(document, spec)),
            "date": {t for e in spec.date for t in _date_tokens(document.get(e))},
        }
    return {name: tokens for name, tokens in found.items() if tokens}


def _objects(value: object) -> Iterator[Mapping[str, Any]]:
    for element in value if isinstance(value, list) else [value]:
        if isinstance(element, Mapping):
            yield element


def _strings(value: object) -> Iterator[str]:
    for element in value if isinstance(value, list) else [value]:
        if isinstance(element, str) and element:
            yield element


def _identifier_tokens(identifiers: object) -> Iterator[str]:
    for identifier in _objects(identifiers):
        value = identifier.get("value")
        if isinstance(value, str) and value:
            yield from _code_tokens(identifier.get("system"), value)


def _concept_tokens(concepts: object) -> Iterator[str]:
    for concept in _objects(concepts):
        for coding in _objects(concept.get("coding")):
            code = coding.get("code")
            if isinstance(code, str) and code:
                yield from _code_tokens(coding.get("system"), code)


def _category_tokens(value: object) -> Iterator[str]:
    # AllergyIntolerance.category is a list of codes; every other category a CodeableConcept.
    for code in _strings(value):
        yield from _code_tokens(ALLERGY_CATEGORY_SYSTEM, code)
    yield from _concept_tokens(value)


def _code_tokens(system: object, code: str) -> Iterator[str]:
    yield escape(code)
    if isinstance(system, str) and system:
        yield f"{escape(system)}|{escape(code)}"
    else:
        yield f"|{escape(code)}"


def _status_tokens(document: Mapping[str, Any], spec: ClinicalParameters) -> Iterator[str]:
    if spec.status is None:
        return
    status = document.get(spec.status)
    if spec.status_system is None:
        yield from (escape(code) for code in _strings(status))
        return
    for concept in _objects(status):
        for coding in _objects(concept.get("coding")):
            code = coding.get("code")
            if coding.get("system") == spec.status_system and isinstance(code, str) and code:
                yield escape(code)


def _date_tokens(value: object) -> Iterator[str]:
    """The tokens of a date, dateTime or instant (the days it names), or of a Period (its
    start's first day to its end's last; an open end reaches FHIR's first or last day)."""
    if isinstance(value, Mapping):
        start = parse_date(s) if isinstance(s := value.get("start"), str) else None
        end = parse_date(e) if isinstance(e := value.get("end"), str) else None
        if start is None and end is None:
            return
        first = start.first if start is not None else FIRST_DAY
        last = end.last if end is not None else LAST_DAY
        if first <= last:
            yield from interval_tokens(first, last)
        elif start is not None and end is not None:  # backwards: each bound a date of its own
            yield from interval_tokens(start.first, start.last)
            yield from interval_tokens(end.first, end.last)
        return
    if isinstance(value, str) and (unit := parse_date(value)) is not None:
        yield from interval_tokens(unit.first, unit.last)


# -- normalisation ------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """Case-folded, accents removed, whitespace collapsed: ``" Ñúñez  GARCÍA"`` is
    ``"nunez garcia"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    folded = unicodedata.normalize("NFKC", bare.casefold())
    return " ".join(folded.split())


def _name_token(text: str) -> str | None:
    """The token of a name part; none for one without a letter or digit."""
    normal = normalise_text(text)
    return normal if any(c.isalnum() for c in normal) else None


def escape(part: str) -> str:
    """A part of a token with FHIR's search escapes, so ``|`` always separates system and code."""
    return part.replace("\\", "\\\\").replace("|", "\\|")


# -- queries ------------------------------------------------------------------------------------

_PARAMETER_NAME: Final = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_ESCAPABLE: Final = frozenset("\\|,$")
_DATE_QUERY: Final = re.compile(r"([a-z]{2})?(\d{4}(?:-\d{2}(?:-\d{2})?)?)")


class _BadValue(Exception):
    """A query value refused; the text is fixed, chosen here."""


def parse_search(resource_type: str, params: Mapping[str, str]) -> list[SearchTerm]:
    """The terms (parameter, values) a query must all match, in the order given; a term
    matches with any one of its values.

    :class:`ResourceInvalid` (INVALID_ARGUMENT, reason SEARCH_INVALID) names each bad
    parameter as ``params.<name>``: unknown for the type, or a value that cannot match.
    """
    supported = SEARCH_PARAMETERS.get(resource_type)
    if supported is None:
        _refuse("resource_type", "not-supported", "this resource type is not stored here")
    parsed: list[SearchTerm] = []
    issues: list[ResourceIssue] = []
    for name, value in params.items():
        location = f"params.{name}" if _PARAMETER_NAME.fullmatch(name) else "params"
        if name not in supported:
            issues.append(
                ResourceIssue(
                    "not-supported",
                    location,
                    f"not a search parameter of {resource_type}: use "
                    + ", ".join(sorted(supported)),
                )
            )
            continue
        try:
            parsed.append((name, _parse_values(name, value)))
        except _BadValue as error:
            issues.append(ResourceIssue("value", location, str(error)))
    if issues:
        raise ResourceInvalid(issues, reason=SEARCH_INVALID)
    return parsed


def _parse_values(name: str, value: str) -> tuple[str, ...]:
    """The values of a comma-separated list, each parsed, each once, in the order given."""
    listed = _split_unescaped(value, ",")
    if len(listed) > 1 and not all(listed):
        raise _BadValue("a list of values separated by commas has an empty one")
    if len(listed) > MAX_SEARCH_ALTERNATIVES:
        raise _BadValue(
            f"at most {MAX_SEARCH_ALTERNATIVES} values (separated by commas) in one parameter"
        )
    return tuple(dict.fromkeys(_parse_value(name, one) for one in listed))


def _split_unescaped(value: str, separator: str) -> list[str]:
    """``value`` split at each ``separator`` not escaped by a backslash; escapes are kept."""
    parts = [""]
    escaped = False
    for character in value:
        if character == separator and not escaped:
            parts.append("")
            continue
        parts[-1] += character
        escaped = character == "\\" and not escaped
    return parts


def _parse_value(name: str, value: str) -> str:
    if not value or len(value) > MAX_SEARCH_VALUE:
        raise _BadValue(f"a search value has 1 to {MAX_SEARCH_VALUE} characters")
    if name in {"birthdate", "date"}:
        return _parse_date(value)
    if name in {"family", "given"}:
        token = _name_token(value)
        if token is None:
            raise _BadValue("a name search needs letters or digits")
        return token
    if name == "patient":
        patient = value.removeprefix("Patient/")
        if not is_fhir_id(patient):
            raise _BadValue("a patient is Patient/<id> or <id>")
        return patient
    parts = _split_escaped(value)
    if name in {"status", "gender"}:
        if len(parts) != 1:
            raise _BadValue("takes a code alone, without a system")
        return escape(parts[0])
    # token parameters: identifier, code, category
    if len(parts) > 2 or not parts[-1]:
        raise _BadValue("a token is code, system|code or |code (system| alone is not supported)")
    if len(parts) == 1:
        return escape(parts[0])
    system, code = parts
    return f"{escape(system)}|{escape(code)}" if system else f"|{escape(code)}"


def _split_escaped(value: str) -> list[str]:
    """Splits at unescaped ``|``; ``\\|``, ``\\,``, ``\\$`` and ``\\\\`` stand for themselves
    (one value of a list: its unescaped commas were separators)."""
    parts = [""]
    characters = iter(value)
    for character in characters:
        if character == "\\":
            escaped = next(characters, "")
            if escaped not in _ESCAPABLE:
                raise _BadValue("a backslash escapes only \\ | , or $")
            parts[-1] += escaped
        elif character == "|":
            parts.append("")
        else:
            parts[-1] += character
    return parts


def _parse_date(value: str) -> str:
    """``YYYY[-MM[-DD]]`` for ``eq``; ``geYYYY[-MM[-DD]]`` (and ``gt``, ``le``, ``lt``) for
    a range, whose tokens :func:`alternatives` gives."""
    match = _DATE_QUERY.fullmatch(value)
    if match is None:
        raise _BadValue("a date search is [prefix]YYYY, YYYY-MM or YYYY-MM-DD (no time)")
    prefix, date = match.groups()
    if prefix not in {None, "eq", *RANGE_PREFIXES}:
        raise _BadValue(
            "a date prefix is eq, ge, gt, le or lt (ne, sa, eb and ap are not supported)"
        )
    if parse_date(date) is None:
        raise _BadValue("not a calendar date")
    return date if prefix in {None, "eq"} else prefix + date


def any_of_tokens(term: SearchTerm) -> tuple[str, ...]:
    """The tokens of a parsed term (:func:`parse_search`) any ONE of which a resource must
    have: the union of its values' :func:`alternatives`, each once."""
    name, values = term
    return tuple(dict.fromkeys(token for value in values for token in alternatives(name, value)))


def alternatives(name: str, value: str) -> tuple[str, ...]:
    """The tokens of a parsed query value any ONE of which a resource must have: the value
    itself, or a date range's union (empty: a range before FHIR's first day or after its
    last, which nothing matches)."""
    if name in {"birthdate", "date"} and value[:2] in RANGE_PREFIXES:
        unit = parse_date(value[2:])
        days = range_interval(value[:2], unit) if unit is not None else None
        return range_tokens(*days) if days is not None else ()
    return (value,)


def _refuse(location: str, code: str, diagnostics: str) -> NoReturn:
    raise ResourceInvalid([ResourceIssue(code, location, diagnostics)], reason=SEARCH_INVALID)
