"""A registered model as Predict uses it (medledger.inference.domain.model_definition): the
cards ``make models`` writes parse into features, transforms, categories, the reference row,
the score and the label rule; a card that breaks a rule is refused naming every path."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from medledger.inference.domain.features import LOINC, Coding
from medledger.inference.domain.model_definition import (
    CARD_SCHEMA,
    CODED_UNIT,
    ContributionSpace,
    ModelCardInvalid,
    ModelDefinition,
    ScoreKind,
    Transform,
    parse_model_card,
)
from medledger.models.repository import build_models

Card = dict[str, Any]


@pytest.fixture(scope="module")
def cards() -> dict[str, Card]:
    """The cards as ``make models`` writes them (built here, never read from build/)."""
    return {model.spec.name: model.card for model in build_models()}


def test_the_diabetes_card(cards: dict[str, Card]) -> None:
    model = parse_model_card(json.dumps(cards["diabetes-progression"]))
    assert (model.name, model.version) == ("diabetes-progression", 1)
    assert model.reference == "diabetes-progression|1"
    assert model.digest_hex == cards["diabetes-progression"]["model"]["sha256"]
    assert model.digest_uri == f"urn:sha256:{model.digest_hex}"
    assert model.input_tensor == "features"
    assert model.feature_names == ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")
    assert [f.code for f in model.features][:4] == [
        Coding(LOINC, "30525-0"),
        Coding(LOINC, "46098-0"),
        Coding(LOINC, "39156-5"),
        Coding(LOINC, "8478-0"),
    ]
    assert (model.score.tensor, model.score.column, model.score.kind) == (
        "progression",
        0,
        ScoreKind.REGRESSION,
    )
    assert model.contribution_space is ContributionSpace.SCORE
    assert model.label_rule is None
    assert model.label(300.0) is None
    assert model.base_score == cards["diabetes-progression"]["explanation"]["base_score"]


def test_features_carry_units_ranges_molar_masses_and_transforms(cards: dict[str, Card]) -> None:
    model = parse_model_card(cards["diabetes-progression"])
    by_name = {f.name: f for f in model.features}
    s1, s5 = by_name["s1"], by_name["s5"]
    assert (s1.unit, s1.feature.min_value, s1.feature.max_value) == ("mg/dL", 50.0, 600.0)
    assert s1.feature.molar_mass == 386.65
    assert s1.transform is Transform.IDENTITY
    assert s5.transform is Transform.LN
    assert s5.model_input(311.0) == float(np.float32(math.log(311.0)))
    assert by_name["s4"].unit == "{ratio}"
    assert by_name["bp"].unit == "mm[Hg]"


def test_sex_is_coded_through_the_cards_categories(cards: dict[str, Card]) -> None:
    sex = parse_model_card(cards["diabetes-progression"]).features[1]
    assert sex.is_coded
    assert sex.unit == CODED_UNIT
    gender = "http://hl7.org/fhir/administrative-gender"
    female, male = sex.category(Coding(gender, "female")), sex.category(Coding(gender, "male"))
    assert female is not None
    assert female.model_input == 1.0
    assert male is not None
    assert male.model_input == 2.0
    assert sex.category(Coding(gender, "other")) is None


def test_the_reference_row_is_the_cards_model_inputs(cards: dict[str, Card]) -> None:
    for card in cards.values():
        model = parse_model_card(card)
        row = model.reference_row()
        assert row.dtype == np.float32
        assert row.tolist() == [f["reference"]["model_input"] for f in card["features"]]


def test_the_classifier_and_its_label_rule(cards: dict[str, Card]) -> None:
    model = parse_model_card(cards["breast-cancer-malignancy"])
    assert model.score.kind is ScoreKind.PROBABILITY
    assert (model.score.tensor, model.score.column) == ("probabilities", 1)
    assert model.contribution_space is ContributionSpace.PROBABILITY
    assert model.label_rule is not None
    assert (model.label_rule.threshold, model.label_rule.above) == (0.5, "malignant")
    assert model.label(0.93) == "malignant"
    assert model.label(0.5) == "benign"  # above, not at
    assert model.label(0.01) == "benign"
    assert all(f.code.system.startswith("https://medledger.dev/") for f in model.features)


def broken(card: Card, change: Callable[[Card], None]) -> ModelCardInvalid:
    changed = copy.deepcopy(card)
    change(changed)
    with pytest.raises(ModelCardInvalid) as refused:
        parse_model_card(changed)
    return refused.value


def put(path: str, value: Any) -> Callable[[Card], None]:
    """A change setting the member at ``a.b[2].c`` (``value`` ... deletes it)."""

    def change(card: Card) -> None:
        parts = path.replace("[", ".").replace("]", "").split(".")
        holder: Any = card
        for part in parts[:-1]:
            holder = holder[int(part)] if part.isdigit() else holder[part]
        last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is ...:
            del holder[last]
        else:
            holder[last] = value

    return change


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("schema", "https://example.org/card", "schema: must be"),
        ("model.name", "../etc", "model.name: does not match"),
        ("model.version", 0, "model.version: must be in 1.."),
        ("model.version", True, "model.version: an integer is required"),
        ("model.sha256", "ABC", "model.sha256: does not match"),
        ("model.inputs[0].datatype", "FP64", "model.inputs[0].datatype: must be FP32"),
        ("model.inputs[0].dims", [-1, 9], "model.inputs[0].dims: must be [-1, n] with n"),
        ("features[2].index", 3, "features[2].index: must be the feature's position"),
        ("features[2].name", "2bmi", "features[2].name: does not match"),
        ("features[2].unit", "kg/m^2", "features[2].unit: a UCUM unit is required"),
        ("features[2].unit", None, "features[2].unit: a UCUM unit is required"),
        ("features[2].transform", "log10", "features[2].transform: must be identity or ln"),
        ("features[2].plausible_range.low", 90.0, "features[2].plausible_range: low is above"),
        ("features[2].plausible_range.high", math.inf, "a finite number is required"),
        ("features[2].reference.value", 5.0, "features[2].reference.value: must lie in"),
        ("features[2].reference.model_input", 30.0, "must be the transform of reference.value"),
        ("features[2].code.system", "loinc", "features[2].code.system: does not match"),
        ("features[2].code", ..., "features[2].code: an object is required"),
        ("features[4].molar_mass_g_per_mol", -1, "molar_mass_g_per_mol: must be positive"),
        ("features[8].plausible_range.low", 0.0, "features[8].plausible_range.low: must be pos"),
        ("features[1].unit", "1", "features[1].unit: must be null for a coded feature"),
        ("features[1].categories[1].model_input", 7.0, "categories[1].model_input: must lie"),
        ("features[1].categories[1].coding.code", "female", "names another category's code"),
        ("features[3].code.code", "39156-5", "features[3].code: another feature has this code"),
        ("features[3].name", "bmi", "features[3].name: names another feature too"),
        ("output.score.tensor", "label", "output.score.tensor: must be one of model.outputs"),
        ("output.score.column", 1, "output.score.column: must be a column"),
        ("output.score.kind", "odds", "output.score.kind: must be regression or probability"),
        ("explanation.space", "probability", "explanation.space: must be"),
        ("explanation.base_score", "123", "explanation.base_score: a number is required"),
    ],
)
def test_a_card_breaking_a_rule_is_refused_naming_the_path(
    cards: dict[str, Card], path: str, value: Any, problem: str
) -> None:
    refused = broken(cards["diabetes-progression"], put(path, value))
    assert any(problem in p for p in refused.problems), refused.problems


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        ("output.label.rule", "malignant above 0.5", "output.label.rule: must read"),
        ("output.label.rule", "1 (cancer) when the score is above 0.5", "names a label that"),
        ("output.label.rule", "1 (malignant) when the score is above 1.5", "threshold lies in"),
        ("output.label.values", {"1": "malignant"}, 'must name labels "0" and "1"'),
        ("model.outputs[1].datatype", "FP16", "the score's tensor must be FP32"),
    ],
)
def test_a_bad_label_rule_or_output_is_refused(
    cards: dict[str, Card], path: str, value: Any, problem: str
) -> None:
    refused = broken(cards["breast-cancer-malignancy"], put(path, value))
    assert any(problem in p for p in refused.problems), refused.problems


def test_every_problem_is_reported_at_once(cards: dict[str, Card]) -> None:
    def several(card: Card) -> None:
        card["model"]["sha256"] = "x"
        card["features"][0]["unit"] = "years"
        card["features"][5]["transform"] = "sqrt"

    refused = broken(cards["diabetes-progression"], several)
    assert [p.split(":")[0] for p in refused.problems] == [
        "model.sha256",
        "features[0].unit",
        "features[5].transform",
    ]
    assert str(refused).startswith("the model card is not usable: model.sha256")


def test_more_features_than_exact_contributions_allow_is_refused(cards: dict[str, Card]) -> None:
    def sixteen(card: Card) -> None:
        card["features"] = card["features"] + card["features"][:6]

    refused = broken(cards["breast-cancer-malignancy"], sixteen)
    assert any("1 to 15 features" in p for p in refused.problems)


@pytest.mark.parametrize("text", ["", "[]", "not json", '{"schema": 1}'])
def test_what_is_not_a_card_is_refused(text: str) -> None:
    with pytest.raises(ModelCardInvalid):
        parse_model_card(text)


def test_a_definition_is_frozen(cards: dict[str, Card]) -> None:
    model = parse_model_card(cards["diabetes-progression"])
    assert isinstance(model, ModelDefinition)
    with pytest.raises(AttributeError):
        model.name = "other"  # type: ignore[misc]
    assert cards["diabetes-progression"]["schema"] == CARD_SCHEMA
