"""A patient's model input row, and what each value was read or derived from.

:func:`build_patient_inputs` takes a :class:`~.model_definition.ModelDefinition`, the patient's
Patient resource and Observations (parsed JSON, as the record service returns them) and the
moment of the prediction, and gives each feature's value in its unit, the model's input
(after the feature's transform, float32) and its sources, as versioned references.

A measured feature is read as :func:`~.features.build_feature_vector` reads it (the latest
final, amended or corrected Observation with its code decides; UCUM conversions; the
plausible range). A coded feature (sex) is the latest such Observation's
``valueCodeableConcept``, mapped through the card's categories. When, and only when, a
feature has no Observation at all (``FEATURE_MISSING``), a :class:`Derivation` may stand in
for it, from data clinicians already accept as equivalent (:data:`DERIVATIONS`):

- **age** (LOINC 30525-0): completed years from ``Patient.birthDate`` (a full date) to the
  date of the prediction (in UTC);
- **sex** (LOINC 46098-0): ``Patient.gender`` (administrative-gender) through the card's
  categories;
- **mean arterial pressure** (LOINC 8478-0): (SBP + 2 DBP) / 3 from systolic 8480-6 and
  diastolic 8462-4 taken from one measurement (the components of one blood pressure panel
  85354-9, or standalone Observations with the same effective time);
- **total cholesterol / HDL ratio** (LOINC 9830-1): total cholesterol 2093-3 over HDL
  cholesterol 2085-9, the latest of each as the model's own cholesterol features read them
  (both in mg/dL), so the row is consistent.

A derived value cites its sources in the basis (the Observations; the Patient for age and
sex) and is range-checked like a measured one. An Observation that is present but unusable
(a unit that does not convert, a value out of range) is never replaced by a derivation: the
record must be corrected. Every problem of every feature is raised at once as one
:class:`~.features.FeaturesUnusable`; a derived feature whose sources fail says which (codes
and reasons only, never a value).

Only Observations whose ``subject`` is this patient are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import MappingProxyType
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from medledger.inference.domain.features import (
    LOINC,
    Coding,
    Feature,
    FeatureProblem,
    FeatureReason,
    FeaturesUnusable,
    FeatureValue,
    ObservationRef,
    build_feature_vector,
    clinical_time,
    latest_observation,
)
from medledger.inference.domain.model_definition import Category, ModelDefinition, ModelFeature

ADMINISTRATIVE_GENDER: Final = "http://hl7.org/fhir/administrative-gender"
AGE: Final = Coding(LOINC, "30525-0")
SEX: Final = Coding(LOINC, "46098-0")
MEAN_ARTERIAL_PRESSURE: Final = Coding(LOINC, "8478-0")
CHOLESTEROL_HDL_RATIO: Final = Coding(LOINC, "9830-1")
SYSTOLIC: Final = Coding(LOINC, "8480-6")
DIASTOLIC: Final = Coding(LOINC, "8462-4")
BLOOD_PRESSURE_PANEL: Final = Coding(LOINC, "85354-9")
TOTAL_CHOLESTEROL: Final = Coding(LOINC, "2093-3")
HDL_CHOLESTEROL: Final = Coding(LOINC, "2085-9")
CODED_VALUE: Final = "valueCodeableConcept"

_FULL_DATE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


@dataclass(frozen=True)
class Derivation:
    """How a feature is computed when the record has no Observation of it: ``formula`` in
    words, the ``sources`` it reads and a ``citation`` a clinician can check."""

    id: str
    code: Coding
    formula: str
    sources: tuple[str, ...]
    citation: str
    reads_patient: bool = False


AGE_FROM_BIRTH_DATE: Final = Derivation(
    id="age-from-birth-date",
    code=AGE,
    formula="completed years from Patient.birthDate to the date of the prediction (UTC)",
    sources=("Patient.birthDate",),
    citation="LOINC 30525-0 Age; HL7 FHIR R4 Patient.birthDate",
    reads_patient=True,
)
SEX_FROM_GENDER: Final = Derivation(
    id="sex-from-administrative-gender",
    code=SEX,
    formula="Patient.gender (administrative-gender) through the model card's categories",
    sources=("Patient.gender",),
    citation="LOINC 46098-0 Sex; HL7 FHIR R4 Patient.gender, value set administrative-gender",
    reads_patient=True,
)
MAP_FROM_SYSTOLIC_DIASTOLIC: Final = Derivation(
    id="mean-arterial-pressure",
    code=MEAN_ARTERIAL_PRESSURE,
    formula="(SBP + 2 DBP) / 3 from systolic 8480-6 and diastolic 8462-4 of one measurement",
    sources=("8480-6", "8462-4"),
    citation=(
        "LOINC 8478-0 Mean blood pressure; MAP = DBP + (SBP - DBP) / 3: DeMers D, Wachs D. "
        "Physiology, Mean Arterial Pressure. StatPearls (NCBI Bookshelf NBK538226)"
    ),
)
RATIO_FROM_CHOLESTEROL_HDL: Final = Derivation(
    id="cholesterol-hdl-ratio",
    code=CHOLESTEROL_HDL_RATIO,
    formula="total cholesterol 2093-3 / HDL cholesterol 2085-9, both in mg/dL",
    sources=("2093-3", "2085-9"),
    citation="LOINC 9830-1 Cholesterol.total/Cholesterol in HDL [Mass Ratio] in Serum or Plasma",
)
DERIVATIONS: Final[Mapping[Coding, Derivation]] = MappingProxyType(
    {
        d.code: d
        for d in (
            AGE_FROM_BIRTH_DATE,
            SEX_FROM_GENDER,
            MAP_FROM_SYSTOLIC_DIASTOLIC,
            RATIO_FROM_CHOLESTEROL_HDL,
        )
    }
)
"""The derivations, by the code of the feature each stands in for."""

# The sources of the derived features, when the model itself has no feature of that code
# (plausible values: a source outside them is refused like any feature out of range).
_SOURCE_FEATURES: Final[Mapping[Coding, Feature]] = MappingProxyType(
    {
        SYSTOLIC: Feature("systolic blood pressure", (SYSTOLIC,), "mm[Hg]", 40, 300),
        DIASTOLIC: Feature("diastolic blood pressure", (DIASTOLIC,), "mm[Hg]", 20, 200),
        TOTAL_CHOLESTEROL: Feature(
            "total cholesterol", (TOTAL_CHOLESTEROL,), "mg/dL", 50, 600, molar_mass=386.65
        ),
        HDL_CHOLESTEROL: Feature(
            "HDL cholesterol", (HDL_CHOLESTEROL,), "mg/dL", 5, 200, molar_mass=386.65
        ),
    }
)


@dataclass(frozen=True)
class InputValue:
    """One feature's value: ``value`` in the feature's unit before the transform (a coded
    feature: its category's number, ``category`` the code), ``model_input`` as the model takes
    it (float32), the versions it came from (``sources``, with the ``elements`` read in them)
    and the ``derivation`` used, if any."""

    feature: ModelFeature
    value: float
    model_input: float
    sources: tuple[ObservationRef, ...]
    elements: tuple[str, ...]
    derivation: Derivation | None = None
    category: Category | None = None


@dataclass(frozen=True)
class PatientInputs:
    """The patient's row for the model, at ``as_of``."""

    patient_id: str
    as_of: datetime
    values: tuple[InputValue, ...]

    @property
    def subject(self) -> str:
        return f"Patient/{self.patient_id}"

    def row(self) -> NDArray[np.float32]:
        """The model's inputs (float32, ``[n]``), in the features' order."""
        return np.array([v.model_input for v in self.values], dtype=np.float32)

    @property
    def basis(self) -> tuple[ObservationRef, ...]:
        """Every version used, once: the Observations in the order of the features they
        gave, then the Patient when a derivation read it."""
        sources = [s for v in self.values for s in v.sources]
        observations = [s for s in sources if s.resource_type != "Patient"]
        patients = [s for s in sources if s.resource_type == "Patient"]
        return tuple(dict.fromkeys([*observations, *patients]))


def search_codes(model: ModelDefinition) -> tuple[Coding, ...]:
    """The Observation codes Predict must read for ``model``: its features' and those of the
    derivations' sources (the blood pressure panel included)."""
    codes: list[Coding] = []
    for feature in model.features:
        codes.extend(feature.feature.codes)  # any of them measures the feature
        derivation = DERIVATIONS.get(feature.code)
        if derivation is MAP_FROM_SYSTOLIC_DIASTOLIC:
            codes.extend((BLOOD_PRESSURE_PANEL, SYSTOLIC, DIASTOLIC))
        elif derivation is RATIO_FROM_CHOLESTEROL_HDL:
            codes.extend((TOTAL_CHOLESTEROL, HDL_CHOLESTEROL))
    return tuple(dict.fromkeys(codes))


def needs_patient(model: ModelDefinition) -> bool:
    """Whether a derivation of ``model`` may read the Patient resource (age, sex)."""
    return any(
        (d := DERIVATIONS.get(f.code)) is not None and d.reads_patient for f in model.features
    )


def build_patient_inputs(
    model: ModelDefinition,
    *,
    patient_id: str,
    patient: Mapping[str, Any] | None,
    observations: Iterable[Mapping[str, Any]],
    now: datetime | None = None,
) -> PatientInputs:
    """The row for ``model`` from the record of patient ``patient_id`` at ``now`` (an aware
    datetime; the current time by default), or :class:`FeaturesUnusable` naming every feature
    without a usable value. ``patient`` is that patient's Patient resource (None when not
    read: age and sex then need their Observations). ValueError when ``patient`` is not
    that Patient, or ``now`` is naive."""
    when = datetime.now(UTC) if now is None else now
    if when.tzinfo is None:
        raise ValueError("the time of a prediction is an aware datetime")
    if patient is not None and (
        patient.get("resourceType") != "Patient" or patient.get("id") != patient_id
    ):
        raise ValueError("the Patient resource given is not the patient's")
    subject = f"Patient/{patient_id}"
    own = [o for o in observations if _subject_of(o) == subject]
    reader = _Reader(model, patient, own, when.astimezone(UTC))
    values: list[InputValue] = []
    problems: list[FeatureProblem] = []
    for feature in model.features:
        result = reader.read(feature)
        if isinstance(result, FeatureProblem):
            problems.append(result)
        else:
            values.append(result)
    if problems:
        raise FeaturesUnusable(problems)
    return PatientInputs(patient_id, when, tuple(values))


def _subject_of(observation: object) -> str | None:
    if not isinstance(observation, Mapping):
        return None
    subject = observation.get("subject")
    reference = subject.get("reference") if isinstance(subject, Mapping) else None
    return reference if isinstance(reference, str) else None


def _measured(
    feature: Feature, observations: Sequence[Mapping[str, Any]]
) -> FeatureValue | FeatureProblem:
    """One feature read as build_feature_vector reads it, or its problem."""
    try:
        (value,) = build_feature_vector([feature], observations).values
    except FeaturesUnusable as unusable:
        (problem,) = unusable.problems
        return problem
    return value


class _Reader:
    def __init__(
        self,
        model: ModelDefinition,
        patient: Mapping[str, Any] | None,
        observations: Sequence[Mapping[str, Any]],
        now: datetime,
    ) -> None:
        self._model = model
        self._patient = patient
        self._observations = observations
        self._now = now
        self._derive: Mapping[Derivation, Callable[[ModelFeature], InputValue | FeatureProblem]]
        self._derive = {
            AGE_FROM_BIRTH_DATE: self._age,
            SEX_FROM_GENDER: self._sex,
            MAP_FROM_SYSTOLIC_DIASTOLIC: self._mean_arterial_pressure,
            RATIO_FROM_CHOLESTEROL_HDL: self._cholesterol_ratio,
        }

    def read(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        found = self._coded(feature) if feature.is_coded else self._quantity(feature)
        if not (isinstance(found, FeatureProblem) and found.reason is FeatureReason.MISSING):
            return found
        derivation = DERIVATIONS.get(feature.code)
        if derivation is None:
            return found
        return self._derive[derivation](feature)

    # -- from Observations ---------------------------------------------------------------------

    def _quantity(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        found = _measured(feature.feature, self._observations)
        if isinstance(found, FeatureProblem):
            return found
        return self._value(feature, found.value, (found.source,), (found.element,))

    def _coded(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        latest = latest_observation(self._observations, feature.feature.codes, element=CODED_VALUE)
        if latest is None:
            return FeatureProblem(feature.name, FeatureReason.MISSING)
        observation, source = latest
        concept = observation.get(CODED_VALUE)
        codings = concept.get("coding") if isinstance(concept, Mapping) else None
        for coding in codings if isinstance(codings, list) else []:
            system = coding.get("system") if isinstance(coding, Mapping) else None
            code = coding.get("code") if isinstance(coding, Mapping) else None
            if isinstance(system, str) and isinstance(code, str) and system and code:
                category = feature.category(Coding(system, code))
                if category is not None:
                    return self._category(feature, category, source, CODED_VALUE, None)
        return FeatureProblem(
            feature.name,
            FeatureReason.OUT_OF_RANGE,
            f"the latest {feature.code.code} Observation's code is none of the model's categories",
        )

    # -- derivations ---------------------------------------------------------------------------

    def _patient_ref(self) -> ObservationRef | None:
        if self._patient is None:
            return None
        meta = self._patient.get("meta")
        version = meta.get("versionId") if isinstance(meta, Mapping) else None
        return ObservationRef(
            str(self._patient["id"]),
            version if isinstance(version, str) and version else None,
            "Patient",
        )

    def _age(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        derivation = AGE_FROM_BIRTH_DATE
        source = self._patient_ref()
        birth_date = self._patient.get("birthDate") if self._patient is not None else None
        if source is None or birth_date is None:
            return self._missing(feature, derivation, "no Patient.birthDate either")
        born = _full_date(birth_date)
        if born is None:
            return self._missing(feature, derivation, "Patient.birthDate is not a full date")
        today = self._now.date()
        years = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
        return self._ranged(feature, float(years), (source,), ("birthDate",), derivation)

    def _sex(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        derivation = SEX_FROM_GENDER
        source = self._patient_ref()
        gender = self._patient.get("gender") if self._patient is not None else None
        if source is None or not isinstance(gender, str) or not gender:
            return self._missing(feature, derivation, "no Patient.gender either")
        category = feature.category(Coding(ADMINISTRATIVE_GENDER, gender))
        if category is None:
            return FeatureProblem(
                feature.name,
                FeatureReason.OUT_OF_RANGE,
                f"derived by {derivation.id}: Patient.gender is none of the model's categories",
            )
        return self._category(feature, category, source, "gender", derivation)

    def _mean_arterial_pressure(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        derivation = MAP_FROM_SYSTOLIC_DIASTOLIC
        sources = self._sources(feature, derivation, (SYSTOLIC, DIASTOLIC))
        if isinstance(sources, FeatureProblem):
            return sources
        systolic, diastolic = sources
        if systolic.source != diastolic.source and not self._one_measurement(
            systolic.source, diastolic.source
        ):
            return self._missing(
                feature,
                derivation,
                "the latest 8480-6 and 8462-4 are not from one measurement",
            )
        if systolic.value < diastolic.value:
            return FeatureProblem(
                feature.name,
                FeatureReason.OUT_OF_RANGE,
                f"derived by {derivation.id}: the systolic pressure is below the diastolic",
            )
        value = (systolic.value + 2 * diastolic.value) / 3
        return self._ranged(
            feature,
            value,
            (systolic.source, diastolic.source),
            (systolic.element, diastolic.element),
            derivation,
        )

    def _cholesterol_ratio(self, feature: ModelFeature) -> InputValue | FeatureProblem:
        derivation = RATIO_FROM_CHOLESTEROL_HDL
        sources = self._sources(feature, derivation, (TOTAL_CHOLESTEROL, HDL_CHOLESTEROL))
        if isinstance(sources, FeatureProblem):
            return sources
        total, hdl = sources
        return self._ranged(
            feature,
            total.value / hdl.value,
            (total.source, hdl.source),
            (total.element, hdl.element),
            derivation,
        )

    def _sources(
        self, feature: ModelFeature, derivation: Derivation, codes: tuple[Coding, Coding]
    ) -> tuple[FeatureValue, FeatureValue] | FeatureProblem:
        """The derivation's two sources in mg/dL or mm[Hg], read as the model's own feature
        of that code reads them (else with :data:`_SOURCE_FEATURES`' definition)."""
        found: list[FeatureValue] = []
        failed: list[FeatureProblem] = []
        for code in codes:
            own = next((f.feature for f in self._model.features if f.code == code), None)
            value = _measured(own or _SOURCE_FEATURES[code], self._observations)
            if isinstance(value, FeatureProblem):
                failed.append(FeatureProblem(code.code, value.reason))
            else:
                found.append(value)
        if failed:
            reason = (
                FeatureReason.MISSING
                if any(p.reason is FeatureReason.MISSING for p in failed)
                else failed[0].reason
            )
            unusable = ", ".join(f"{p.feature} is {p.reason}" for p in failed)
            return FeatureProblem(
                feature.name,
                reason,
                f"no {feature.code.code} Observation, and its derivation {derivation.id} "
                f"from {' and '.join(derivation.sources)} lacks a source: {unusable}",
            )
        return found[0], found[1]

    def _one_measurement(self, first: ObservationRef, second: ObservationRef) -> bool:
        times = [self._time_of(first), self._time_of(second)]
        return times[0] is not None and times[0] == times[1]

    def _time_of(self, source: ObservationRef) -> datetime | None:
        for observation in self._observations:
            meta = observation.get("meta")
            version = meta.get("versionId") if isinstance(meta, Mapping) else None
            if observation.get("id") == source.id and (version or None) == source.version_id:
                return clinical_time(observation)
        return None

    # -- values --------------------------------------------------------------------------------

    def _missing(self, feature: ModelFeature, derivation: Derivation, why: str) -> FeatureProblem:
        return FeatureProblem(
            feature.name,
            FeatureReason.MISSING,
            f"no {feature.code.code} Observation, and its derivation {derivation.id}: {why}",
        )

    def _ranged(
        self,
        feature: ModelFeature,
        value: float,
        sources: tuple[ObservationRef, ...],
        elements: tuple[str, ...],
        derivation: Derivation,
    ) -> InputValue | FeatureProblem:
        accepted = feature.feature
        if not (math.isfinite(value) and accepted.min_value <= value <= accepted.max_value):
            return FeatureProblem(
                feature.name, FeatureReason.OUT_OF_RANGE, f"derived by {derivation.id}"
            )
        return self._value(feature, value, sources, elements, derivation)

    def _value(
        self,
        feature: ModelFeature,
        value: float,
        sources: tuple[ObservationRef, ...],
        elements: tuple[str, ...],
        derivation: Derivation | None = None,
    ) -> InputValue:
        return InputValue(
            feature=feature,
            value=value,
            model_input=feature.model_input(value),
            sources=tuple(dict.fromkeys(sources)),
            elements=elements,
            derivation=derivation,
        )

    def _category(
        self,
        feature: ModelFeature,
        category: Category,
        source: ObservationRef,
        element: str,
        derivation: Derivation | None,
    ) -> InputValue:
        return InputValue(
            feature=feature,
            value=category.model_input,
            model_input=category.model_input,
            sources=(source,),
            elements=(element,),
            derivation=derivation,
            category=category,
        )


def _full_date(value: object) -> date | None:
    match = _FULL_DATE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None
