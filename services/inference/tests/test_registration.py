"""A registration's checks before Triton is asked (medledger.inference.domain.registration):
every bad field named at once, the card agreeing with the fields, the fingerprint that makes
two registrations the same model."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from medledger.common.errors import InvalidArgument
from medledger.inference.domain.model_definition import ModelCardInvalid, parse_model_card
from medledger.inference.domain.registration import (
    LOINC,
    FeatureDefinition,
    ModelRegistration,
    ModelTask,
    Tensor,
    validate_registration,
)

DIGEST = hashlib.sha256(b"model.onnx bytes").digest()
LOCAL = "https://example.org/fhir/CodeSystem/cytology"
FEATURES = (
    FeatureDefinition("glucose", "2345-7", "", "mg/dL", 20, 600),
    FeatureDefinition("sex", "46098-0", "", "", 1, 2),
    FeatureDefinition("worst radius", "worst-radius", LOCAL, "{image-length}", 1, 60),
)


def card(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "schema": "https://medledger.dev/schemas/model-card/v1",
        "model": {
            "name": "risk",
            "title": "A test risk",
            "algorithm": "gradient boosting",
            "version": 3,
            "sha256": DIGEST.hex(),
            "file": "model.onnx",
            "inputs": [{"name": "features", "datatype": "FP32", "dims": [-1, 3]}],
            "outputs": [{"name": "progression", "datatype": "FP32", "dims": [-1, 1]}],
        },
        "features": [
            {
                "index": index,
                "name": f.name,
                "transform": "identity",
                "code": {"system": f.code_system or LOINC, "code": f.code},
                "unit": f.unit or None,
                "plausible_range": {"low": f.min_value, "high": f.max_value},
                "reference": {"model_input": f.min_value, "value": f.min_value},
                **(
                    {}
                    if f.unit
                    else {
                        "categories": [
                            {
                                "coding": {
                                    "system": "http://hl7.org/fhir/administrative-gender",
                                    "code": "female",
                                },
                                "model_input": 1.0,
                            }
                        ]
                    }
                ),
            }
            for index, f in enumerate(FEATURES)
        ],
        "output": {
            "score": {
                "tensor": "progression",
                "column": 0,
                "kind": "regression",
                "meaning": "a test score",
            }
        },
        "explanation": {"space": "the score's own units", "base_score": 1.0},
    }
    document.update(changes)
    return document


def registration(document: Any = None, **changes: Any) -> ModelRegistration:
    base = ModelRegistration(
        name="risk",
        version=3,
        digest=DIGEST,
        task=ModelTask.REGRESSION,
        features=FEATURES,
        card_json=json.dumps(card() if document is None else document),
    )
    return replace(base, **changes)


def problems(model: ModelRegistration) -> list[tuple[str, str]]:
    with pytest.raises(InvalidArgument) as raised:
        validate_registration(model)
    return [(v.field, v.description) for v in raised.value.violations]


def test_a_consistent_registration_gives_the_cards_tensors() -> None:
    tensors = validate_registration(registration())
    assert tensors.inputs == (Tensor("features", "FP32", (-1, 3)),)
    assert tensors.outputs == (Tensor("progression", "FP32", (-1, 1)),)


def test_the_fingerprint_is_the_model_not_the_cards_layout() -> None:
    model = registration()
    relaid = replace(model, card_json=json.dumps(card(), indent=4, sort_keys=True))
    assert relaid.fingerprint() == model.fingerprint()
    for other in (
        replace(model, card_json=json.dumps(card(limitations=["one more"]))),
        replace(model, digest=hashlib.sha256(b"other").digest()),
        replace(model, features=(replace(FEATURES[0], max_value=601), *FEATURES[1:])),
        replace(model, task=ModelTask.BINARY_CLASSIFICATION),
    ):
        assert other.fingerprint() != model.fingerprint()


def test_every_bad_field_is_named_at_once() -> None:
    bad = registration(
        name=".hidden",
        version=0,
        digest=b"short",
        task=None,
        features=(
            FeatureDefinition("9lives", "2345", "", "mg/dL", 1, 2),
            FeatureDefinition("x", "code with  two spaces", "not a uri", "no such unit", 5, 5),
            FeatureDefinition("x", "2345-7", "", "mg/dL", float("nan"), 1),
        ),
    )
    fields = {field for field, _ in problems(bad)}
    assert {
        "model.name",
        "model.version",
        "model.digest",
        "model.task",
        "model.features[0].name",
        "model.features[0].loinc_code",
        "model.features[1].code_system",
        "model.features[1].loinc_code",
        "model.features[1].unit",
        "model.features[1].min_value",
        "model.features[2].name",  # used twice
        "model.features[2].min_value",
    } <= fields


def test_features_are_required_and_at_most_fifteen() -> None:
    assert ("model.features", "at least one feature is required") in problems(
        registration(features=())
    )
    many = tuple(replace(FEATURES[0], name=f"f{i}") for i in range(16))
    assert any(field == "model.features" for field, _ in problems(registration(features=many)))


@pytest.mark.parametrize(
    ("document", "path"),
    [
        ("not an object", "the card"),
        (card(model={**card()["model"], "name": "other"}), "model.name"),
        (card(model={**card()["model"], "version": True}), "model.version"),
        (card(model={**card()["model"], "sha256": "00" * 32}), "model.sha256"),
        (card(model={**card()["model"], "file": "../config.pbtxt"}), "model.file"),
        (
            card(
                model={
                    **card()["model"],
                    "inputs": [{"name": "x", "datatype": "FP32", "dims": [3]}],
                }
            ),
            "model.inputs",
        ),
        (card(model={**card()["model"], "outputs": []}), "model.outputs"),
        (
            card(
                model={**card()["model"], "outputs": [{"name": "y", "datatype": "F", "dims": [1]}]}
            ),
            "model.outputs[0].datatype",
        ),
        (card(features=card()["features"][:2]), "features"),
        (card(output={"score": {"kind": "probability"}}), "output.score.kind"),
        (card(output=None), "output"),
    ],
)
def test_the_card_must_agree_with_the_fields(document: Any, path: str) -> None:
    found = problems(registration(document))
    assert any(
        field == "model.model_card_json" and description.startswith(f"{path} ")
        for field, description in found
    ), found


def test_each_feature_of_the_card_is_checked_against_the_fields() -> None:
    document = card()
    document["features"][0]["code"]["code"] = "2339-0"
    document["features"][1].pop("categories")
    document["features"][2]["code"]["system"] = LOINC
    document["features"][2]["plausible_range"]["high"] = 61
    found = [d for f, d in problems(registration(document)) if f == "model.model_card_json"]
    assert sorted(d.split(" ")[0] for d in found) == [
        "features[0].code.code",
        "features[1].categories",
        "features[2].code.system",
        "features[2].plausible_range",
    ]


def test_a_card_predict_could_not_read_is_refused_at_registration() -> None:
    """The registry checks what Predict reads from the card (its schema, each feature's
    reference input, the label rule) when the model is registered, not at its first use."""
    unknown_schema = card(schema="https://example.org/other-card")
    assert problems(registration(unknown_schema)) == [
        ("model.model_card_json", "schema: must be https://medledger.dev/schemas/model-card/v1")
    ]
    parse_model_card(json.dumps(card()))  # the consistent card is one Predict reads


def test_the_card_must_be_json_and_not_too_large() -> None:
    assert problems(registration(card_json="{")) == [
        ("model.model_card_json", "must be JSON, nested at most 32 deep")
    ]
    huge = json.dumps(card(padding="x" * (1024 * 1024)))
    assert problems(registration(card_json=huge))[0][0] == "model.model_card_json"
    assert ("model.model_card_json", "is required") in problems(registration(card_json=" "))


def test_descriptions_never_repeat_a_value() -> None:
    secret = "Jane Doe 1961-04-02"
    document = card(model={**card()["model"], "name": secret})
    bad = registration(
        document,
        name=secret,
        features=(replace(FEATURES[0], unit=secret, code=secret), *FEATURES[1:]),
    )
    assert all(secret not in description for _, description in problems(bad))


def test_a_card_nested_past_the_bound_is_refused_not_a_crash() -> None:
    """A card of thousands of nested brackets is bad input (the fuzzer found it raising
    RecursionError through json.loads)."""
    deep = "[" * 100_000
    registration = ModelRegistration(
        name="m", version=1, digest=bytes(32), task=ModelTask.REGRESSION, features=(),
        card_json=deep,
    )  # fmt: skip
    with pytest.raises(InvalidArgument) as refused:
        validate_registration(registration)
    assert "model.model_card_json" in {v.field for v in refused.value.violations}
    assert registration.fingerprint()
    with pytest.raises(ModelCardInvalid):
        parse_model_card(deep)
