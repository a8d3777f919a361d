"""Feature vectors from FHIR R4 Observations (medledger.inference.domain.features): the latest
usable Observation per feature, unit conversions, and every problem reported at once."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.common.errors import FailedPrecondition, to_rpc_status
from medledger.inference.domain.features import (
    ACCEPTED_STATUSES,
    FEATURES_UNUSABLE,
    LOINC,
    UCUM,
    Coding,
    Feature,
    FeatureReason,
    FeaturesUnusable,
    ObservationRef,
    build_feature_vector,
    reference_vector,
)

PATIENT = "Patient/0145cb62-daba-469f-a207-8056be5448d3"
LOCAL_SYSTEM = "https://hospital-a.example/fhir/CodeSystem/cytology"

FEATURES = (
    Feature.loinc("bmi", "39156-5", unit="kg/m2", min_value=10, max_value=80, reference_value=27),
    Feature.loinc(
        "systolic_bp", "8480-6", unit="mm[Hg]", min_value=60, max_value=260, reference_value=120
    ),
    Feature.loinc("total_cholesterol", "2093-3", unit="mg/dL", min_value=50, max_value=500),
    Feature.loinc("hdl", "2085-9", unit="mg/dL", min_value=10, max_value=150),
    Feature.loinc("ldl", "18262-6", "13457-7", unit="mg/dL", min_value=10, max_value=400),
    Feature.loinc("triglycerides", "2571-8", unit="mg/dL", min_value=20, max_value=2000),
    Feature.loinc("glucose", "2345-7", unit="mg/dL", min_value=20, max_value=600),
)


def quantity(value: Any, code: str | None, *, unit: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "unit": unit if unit is not None else code}
    if code is not None:
        q |= {"system": UCUM, "code": code}
    return q


def observation(
    resource_id: str,
    loinc: str,
    value_quantity: dict[str, Any] | None,
    *,
    status: str = "final",
    effective: str | None = "2026-01-01T09:00:00Z",
    version: str = "1",
    last_updated: str = "2026-01-02T10:00:00.000Z",
    system: str = LOINC,
    **more: Any,
) -> dict[str, Any]:
    """An Observation as the record service returns it (its meta, the client's JSON)."""
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": resource_id,
        "meta": {"versionId": version, "lastUpdated": last_updated},
        "status": status,
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": system, "code": loinc}]},
        "subject": {"reference": PATIENT},
        **more,
    }
    if effective is not None:
        resource["effectiveDateTime"] = effective
    if value_quantity is not None:
        resource["valueQuantity"] = value_quantity
    return resource


def blood_pressure(resource_id: str, systolic: Any, diastolic: Any, **more: Any) -> dict[str, Any]:
    """The vital-signs panel 85354-9: systolic and diastolic are components."""
    panel = observation(resource_id, "85354-9", None, **more)
    panel["component"] = [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": quantity(systolic, "mm[Hg]", unit="mmHg"),
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
            "valueQuantity": quantity(diastolic, "mm[Hg]", unit="mmHg"),
        },
    ]
    return panel


def complete_record() -> list[dict[str, Any]]:
    """What the demo seeds (carebundle writes decimals as strings), plus unrelated resources."""
    return [
        observation("bmi-1", "39156-5", quantity("32.0", "kg/m2")),
        blood_pressure("bp-1", "141", "88"),
        observation("chol-1", "2093-3", quantity("212", "mg/dL")),
        observation("hdl-1", "2085-9", quantity("38", "mg/dL")),
        observation("ldl-1", "13457-7", quantity("107", "mg/dL")),
        observation("tg-1", "2571-8", quantity("311", "mg/dL")),
        observation("glu-1", "2345-7", quantity("141", "mg/dL")),
        observation("hba1c-1", "4548-4", quantity("7.1", "%")),
        {"resourceType": "Condition", "id": "c1", "subject": {"reference": PATIENT}},
    ]


def problems_of(error: FeaturesUnusable) -> dict[str, FeatureReason]:
    return {p.feature: p.reason for p in error.problems}


def test_a_complete_record_gives_the_vector_in_feature_order_with_its_sources() -> None:
    vector = build_feature_vector(FEATURES, complete_record())
    assert vector.names == tuple(f.name for f in FEATURES)
    assert [v.value for v in vector.values] == [32.0, 141.0, 212.0, 38.0, 107.0, 311.0, 141.0]
    array = vector.as_array()
    assert array.dtype == np.float32
    assert array.tolist() == [32.0, 141.0, 212.0, 38.0, 107.0, 311.0, 141.0]
    systolic = vector.values[1]
    assert systolic.source == ObservationRef("bp-1", "1")
    assert systolic.element == "component[0].valueQuantity"
    assert systolic.recorded_unit == "mm[Hg]"
    assert vector.values[0].element == "valueQuantity"
    assert [ref.reference for ref in vector.basis] == [
        "Observation/bmi-1/_history/1",
        "Observation/bp-1/_history/1",
        "Observation/chol-1/_history/1",
        "Observation/hdl-1/_history/1",
        "Observation/ldl-1/_history/1",
        "Observation/tg-1/_history/1",
        "Observation/glu-1/_history/1",
    ]


def test_json_numbers_decimals_and_strings_are_read_alike() -> None:
    as_text = json.dumps(
        [observation("glu-1", "2345-7", quantity(141.5, "mg/dL"))], separators=(",", ":")
    )
    for observations in (
        json.loads(as_text),
        json.loads(as_text, parse_float=Decimal),
        [observation("glu-1", "2345-7", quantity("141.5", "mg/dL"))],
        [observation("glu-1", "2345-7", quantity("1.415e2", "mg/dL"))],
    ):
        vector = build_feature_vector(FEATURES[-1:], observations)
        assert vector.values[0].value == 141.5


@pytest.mark.parametrize(
    ("mmol_per_litre", "mg_per_decilitre"),
    [("5.5", 99.088), ("7.0", 126.112), ("3.9", 70.2624), ("11.1", 199.9776), ("0.3", 5.4048)],
)
def test_glucose_in_mmol_per_litre_converts_exactly(
    mmol_per_litre: str, mg_per_decilitre: float
) -> None:
    glucose = Feature.loinc("glucose", "2345-7", unit="mg/dL", min_value=0, max_value=600)
    for value in (mmol_per_litre, float(mmol_per_litre)):
        vector = build_feature_vector(
            [glucose], [observation("glu-1", "2345-7", quantity(value, "mmol/L"))]
        )
        # One rounding, of the exact decimal product: the float nearest to 5.5 * 18.016.
        assert vector.values[0].value == mg_per_decilitre
        assert vector.values[0].recorded_unit == "mmol/L"


def test_a_model_in_mmol_per_litre_reads_mg_per_decilitre() -> None:
    glucose = Feature.loinc("glucose", "2345-7", unit="mmol/L", min_value=1, max_value=40)
    vector = build_feature_vector(
        [glucose], [observation("glu-1", "2345-7", quantity("99.088", "mg/dL"))]
    )
    assert vector.values[0].value == 5.5


@pytest.mark.parametrize(
    ("loinc", "mmol", "expected"),
    [
        ("2093-3", "5.2", 201.084),  # total cholesterol, 38.67
        ("2085-9", "1.3", 50.271),  # HDL
        ("13457-7", "2.6", 100.542),  # LDL (calculated)
        ("18262-6", "2.6", 100.542),  # LDL (direct)
        ("2571-8", "1.7", 150.569),  # triglycerides, 88.57
    ],
)
def test_lipids_in_mmol_per_litre_convert_by_their_own_factor(
    loinc: str, mmol: str, expected: float
) -> None:
    lipid = Feature.loinc("lipid", loinc, unit="mg/dL", min_value=0, max_value=2000)
    vector = build_feature_vector([lipid], [observation("x-1", loinc, quantity(mmol, "mmol/L"))])
    assert vector.values[0].value == expected


def test_ucum_scale_conversions_and_spellings() -> None:
    observations = [
        observation("glu-1", "2345-7", quantity("0.99", "g/L")),
        observation("bmi-1", "39156-5", quantity("31.25", "kg.m-2")),
        observation("chol-1", "2093-3", quantity("2120", "mg/L")),
    ]
    features = [FEATURES[6], FEATURES[0], FEATURES[2]]
    assert [v.value for v in build_feature_vector(features, observations).values] == [
        99.0,
        31.25,
        212.0,
    ]


def test_blood_pressure_in_kilopascal_converts() -> None:
    vector = build_feature_vector(
        [FEATURES[1]], [observation("bp-sys", "8480-6", quantity("16", "kPa"))]
    )
    assert vector.values[0].value == pytest.approx(16 / 0.133322, rel=1e-15)


def test_unit_text_counts_only_when_it_is_a_ucum_code() -> None:
    glucose = FEATURES[6]
    text_only = observation("glu-1", "2345-7", quantity("5.5", None, unit="mmol/L"))
    assert build_feature_vector([glucose], [text_only]).values[0].value == 99.088
    # The UCUM code wins over a text that says otherwise.
    coded = observation("glu-2", "2345-7", quantity("99", "mg/dL", unit="mmol/L"))
    assert build_feature_vector([glucose], [coded]).values[0].value == 99.0
    # A code of another system is no UCUM code; the text is used when it is one.
    local = observation(
        "glu-3",
        "2345-7",
        {"value": 99, "unit": "mg/dL", "system": "urn:lab:units", "code": "MGDL"},
    )
    assert build_feature_vector([glucose], [local]).values[0].value == 99.0
    # "mmHg" is what a person writes, not UCUM ("mm[Hg]"), and there is no code.
    systolic = observation("bp-1", "8480-6", quantity("120", None, unit="mmHg"))
    with pytest.raises(FeaturesUnusable) as raised:
        build_feature_vector([FEATURES[1]], [systolic])
    assert problems_of(raised.value) == {"systolic_bp": FeatureReason.UNIT}


def test_a_newer_amended_version_wins() -> None:
    first = observation(
        "glu-1", "2345-7", quantity("110", "mg/dL"), last_updated="2026-01-01T12:00:00Z"
    )
    amended = observation(
        "glu-1",
        "2345-7",
        quantity("130", "mg/dL"),
        status="amended",
        version="2",
        last_updated="2026-01-03T08:00:00Z",
    )
    for observations in ([first, amended], [amended, first]):
        value = build_feature_vector([FEATURES[6]], observations).values[0]
        assert value.value == 130.0
        assert value.source == ObservationRef("glu-1", "2")


def test_a_correction_issued_later_for_the_same_specimen_wins() -> None:
    original = observation(
        "glu-1", "2345-7", quantity("110", "mg/dL"), issued="2026-01-01T10:00:00Z"
    )
    corrected = observation(
        "glu-2",
        "2345-7",
        quantity("101", "mg/dL"),
        status="corrected",
        issued="2026-01-01T15:00:00Z",
        last_updated="2025-12-31T00:00:00Z",  # written earlier, issued later: issued decides
    )
    for observations in ([original, corrected], [corrected, original]):
        assert build_feature_vector([FEATURES[6]], observations).values[0].value == 101.0


def test_the_latest_measurement_wins_whatever_the_input_order() -> None:
    older = observation("glu-old", "2345-7", quantity("180", "mg/dL"), effective="2025-06-01")
    newer = observation(
        "glu-new",
        "2345-7",
        quantity("6.0", "mmol/L"),
        effective="2026-02-01T07:30:00+01:00",
        last_updated="2026-01-01T00:00:00Z",
    )
    for observations in ([older, newer], [newer, older]):
        value = build_feature_vector([FEATURES[6]], observations).values[0]
        assert value.source.id == "glu-new"
        assert value.value == 108.096


def test_time_zones_partial_dates_and_periods_order_measurements() -> None:
    glucose = FEATURES[6]
    # 09:00+02:00 is 07:00Z: earlier than 08:00Z.
    east = observation(
        "a", "2345-7", quantity("100", "mg/dL"), effective="2026-01-01T09:00:00+02:00"
    )
    utc = observation("b", "2345-7", quantity("120", "mg/dL"), effective="2026-01-01T08:00:00Z")
    assert build_feature_vector([glucose], [utc, east]).values[0].source.id == "b"
    # A partial date is its first instant.
    month = observation("c", "2345-7", quantity("100", "mg/dL"), effective="2026-03")
    day = observation("d", "2345-7", quantity("120", "mg/dL"), effective="2026-03-01T00:00:01Z")
    assert build_feature_vector([glucose], [day, month]).values[0].source.id == "d"
    # A period counts by its end; no effective time falls back to issued.
    period = observation(
        "e",
        "2345-7",
        quantity("100", "mg/dL"),
        effective=None,
        effectivePeriod={"start": "2026-04-01T00:00:00Z", "end": "2026-04-02T00:00:00Z"},
    )
    issued = observation(
        "f", "2345-7", quantity("120", "mg/dL"), effective=None, issued="2026-04-01T12:00:00Z"
    )
    assert build_feature_vector([glucose], [issued, period]).values[0].source.id == "e"


@pytest.mark.parametrize(
    "status", sorted({"registered", "preliminary", "cancelled", "entered-in-error", "unknown"})
)
def test_only_final_amended_and_corrected_count(status: str) -> None:
    assert {"final", "amended", "corrected"} == ACCEPTED_STATUSES
    kept = observation("glu-1", "2345-7", quantity("110", "mg/dL"), effective="2026-01-01")
    newer = observation(
        "glu-2", "2345-7", quantity("400", "mg/dL"), status=status, effective="2026-02-01"
    )
    value = build_feature_vector([FEATURES[6]], [kept, newer]).values[0]
    assert (value.source.id, value.value) == ("glu-1", 110.0)
    with pytest.raises(FeaturesUnusable) as raised:
        build_feature_vector([FEATURES[6]], [newer])
    assert problems_of(raised.value) == {"glucose": FeatureReason.MISSING}


def test_values_that_are_not_measurements_do_not_count() -> None:
    kept = observation("glu-1", "2345-7", quantity("110", "mg/dL"), effective="2026-01-01")
    later = [
        observation(
            "less-than",
            "2345-7",
            quantity("20", "mg/dL") | {"comparator": "<"},
            effective="2026-02",
        ),
        observation(
            "absent",
            "2345-7",
            None,
            effective="2026-03",
            dataAbsentReason={"coding": [{"code": "not-performed"}]},
        ),
        observation("text", "2345-7", None, effective="2026-04", valueString="high"),
        observation("bool", "2345-7", quantity(True, "mg/dL"), effective="2026-05"),
        observation("comma", "2345-7", quantity("1,5", "mg/dL"), effective="2026-06"),
        observation("no-value", "2345-7", {"unit": "mg/dL"}, effective="2026-07"),
        observation("", "2345-7", quantity("300", "mg/dL"), effective="2026-08"),  # no id
    ]
    assert build_feature_vector([FEATURES[6]], [kept, *later]).values[0].source.id == "glu-1"


def test_the_latest_decides_even_when_its_unit_or_value_is_unusable() -> None:
    usable = observation("glu-1", "2345-7", quantity("110", "mg/dL"), effective="2026-01-01")
    for newer, reason in (
        (observation("g2", "2345-7", quantity("9", "mg"), effective="2026-02-01"), "FEATURE_UNIT"),
        (
            observation("g3", "2345-7", quantity("70", "mmol/L"), effective="2026-02-01"),
            "FEATURE_OUT_OF_RANGE",
        ),
    ):
        with pytest.raises(FeaturesUnusable) as raised:
            build_feature_vector([FEATURES[6]], [usable, newer])
        assert [(p.feature, p.reason.value) for p in raised.value.problems] == [("glucose", reason)]


def test_molar_conversion_only_for_the_analytes_listed() -> None:
    # HbA1c (4548-4) in mmol/L has no molar mass here; nor a "2345-7" of a local system.
    hba1c = Feature.loinc("hba1c", "4548-4", unit="mg/dL", min_value=0, max_value=100)
    local_glucose = Feature("glucose", (Coding(LOCAL_SYSTEM, "2345-7"),), "mg/dL", 0, 600)
    observations = [
        observation("h1", "4548-4", quantity("5", "mmol/L")),
        observation("g1", "2345-7", quantity("5.5", "mmol/L"), system=LOCAL_SYSTEM),
    ]
    with pytest.raises(FeaturesUnusable) as raised:
        build_feature_vector([hba1c, local_glucose], observations)
    assert problems_of(raised.value) == {
        "hba1c": FeatureReason.UNIT,
        "glucose": FeatureReason.UNIT,
    }


def test_a_feature_s_own_molar_mass_comes_before_the_table() -> None:
    glucose = Feature.loinc(
        "glucose", "2345-7", unit="mg/dL", min_value=0, max_value=600, molar_mass=180.156
    )
    observations = [observation("g1", "2345-7", quantity("5.5", "mmol/L"))]
    assert build_feature_vector([glucose], observations).values[0].value == 99.0858
    # An analyte the table does not list converts with the feature's molar mass only.
    urea = Feature.loinc("urea", "3091-6", unit="mg/dL", min_value=0, max_value=300)
    observations = [observation("u1", "3091-6", quantity("5", "mmol/L"))]
    with pytest.raises(FeaturesUnusable):
        build_feature_vector([urea], observations)
    urea = Feature.loinc(
        "urea", "3091-6", unit="mg/dL", min_value=0, max_value=300, molar_mass=60.06
    )
    assert build_feature_vector([urea], observations).values[0].value == 30.03
    with pytest.raises(ValueError, match="molar mass"):
        Feature.loinc("urea", "3091-6", unit="mg/dL", min_value=0, max_value=1, molar_mass=0)


def test_a_local_code_system_is_part_of_the_feature() -> None:
    radius = Feature(
        "mean radius", (Coding(LOCAL_SYSTEM, "fna-mean-radius"),), "um", 1000, 50000, 14000
    )
    ours = observation("r-1", "fna-mean-radius", quantity("14.2", "mm"), system=LOCAL_SYSTEM)
    theirs = observation(
        "r-2",
        "fna-mean-radius",
        quantity("99", "mm"),
        system="https://other.example/codes",
        effective="2027-01-01",
    )
    vector = build_feature_vector([radius], [ours, theirs])
    assert vector.values[0].source.id == "r-1"
    assert vector.values[0].value == 14200.0
    with pytest.raises(FeaturesUnusable):
        build_feature_vector([radius], [theirs])


def test_every_problem_is_reported_at_once_without_values_or_ids() -> None:
    record = complete_record()
    record = [o for o in record if o["id"] != "ldl-1"]  # LDL missing
    record.append(  # glucose newer, in a unit that is not a concentration
        observation("glu-2", "2345-7", quantity("141", "mg"), effective="2026-02-01")
    )
    record.append(  # BMI newer and out of range
        observation("bmi-2", "39156-5", quantity("95.5", "kg/m2"), effective="2026-02-01")
    )
    record.append(  # systolic newer, below the range
        blood_pressure("bp-2", "41", "30", effective="2026-02-01")
    )
    with pytest.raises(FeaturesUnusable) as raised:
        build_feature_vector(FEATURES, record)
    error = raised.value
    assert isinstance(error, FailedPrecondition)
    assert [(p.feature, p.reason) for p in error.problems] == [
        ("bmi", FeatureReason.OUT_OF_RANGE),
        ("systolic_bp", FeatureReason.OUT_OF_RANGE),
        ("ldl", FeatureReason.MISSING),
        ("glucose", FeatureReason.UNIT),
    ]
    assert error.reason == FEATURES_UNUSABLE
    assert error.metadata == {
        "feature_missing": "ldl",
        "feature_unit": "glucose",
        "feature_out_of_range": "bmi,systolic_bp",
    }
    assert [v.field for v in error.violations] == ["bmi", "systolic_bp", "ldl", "glucose"]
    assert error.violations[2].description.startswith("FEATURE_MISSING: ")
    assert error.message == (
        "the model's features are unusable: bmi (FEATURE_OUT_OF_RANGE), systolic_bp "
        "(FEATURE_OUT_OF_RANGE), ldl (FEATURE_MISSING), glucose (FEATURE_UNIT)"
    )
    said = " ".join(
        [error.message, *error.metadata.values(), *(v.description for v in error.violations)]
    )
    for secret in ("95.5", "41", "141", "glu-2", "bmi-2", "bp-2", PATIENT, "0145cb62", "mg"):
        assert secret not in said.replace("mg/dL", "")
    status = to_rpc_status(error, service="inference")
    assert status.code == 9  # FAILED_PRECONDITION


def test_an_empty_record_misses_every_feature() -> None:
    with pytest.raises(FeaturesUnusable) as raised:
        build_feature_vector(FEATURES, [])
    assert list(problems_of(raised.value).values()) == [FeatureReason.MISSING] * len(FEATURES)


def test_feature_definitions_are_checked() -> None:
    with pytest.raises(ValueError, match="UCUM"):
        Feature.loinc("bp", "8480-6", unit="mmHg", min_value=0, max_value=300)
    with pytest.raises(ValueError, match="min_value"):
        Feature.loinc("bp", "8480-6", unit="mm[Hg]", min_value=300, max_value=0)
    with pytest.raises(ValueError, match="reference"):
        Feature.loinc(
            "bp", "8480-6", unit="mm[Hg]", min_value=0, max_value=300, reference_value=400
        )
    with pytest.raises(ValueError, match="finite"):
        Feature.loinc("bp", "8480-6", unit="mm[Hg]", min_value=0, max_value=float("inf"))
    with pytest.raises(ValueError, match="coding"):
        Feature.loinc("bp", unit="mm[Hg]", min_value=0, max_value=300)
    with pytest.raises(ValueError, match="name"):
        Feature.loinc("bp, systolic", "8480-6", unit="mm[Hg]", min_value=0, max_value=300)
    with pytest.raises(ValueError, match="system"):
        Coding("", "8480-6")
    with pytest.raises(ValueError, match="unique"):
        build_feature_vector([FEATURES[0], FEATURES[0]], [])


def test_reference_vector() -> None:
    assert reference_vector(FEATURES[:2]).tolist() == [27.0, 120.0]
    assert reference_vector(FEATURES[:2]).dtype == np.float32
    with pytest.raises(ValueError, match="total_cholesterol, hdl"):
        reference_vector(FEATURES[:4])


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False))
def test_property_the_input_order_never_matters(random: Any) -> None:
    record = [
        *complete_record(),
        observation("glu-2", "2345-7", quantity("6.1", "mmol/L"), effective="2026-01-05"),
        observation(
            "glu-2",
            "2345-7",
            quantity("6.3", "mmol/L"),
            effective="2026-01-05",
            status="amended",
            version="2",
            last_updated="2026-01-06T00:00:00Z",
        ),
        observation(
            "glu-3",
            "2345-7",
            quantity("300", "mg/dL"),
            effective="2026-01-07",
            status="preliminary",
        ),
        blood_pressure("bp-0", "180", "100", effective="2025-12-01"),
        observation("ldl-2", "18262-6", quantity("2.5", "mmol/L"), effective="2025-01-01"),
    ]
    expected = build_feature_vector(FEATURES, copy.deepcopy(record))
    random.shuffle(record)
    shuffled = build_feature_vector(FEATURES, record)
    assert shuffled == expected
    assert [v.value for v in shuffled.values][-1] == 113.5008  # 6.3 * 18.016
    assert shuffled.values[-1].source == ObservationRef("glu-2", "2")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
PATHS = (
    ("status",),
    ("id",),
    ("meta",),
    ("meta", "versionId"),
    ("meta", "lastUpdated"),
    ("code",),
    ("code", "coding"),
    ("effectiveDateTime",),
    ("issued",),
    ("valueQuantity",),
    ("valueQuantity", "value"),
    ("valueQuantity", "code"),
    ("valueQuantity", "unit"),
    ("valueQuantity", "system"),
    ("component",),
    ("effectivePeriod",),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.sampled_from(PATHS), JSON), max_size=6))
def test_property_any_json_in_any_field_is_a_vector_or_named_problems(
    changes: list[tuple[int, tuple[str, ...], Any]],
) -> None:
    """Whatever a stored resource holds, the answer is a vector or FeaturesUnusable."""
    record = complete_record()
    for index, path, value in changes:
        target: Any = record[index]
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    try:
        vector = build_feature_vector(FEATURES, record)
    except FeaturesUnusable as error:
        assert {p.feature for p in error.problems} <= {f.name for f in FEATURES}
        return
    assert len(vector.values) == len(FEATURES)
    for value in vector.values:
        assert value.feature.min_value <= value.value <= value.feature.max_value
