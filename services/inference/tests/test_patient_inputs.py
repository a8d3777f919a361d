"""A patient's input row (medledger.inference.domain.patient_inputs): measured features as
features.build_feature_vector reads them, coded ones through the card's categories, and the
derivations clinicians accept (age, sex, mean arterial pressure, cholesterol/HDL ratio) only
where the record has no Observation at all; every problem at once, naming features and
sources, never a value or the patient."""

from __future__ import annotations

import copy
import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from medledger.common.errors import to_rpc_status
from medledger.inference.domain.features import (
    LOINC,
    UCUM,
    Coding,
    FeatureReason,
    FeaturesUnusable,
    ObservationRef,
)
from medledger.inference.domain.model_definition import ModelDefinition, parse_model_card
from medledger.inference.domain.patient_inputs import (
    AGE_FROM_BIRTH_DATE,
    MAP_FROM_SYSTOLIC_DIASTOLIC,
    RATIO_FROM_CHOLESTEROL_HDL,
    SEX_FROM_GENDER,
    PatientInputs,
    build_patient_inputs,
    needs_patient,
    search_codes,
)
from medledger.models.repository import build_models

PATIENT_ID = "0145cb62-daba-469f-a207-8056be5448d3"
SUBJECT = f"Patient/{PATIENT_ID}"
NOW = datetime(2026, 1, 2, 10, 0, tzinfo=UTC)
FAMILY, GIVEN = "Oyelaran-Whitcombe", "Marisol"
GENDER = "http://hl7.org/fhir/administrative-gender"


@pytest.fixture(scope="module")
def models() -> dict[str, ModelDefinition]:
    return {m.spec.name: parse_model_card(m.card) for m in build_models()}


@pytest.fixture(scope="module")
def diabetes(models: dict[str, ModelDefinition]) -> ModelDefinition:
    return models["diabetes-progression"]


def patient(**changes: Any) -> dict[str, Any]:
    """The Patient as the record returns it: with a name the errors must never show."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "meta": {"versionId": "3", "lastUpdated": "2025-12-01T08:00:00.000Z"},
        "name": [{"family": FAMILY, "given": [GIVEN]}],
        "gender": "female",
        "birthDate": "1961-08-08",
    }
    for key, value in changes.items():
        if value is None:
            resource.pop(key, None)
        else:
            resource[key] = value
    return resource


def quantity(value: Any, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def observation(
    resource_id: str,
    code: str,
    value: dict[str, Any] | None,
    *,
    effective: str = "2026-01-01T09:00:00Z",
    subject: str = SUBJECT,
    **more: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T10:00:00.000Z"},
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": effective,
        **more,
    }
    if value is not None:
        resource["valueQuantity"] = value
    return resource


def component(code: str, value: Any) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "valueQuantity": quantity(value, "mm[Hg]"),
    }


def blood_pressure(resource_id: str, systolic: Any, diastolic: Any, **more: Any) -> dict[str, Any]:
    panel = observation(resource_id, "85354-9", None, **more)
    panel["component"] = [component("8480-6", systolic), component("8462-4", diastolic)]
    return panel


def record() -> list[dict[str, Any]]:
    """What the demo seeds for a diabetes patient (carebundle: decimals as strings at times):
    no age, sex, mean pressure or ratio Observation."""
    return [
        observation("bmi", "39156-5", quantity(32.0, "kg/m2")),
        blood_pressure("bp", 119, 75),
        observation("chol", "2093-3", quantity("210", "mg/dL")),
        observation("hdl", "2085-9", quantity(41, "mg/dL")),
        observation("ldl", "13457-7", quantity(107, "mg/dL")),
        observation("tg", "2571-8", quantity(311, "mg/dL")),
        observation("glu", "2345-7", quantity(141, "mg/dL")),
        observation("hba1c", "4548-4", quantity(6.3, "%")),
    ]


def inputs(
    model: ModelDefinition,
    observations: list[dict[str, Any]],
    the_patient: dict[str, Any] | None = None,
    now: datetime = NOW,
) -> PatientInputs:
    return build_patient_inputs(
        model,
        patient_id=PATIENT_ID,
        patient=patient() if the_patient is None else the_patient,
        observations=observations,
        now=now,
    )


def refused(
    model: ModelDefinition,
    observations: list[dict[str, Any]],
    the_patient: dict[str, Any] | None = None,
    now: datetime = NOW,
) -> FeaturesUnusable:
    with pytest.raises(FeaturesUnusable) as failure:
        inputs(model, observations, the_patient, now)
    return failure.value


def reasons(error: FeaturesUnusable) -> dict[str, FeatureReason]:
    return {p.feature: p.reason for p in error.problems}


def obs(resource_id: str) -> ObservationRef:
    return ObservationRef(resource_id, "1")


# -- the demo's record -------------------------------------------------------------------------


def test_the_demo_record_gives_every_feature(diabetes: ModelDefinition) -> None:
    row = inputs(diabetes, record())
    values = {v.feature.name: v for v in row.values}
    assert {name: v.value for name, v in values.items()} == {
        "age": 64.0,  # born 1961-08-08, on 2026-01-02
        "sex": 1.0,  # female
        "bmi": 32.0,
        "bp": (119 + 2 * 75) / 3,
        "s1": 210.0,
        "s2": 107.0,
        "s3": 41.0,
        "s4": 210 / 41,
        "s5": 311.0,
        "s6": 141.0,
    }
    assert values["s5"].model_input == float(np.float32(math.log(311.0)))
    assert values["bp"].model_input == float(np.float32((119 + 2 * 75) / 3))
    assert row.row().dtype == np.float32
    assert row.row().tolist() == [v.model_input for v in row.values]
    assert row.subject == SUBJECT
    assert row.as_of == NOW


def test_each_value_cites_its_sources_and_derivation(diabetes: ModelDefinition) -> None:
    values = {v.feature.name: v for v in inputs(diabetes, record()).values}
    me = ObservationRef(PATIENT_ID, "3", "Patient")
    assert (values["age"].sources, values["age"].derivation) == ((me,), AGE_FROM_BIRTH_DATE)
    assert values["age"].elements == ("birthDate",)
    assert (values["sex"].sources, values["sex"].derivation) == ((me,), SEX_FROM_GENDER)
    assert values["sex"].category is not None
    assert values["sex"].category.coding == Coding(GENDER, "female")
    assert values["bp"].sources == (obs("bp"),)
    assert values["bp"].elements == ("component[0].valueQuantity", "component[1].valueQuantity")
    assert values["bp"].derivation is MAP_FROM_SYSTOLIC_DIASTOLIC
    assert values["s4"].sources == (obs("chol"), obs("hdl"))
    assert values["s4"].derivation is RATIO_FROM_CHOLESTEROL_HDL
    assert values["bmi"].derivation is None
    assert values["bmi"].sources == (obs("bmi"),)
    for derivation in (AGE_FROM_BIRTH_DATE, SEX_FROM_GENDER, MAP_FROM_SYSTOLIC_DIASTOLIC):
        assert derivation.citation


def test_the_basis_is_each_version_once_observations_then_the_patient(
    diabetes: ModelDefinition,
) -> None:
    basis = inputs(diabetes, record()).basis
    assert [ref.reference for ref in basis] == [
        "Observation/bmi/_history/1",
        "Observation/bp/_history/1",
        "Observation/chol/_history/1",
        "Observation/ldl/_history/1",
        "Observation/hdl/_history/1",
        "Observation/tg/_history/1",
        "Observation/glu/_history/1",
        f"Patient/{PATIENT_ID}/_history/3",
    ]


def test_what_predict_must_read(models: dict[str, ModelDefinition]) -> None:
    diabetes = models["diabetes-progression"]
    codes = {c.code for c in search_codes(diabetes) if c.system == LOINC}
    assert {"30525-0", "46098-0", "8478-0", "85354-9", "8480-6", "8462-4", "9830-1"} <= codes
    assert {"2093-3", "2085-9", "2571-8", "2345-7", "39156-5", "13457-7"} <= codes
    assert needs_patient(diabetes)
    cytology = models["breast-cancer-malignancy"]
    assert not needs_patient(cytology)
    assert search_codes(cytology) == tuple(f.code for f in cytology.features)


# -- measured values come first ----------------------------------------------------------------


def test_observations_of_the_derived_features_win(diabetes: ModelDefinition) -> None:
    coded_sex = observation("sex", "46098-0", None)
    coded_sex["valueCodeableConcept"] = {"coding": [{"system": GENDER, "code": "male"}]}
    observations = [
        *record(),
        observation("age", "30525-0", quantity(58, "a")),
        coded_sex,
        observation("map", "8478-0", quantity(101, "mm[Hg]")),
        observation("ratio", "9830-1", quantity(4.5, "{ratio}")),
    ]
    values = {v.feature.name: v for v in inputs(diabetes, observations).values}
    assert {n: values[n].value for n in ("age", "sex", "bp", "s4")} == {
        "age": 58.0,
        "sex": 2.0,
        "bp": 101.0,
        "s4": 4.5,
    }
    assert all(values[n].derivation is None for n in ("age", "sex", "bp", "s4"))
    assert values["sex"].sources == (obs("sex"),)
    assert values["sex"].elements == ("valueCodeableConcept",)
    # Without a Patient, nothing reads it.
    no_patient = build_patient_inputs(
        diabetes, patient_id=PATIENT_ID, patient=None, observations=observations, now=NOW
    )
    assert all(ref.resource_type == "Observation" for ref in no_patient.basis)


def test_an_unusable_observation_is_never_replaced_by_a_derivation(
    diabetes: ModelDefinition,
) -> None:
    coded_sex = observation("sex", "46098-0", None)
    coded_sex["valueCodeableConcept"] = {"coding": [{"system": GENDER, "code": "unknown"}]}
    observations = [
        *record(),
        observation("map", "8478-0", quantity(12, "kPa")),  # 90 mm[Hg], but not the latest
        observation("map-2", "8478-0", quantity(101, "%"), effective="2026-01-01T09:30:00Z"),
        coded_sex,
    ]
    error = refused(diabetes, observations)
    assert reasons(error) == {"sex": FeatureReason.OUT_OF_RANGE, "bp": FeatureReason.UNIT}
    assert "none of the model's categories" in error.problems[0].detail


# -- age ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "age"),
    [
        (datetime(2026, 8, 7, 23, 59, tzinfo=UTC), 64.0),
        (datetime(2026, 8, 8, 0, 0, tzinfo=UTC), 65.0),
        # 01:00 on the 8th in UTC+02:00 is still the 7th in UTC.
        (datetime(2026, 8, 8, 1, 0, tzinfo=timezone(timedelta(hours=2))), 64.0),
    ],
)
def test_age_is_completed_years_at_the_prediction_date(
    diabetes: ModelDefinition, now: datetime, age: float
) -> None:
    values = {v.feature.name: v.value for v in inputs(diabetes, record(), now=now).values}
    assert values["age"] == age


def test_a_leap_day_birthday_counts_from_the_first_of_march(diabetes: ModelDefinition) -> None:
    leapling = patient(birthDate="1964-02-29")
    on_28 = inputs(diabetes, record(), leapling, datetime(2026, 2, 28, 12, tzinfo=UTC))
    on_1 = inputs(diabetes, record(), leapling, datetime(2026, 3, 1, 12, tzinfo=UTC))
    assert (on_28.values[0].value, on_1.values[0].value) == (61.0, 62.0)


@pytest.mark.parametrize(
    ("birth_date", "reason", "detail"),
    [
        (None, FeatureReason.MISSING, "no Patient.birthDate either"),
        ("1961", FeatureReason.MISSING, "Patient.birthDate is not a full date"),
        ("1961-08", FeatureReason.MISSING, "Patient.birthDate is not a full date"),
        ("1961-02-30", FeatureReason.MISSING, "Patient.birthDate is not a full date"),
        ("2014-05-01", FeatureReason.OUT_OF_RANGE, "derived by age-from-birth-date"),
    ],
)
def test_an_unusable_birth_date(
    diabetes: ModelDefinition, birth_date: str | None, reason: FeatureReason, detail: str
) -> None:
    error = refused(diabetes, record(), patient(birthDate=birth_date))
    (problem,) = error.problems
    assert (problem.feature, problem.reason) == ("age", reason)
    assert detail in problem.detail
    assert "1961" not in str(error)
    assert "2014" not in str(error)


# -- sex ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gender", "reason"),
    [
        ("other", FeatureReason.OUT_OF_RANGE),
        ("unknown", FeatureReason.OUT_OF_RANGE),
        (None, FeatureReason.MISSING),
    ],
)
def test_a_gender_the_model_has_no_category_for(
    diabetes: ModelDefinition, gender: str | None, reason: FeatureReason
) -> None:
    error = refused(diabetes, record(), patient(gender=gender))
    (problem,) = error.problems
    assert (problem.feature, problem.reason) == ("sex", reason)
    assert "Patient.gender" in problem.detail
    assert "other" not in str(error.violations)


# -- mean arterial pressure ----------------------------------------------------------------------


def test_standalone_pressures_of_one_measurement(diabetes: ModelDefinition) -> None:
    observations = [o for o in record() if o["id"] != "bp"]
    observations += [
        observation(
            "sbp", "8480-6", quantity(141, "mm[Hg]"), effective="2026-01-01T10:00:00+01:00"
        ),
        observation("dbp", "8462-4", quantity(90, "mm[Hg]"), effective="2026-01-01T09:00:00Z"),
    ]
    values = {v.feature.name: v for v in inputs(diabetes, observations).values}
    assert values["bp"].value == (141 + 2 * 90) / 3
    assert values["bp"].sources == (obs("sbp"), obs("dbp"))


def test_pressures_from_two_measurements_are_not_mixed(diabetes: ModelDefinition) -> None:
    observations = [
        *record(),
        # A newer systolic alone: the latest systolic and diastolic are not one measurement.
        observation("sbp", "8480-6", quantity(150, "mm[Hg]"), effective="2026-01-01T12:00:00Z"),
    ]
    (problem,) = refused(diabetes, observations).problems
    assert (problem.feature, problem.reason) == ("bp", FeatureReason.MISSING)
    assert "not from one measurement" in problem.detail


def test_a_systolic_below_the_diastolic_is_refused(diabetes: ModelDefinition) -> None:
    observations = [o for o in record() if o["id"] != "bp"] + [blood_pressure("bp", 70, 90)]
    (problem,) = refused(diabetes, observations).problems
    assert (problem.feature, problem.reason) == ("bp", FeatureReason.OUT_OF_RANGE)
    assert "systolic pressure is below the diastolic" in problem.detail


def test_a_source_out_of_its_range_is_named(diabetes: ModelDefinition) -> None:
    observations = [o for o in record() if o["id"] != "bp"] + [blood_pressure("bp", 400, 90)]
    (problem,) = refused(diabetes, observations).problems
    assert (problem.feature, problem.reason) == ("bp", FeatureReason.OUT_OF_RANGE)
    assert "8480-6 is FEATURE_OUT_OF_RANGE" in problem.detail


# -- every problem at once -------------------------------------------------------------------------


def test_every_problem_at_once_with_the_sources_a_derivation_lacks(
    diabetes: ModelDefinition,
) -> None:
    observations = [o for o in record() if o["id"] not in {"hdl", "bp", "glu"}]
    observations.append(observation("tg-2", "2571-8", quantity(5, "mg/dL"), effective="2026-01-02"))
    error = refused(diabetes, observations, patient(gender="other", birthDate="1961"))
    assert reasons(error) == {
        "age": FeatureReason.MISSING,
        "sex": FeatureReason.OUT_OF_RANGE,
        "bp": FeatureReason.MISSING,
        "s3": FeatureReason.MISSING,
        "s4": FeatureReason.MISSING,
        "s5": FeatureReason.OUT_OF_RANGE,
        "s6": FeatureReason.MISSING,
    }
    by_feature = {p.feature: p for p in error.problems}
    assert by_feature["bp"].detail == (
        "no 8478-0 Observation, and its derivation mean-arterial-pressure from 8480-6 and "
        "8462-4 lacks a source: 8480-6 is FEATURE_MISSING, 8462-4 is FEATURE_MISSING"
    )
    assert "2085-9 is FEATURE_MISSING" in by_feature["s4"].detail
    assert "2093-3" not in by_feature["s4"].detail.split("lacks a source")[1]
    assert by_feature["s3"].detail == ""
    violations = {v.field: v.description for v in error.violations}
    assert violations["s4"].startswith("FEATURE_MISSING: no final, amended or corrected")
    assert "2085-9 is FEATURE_MISSING" in violations["s4"]
    assert error.metadata["feature_missing"] == "age,bp,s3,s4,s6"
    status = to_rpc_status(error, service="inference")
    # Neither the patient nor any value: features, codes and reasons only.
    text = json.dumps([str(error), [v.description for v in error.violations], str(status)])
    for secret in (FAMILY, GIVEN, PATIENT_ID, "1961", "311", "210", "5.0", "other"):
        assert secret not in text


def test_another_patients_observations_are_not_read(diabetes: ModelDefinition) -> None:
    others = [
        copy.deepcopy(o) | {"subject": {"reference": "Patient/someone-else"}} for o in record()
    ]
    error = refused(diabetes, others)
    assert set(reasons(error)) == {"bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"}


def test_the_cytology_model_reads_its_local_codes(models: dict[str, ModelDefinition]) -> None:
    cytology = models["breast-cancer-malignancy"]
    observations = [
        {
            **observation(f"fna-{f.index}", "x", None),
            "code": {"coding": [{"system": f.code.system, "code": f.code.code}]},
            "valueQuantity": {"value": f.feature.reference_value, "unit": f.unit},
        }
        for f in cytology.features
    ]
    row = build_patient_inputs(
        cytology, patient_id=PATIENT_ID, patient=None, observations=observations, now=NOW
    )
    # The card shows each reference value to 6 digits; its model input is the exact median.
    assert np.allclose(row.row(), cytology.reference_row(), rtol=1e-6, atol=0)
    assert len(row.basis) == 10


def test_bad_calls_are_refused(diabetes: ModelDefinition) -> None:
    with pytest.raises(ValueError, match="aware"):
        inputs(diabetes, record(), now=datetime(2026, 1, 2))
    with pytest.raises(ValueError, match="not the patient's"):
        build_patient_inputs(
            diabetes,
            patient_id="someone-else",
            patient=patient(),
            observations=record(),
            now=NOW,
        )
