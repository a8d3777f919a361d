"""A model's feature vector from a patient's FHIR R4 Observations.

Each :class:`Feature` names the codings that measure it (LOINC, or a local system), the UCUM
unit the model was trained in and the range it accepts. :func:`build_feature_vector` reads the
Observations (parsed JSON, as the record service returns them) and, for each feature:

1. Candidates: an Observation whose ``status`` is ``final``, ``amended`` or ``corrected``
   (:data:`ACCEPTED_STATUSES`; ``registered``, ``preliminary``, ``cancelled``,
   ``entered-in-error`` and ``unknown`` are ignored), that has an ``id``, and whose ``code`` has
   one of the feature's codings with a ``valueQuantity``; or such an Observation's
   ``component`` with that coding and a ``valueQuantity`` (blood pressure: the systolic
   8480-6 is a component of the 85354-9 panel). A quantity counts only with a number for its
   value and no ``comparator`` (``<5`` is not a measurement); ``dataAbsentReason`` ones have no
   value and do not count.
2. The latest candidate: by clinical time (``effectiveDateTime``, ``effectiveInstant``,
   ``effectivePeriod.end``, else its start, else ``issued``), then ``issued``, then
   ``meta.lastUpdated``, then the version, then the id (so the input's order never matters);
   a partial date counts as its first instant, a time without a zone as UTC. So a correction
   re-issued for the same specimen wins over the value it corrects.
3. That latest candidate decides: its unit must convert to the feature's (else
   ``FEATURE_UNIT``) and the converted value lie in ``[min_value, max_value]`` (else
   ``FEATURE_OUT_OF_RANGE``). An older value is never used in its place: a model must not
   silently score last year's glucose because this week's came in a unit it cannot read.
   No candidate at all is ``FEATURE_MISSING``.

Units: the quantity's UCUM ``code`` (its ``system`` is http://unitsofmeasure.org), else its
``unit`` text when that text is itself a UCUM code (``mg/dL`` is; ``mmHg`` is not). Conversions
are UCUM's (:mod:`.ucum`: prefixes and scales, ``g/L`` to ``mg/dL``, spellings of one unit such
as ``kg/m2`` and ``kg.m-2``) and, between mass and amount of substance, the analyte's molar
mass: the feature's own when it has one, else :data:`MOLAR_MASS_BY_LOINC`'s for the code
matched (glucose 18.016, cholesterol 38.67, triglycerides 88.57 mg/dL per mmol/L).
Arithmetic is exact (decimal in, one rounding to float out).

The value is read from a JSON number, or from a string holding a FHIR decimal: the record
service keeps the client's JSON as sent, and some generators (carebundle, which the demo seeds
with) write decimals as strings.

Every problem of every feature is collected and raised as one :class:`FeaturesUnusable`; it
names features and reasons only, never a value, a unit, an id or a patient.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import StrEnum
from fractions import Fraction
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from medledger.common.errors import FailedPrecondition, FieldViolation
from medledger.common.ucum import conversion_factor, is_ucum

LOINC: Final = "http://loinc.org"
UCUM: Final = "http://unitsofmeasure.org"
ACCEPTED_STATUSES: Final = frozenset({"final", "amended", "corrected"})
"""Observation statuses whose value a model may use: complete, verified results."""
FEATURES_UNUSABLE: Final = "FEATURES_UNUSABLE"
"""The ErrorInfo reason of :class:`FeaturesUnusable`; each feature's own reason is in its
field violation and in the metadata."""

_GLUCOSE: Final = Fraction("180.16")  # 18.016 mg/dL per mmol/L
_CHOLESTEROL: Final = Fraction("386.7")  # 38.67 mg/dL per mmol/L (total, HDL and LDL)
_TRIGLYCERIDES: Final = Fraction("885.7")  # 88.57 mg/dL per mmol/L
MOLAR_MASS_BY_LOINC: Final[Mapping[str, Fraction]] = MappingProxyType(
    {
        # Glucose: serum/plasma, blood, fasting; mass and substance concentrations.
        "2345-7": _GLUCOSE,
        "14749-6": _GLUCOSE,
        "2339-0": _GLUCOSE,
        "15074-8": _GLUCOSE,
        "1558-6": _GLUCOSE,
        "14771-0": _GLUCOSE,
        # Cholesterol: total, HDL, LDL (direct, calculated).
        "2093-3": _CHOLESTEROL,
        "14647-2": _CHOLESTEROL,
        "2085-9": _CHOLESTEROL,
        "14646-4": _CHOLESTEROL,
        "18262-6": _CHOLESTEROL,
        "13457-7": _CHOLESTEROL,
        "2089-1": _CHOLESTEROL,
        "22748-8": _CHOLESTEROL,
        "39469-6": _CHOLESTEROL,
        # Triglycerides.
        "2571-8": _TRIGLYCERIDES,
        "14927-8": _TRIGLYCERIDES,
    }
)
"""Grams per mole of the analyte a LOINC code measures: what converts its mass concentration
(mg/dL) to its substance concentration (mmol/L) and back. Keyed by the code the Observation
matched on, so only analytes listed here convert between the two."""

_FEATURE_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.\- ]{0,63}")
# FHIR's decimal, with an exponent of at most three digits (no clinical quantity needs more,
# and exact arithmetic on 1e999999999 would take forever).
_FHIR_DECIMAL: Final = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]{1,3})?")
_MAX_DECIMAL_LENGTH: Final = 64
_FHIR_DATE_TIME: Final = re.compile(
    r"(?P<year>\d{4})(-(?P<month>\d{2})(-(?P<day>\d{2})"
    r"(T(?P<hour>\d{2}):(?P<minute>\d{2})(:(?P<second>\d{2})(\.(?P<fraction>\d+))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_NEVER: Final = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Coding:
    """A code in a code system: ``Coding(LOINC, "2345-7")``, or a local ``system|code``."""

    system: str
    code: str

    def __post_init__(self) -> None:
        if not self.system or not self.code:
            raise ValueError("a coding needs a system and a code")


@dataclass(frozen=True)
class Feature:
    """One input of a model: what measures it (``codes``: any of them), the UCUM ``unit`` the
    model takes it in, the closed range ``[min_value, max_value]`` it accepts, and optionally
    its ``reference_value`` (the baseline contributions are measured against) and the
    ``molar_mass`` (g/mol) of its analyte, when the model's own definition gives one: it is
    used instead of :data:`MOLAR_MASS_BY_LOINC`, so that a model's card and its service
    convert alike."""

    name: str
    codes: tuple[Coding, ...]
    unit: str
    min_value: float
    max_value: float
    reference_value: float | None = None
    molar_mass: float | None = None

    def __post_init__(self) -> None:
        if not _FEATURE_NAME.fullmatch(self.name):
            raise ValueError(
                "a feature name is a letter then up to 63 letters, digits, spaces or _.-"
            )
        if not self.codes:
            raise ValueError(f"feature {self.name}: at least one coding")
        if not is_ucum(self.unit):
            raise ValueError(f"feature {self.name}: the unit is not a UCUM code")
        if not (math.isfinite(self.min_value) and math.isfinite(self.max_value)):
            raise ValueError(f"feature {self.name}: the range is finite")
        if self.min_value > self.max_value:
            raise ValueError(f"feature {self.name}: min_value is above max_value")
        reference = self.reference_value
        if reference is not None and not self.min_value <= reference <= self.max_value:
            raise ValueError(f"feature {self.name}: the reference value is outside the range")
        if self.molar_mass is not None and not (
            math.isfinite(self.molar_mass) and self.molar_mass > 0
        ):
            raise ValueError(f"feature {self.name}: a molar mass is a positive number")

    @classmethod
    def loinc(
        cls,
        name: str,
        *codes: str,
        unit: str,
        min_value: float,
        max_value: float,
        reference_value: float | None = None,
        molar_mass: float | None = None,
    ) -> Feature:
        """A feature measured by any of the LOINC ``codes``."""
        return cls(
            name,
            tuple(Coding(LOINC, code) for code in codes),
            unit,
            min_value,
            max_value,
            reference_value,
            molar_mass,
        )


class FeatureReason(StrEnum):
    """Why a feature has no usable value."""

    MISSING = "FEATURE_MISSING"
    UNIT = "FEATURE_UNIT"
    OUT_OF_RANGE = "FEATURE_OUT_OF_RANGE"


REASON_DESCRIPTIONS: Final[Mapping[FeatureReason, str]] = MappingProxyType(
    {
        FeatureReason.MISSING: (
            "no final, amended or corrected Observation with a value for this feature"
        ),
        FeatureReason.UNIT: (
            "the latest Observation's unit is not a UCUM unit convertible to the model's"
        ),
        FeatureReason.OUT_OF_RANGE: (
            "the latest Observation's value is outside the range the model accepts"
        ),
    }
)


@dataclass(frozen=True)
class FeatureProblem:
    """Why ``feature`` has no usable value; ``detail``, when given, is one more sentence
    naming codes and elements only (a derived feature says which of its sources failed)."""

    feature: str
    reason: FeatureReason
    detail: str = ""


class FeaturesUnusable(FailedPrecondition):
    """Some features have no usable value: FAILED_PRECONDITION (the record must change, not
    the request), one field violation per feature (field: the feature's name; description:
    its reason, then a sentence), and the ErrorInfo metadata ``feature_missing``,
    ``feature_unit``, ``feature_out_of_range``: the names of the features with that reason,
    comma-separated."""

    def __init__(self, problems: Sequence[FeatureProblem]) -> None:
        listed = ", ".join(f"{p.feature} ({p.reason})" for p in problems)
        metadata: dict[str, str] = {}
        for reason in FeatureReason:
            names = [p.feature for p in problems if p.reason is reason]
            if names:
                metadata[reason.lower()] = ",".join(names)
        super().__init__(
            f"the model's features are unusable: {listed}",
            reason=FEATURES_UNUSABLE,
            metadata=metadata,
        )
        self.problems = tuple(problems)
        self.violations = [
            FieldViolation(
                p.feature,
                f"{p.reason}: {REASON_DESCRIPTIONS[p.reason]}"
                + (f"; {p.detail}" if p.detail else ""),
            )
            for p in problems
        ]


@dataclass(frozen=True)
class ObservationRef:
    """The Observation version a feature was read from (what a RiskAssessment's ``basis``
    cites and the ledger commits to)."""

    id: str
    version_id: str | None
    resource_type: str = "Observation"

    @property
    def reference(self) -> str:
        """``Observation/<id>/_history/<version>`` (or without the version when it has none)."""
        base = f"{self.resource_type}/{self.id}"
        return f"{base}/_history/{self.version_id}" if self.version_id else base


@dataclass(frozen=True)
class FeatureValue:
    """A feature's value in the feature's unit, where it came from (``element``:
    ``valueQuantity`` or ``component[i].valueQuantity``) and the unit it was recorded in."""

    feature: Feature
    value: float
    source: ObservationRef
    element: str
    recorded_unit: str


@dataclass(frozen=True)
class FeatureVector:
    """The model's inputs, in the order of its features."""

    values: tuple[FeatureValue, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.feature.name for v in self.values)

    @property
    def basis(self) -> tuple[ObservationRef, ...]:
        """The Observations used, each once, in the order of the features they gave."""
        return tuple(dict.fromkeys(v.source for v in self.values))

    def as_array(self) -> NDArray[np.float32]:
        """The vector as the model takes it: float32, shape ``[n]``."""
        return np.array([v.value for v in self.values], dtype=np.float32)


def reference_vector(features: Sequence[Feature]) -> NDArray[np.float32]:
    """The features' reference values (float32, shape ``[n]``): the baseline of the model's
    contributions. ValueError naming the features that have none."""
    lacking = [f.name for f in features if f.reference_value is None]
    if lacking:
        raise ValueError(f"features without a reference value: {', '.join(lacking)}")
    return np.array([f.reference_value for f in features], dtype=np.float32)


@dataclass(frozen=True)
class _Candidate:
    order: tuple[datetime, datetime, datetime, int, str]
    source: ObservationRef
    element: str
    quantity: Mapping[str, Any]
    value: Fraction
    coding: Coding


def build_feature_vector(
    features: Sequence[Feature], observations: Iterable[Mapping[str, Any]]
) -> FeatureVector:
    """The value of each of ``features`` from the patient's ``observations`` (see the module
    documentation for which Observation is used), or :class:`FeaturesUnusable` listing every
    feature that has none. ValueError when two features share a name."""
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise ValueError("feature names must be unique")
    by_coding: dict[Coding, list[int]] = {}
    for index, feature in enumerate(features):
        for coding in dict.fromkeys(feature.codes):
            by_coding.setdefault(coding, []).append(index)
    latest: dict[int, _Candidate] = {}
    for observation in observations:
        for coding, candidate in _candidates(observation, by_coding):
            for index in by_coding[coding]:
                current = latest.get(index)
                if current is None or candidate.order > current.order:
                    latest[index] = candidate
    values: list[FeatureValue] = []
    problems: list[FeatureProblem] = []
    for index, feature in enumerate(features):
        found = latest.get(index)
        if found is None:
            problems.append(FeatureProblem(feature.name, FeatureReason.MISSING))
            continue
        value_or_reason = _value_in_feature_unit(feature, found)
        if isinstance(value_or_reason, FeatureReason):
            problems.append(FeatureProblem(feature.name, value_or_reason))
            continue
        value, recorded_unit = value_or_reason
        values.append(FeatureValue(feature, value, found.source, found.element, recorded_unit))
    if problems:
        raise FeaturesUnusable(problems)
    return FeatureVector(tuple(values))


def _value_in_feature_unit(
    feature: Feature, candidate: _Candidate
) -> tuple[float, str] | FeatureReason:
    unit = _ucum_code(candidate.quantity)
    if unit is None:
        return FeatureReason.UNIT
    if feature.molar_mass is not None:
        molar_mass: Fraction | None = Fraction(repr(feature.molar_mass))
    elif candidate.coding.system == LOINC:
        molar_mass = MOLAR_MASS_BY_LOINC.get(candidate.coding.code)
    else:
        molar_mass = None
    factor = conversion_factor(unit, feature.unit, molar_mass=molar_mass)
    if factor is None:
        return FeatureReason.UNIT
    value = float(candidate.value * factor)
    if not (math.isfinite(value) and feature.min_value <= value <= feature.max_value):
        return FeatureReason.OUT_OF_RANGE
    return value, unit


def _usable(
    observation: object,
) -> tuple[ObservationRef, tuple[datetime, datetime, datetime, int, str]] | None:
    """The Observation's version and its place in time (step 2's order), when it may be used
    at all: an Observation with an accepted status and an id."""
    if not isinstance(observation, Mapping) or observation.get("resourceType") != "Observation":
        return None
    status = observation.get("status")
    if not isinstance(status, str) or status not in ACCEPTED_STATUSES:
        return None
    resource_id = observation.get("id")
    if not isinstance(resource_id, str) or not resource_id:
        return None
    meta = _mapping(observation.get("meta"))
    version = meta.get("versionId")
    if not isinstance(version, str) or not version:
        version = None
    issued = _instant(observation.get("issued"))
    order = (
        clinical_time(observation) or issued or _NEVER,
        issued or _NEVER,
        _instant(meta.get("lastUpdated")) or _NEVER,
        int(version) if version is not None and version.isascii() and version.isdigit() else 0,
        resource_id,
    )
    return ObservationRef(resource_id, version), order


def latest_observation(
    observations: Iterable[Mapping[str, Any]], codes: Iterable[Coding], *, element: str
) -> tuple[Mapping[str, Any], ObservationRef] | None:
    """The latest usable Observation (an accepted status and an id; the order of step 2)
    whose ``code`` has one of ``codes`` and that has ``element`` at its top level (for values
    that are not quantities: ``valueCodeableConcept``), with its version; None when there is
    none. As for quantities, that latest one decides: the caller must not look further."""
    wanted = frozenset(codes)
    best: _Latest | None = None
    for observation in observations:
        usable = _usable(observation)
        if usable is None or element not in observation:
            continue
        if wanted.isdisjoint(_codings(observation.get("code"))):
            continue
        source, order = usable
        if best is None or order > best.order:
            best = _Latest(order, observation, source)
    return None if best is None else (best.observation, best.source)


@dataclass(frozen=True)
class _Latest:
    order: tuple[datetime, datetime, datetime, int, str]
    observation: Mapping[str, Any]
    source: ObservationRef


def _candidates(
    observation: Mapping[str, Any], by_coding: Mapping[Coding, list[int]]
) -> Iterator[tuple[Coding, _Candidate]]:
    usable = _usable(observation)
    if usable is None:
        return
    source, order = usable
    elements: list[tuple[str, Mapping[str, Any]]] = [("valueQuantity", observation)]
    components = observation.get("component")
    if isinstance(components, list):
        elements.extend(
            (f"component[{i}].valueQuantity", _mapping(c)) for i, c in enumerate(components)
        )
    for element, holder in elements:
        quantity = _mapping(holder.get("valueQuantity"))
        value = _quantity_value(quantity)
        if value is None:
            continue
        for coding in _codings(holder.get("code")):
            if coding in by_coding:
                yield coding, _Candidate(order, source, element, quantity, value, coding)


def _codings(concept: object) -> Iterator[Coding]:
    codings = _mapping(concept).get("coding")
    for coding in codings if isinstance(codings, list) else ():
        system, code = _mapping(coding).get("system"), _mapping(coding).get("code")
        if isinstance(system, str) and isinstance(code, str) and system and code:
            yield Coding(system, code)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _quantity_value(quantity: Mapping[str, Any]) -> Fraction | None:
    value = quantity.get("value")
    if "comparator" in quantity or isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = repr(value)  # the shortest decimal that reads back as this float: as written
    elif isinstance(value, int | Decimal):
        value = str(value)
    if not isinstance(value, str) or len(value) > _MAX_DECIMAL_LENGTH:
        return None
    return Fraction(value) if _FHIR_DECIMAL.fullmatch(value) else None


def _ucum_code(quantity: Mapping[str, Any]) -> str | None:
    code, unit = quantity.get("code"), quantity.get("unit")
    if quantity.get("system") == UCUM and isinstance(code, str) and code:
        return code
    if isinstance(unit, str) and is_ucum(unit):
        return unit
    return None


def clinical_time(observation: Mapping[str, Any]) -> datetime | None:
    """When the Observation was true (``effectiveDateTime``, ``effectiveInstant``,
    ``effectivePeriod.end``, else its start), in UTC; None when it says none."""
    period = _mapping(observation.get("effectivePeriod"))
    for value in (
        observation.get("effectiveDateTime"),
        observation.get("effectiveInstant"),
        period.get("end"),
        period.get("start"),
    ):
        instant = _instant(value)
        if instant is not None:
            return instant
    return None


def _instant(value: object) -> datetime | None:
    """A FHIR date, dateTime or instant as its first instant (UTC when it has no zone), or
    None for anything else."""
    if not isinstance(value, str):
        return None
    match = _FHIR_DATE_TIME.fullmatch(value)
    if match is None:
        return None
    part = match.groupdict()
    zone = part["zone"]
    try:
        tzinfo: timezone = UTC
        if zone is not None and zone != "Z":
            sign = -1 if zone[0] == "-" else 1
            tzinfo = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
        return datetime(
            int(part["year"]),
            int(part["month"] or 1),
            int(part["day"] or 1),
            int(part["hour"] or 0),
            int(part["minute"] or 0),
            int(part["second"] or 0),
            int((part["fraction"] or "0")[:6].ljust(6, "0")),
            tzinfo=tzinfo,
        ).astimezone(UTC)
    except (ValueError, OverflowError):  # month 13, 30 February, hour 25, year 0...
        return None
