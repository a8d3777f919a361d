"""docs/prediction-format.md states what the verifier does: its constants are the code's, and
its worked example, a complete opening with fixed keys and salt, is recomputed here from the
format's definition and verifies (and fails, once one input value changes)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.testkit.doc_examples import (
    example_json,
    example_keys,
    example_policy,
    example_receipt,
)
from medledger.tlog import leaf_hash
from medledger.verify import blinding, commitment, prediction
from medledger.verify.prediction import PredictionInvalid, parse_opening, verify_prediction

DOC = Path(__file__).resolve().parents[3] / "docs" / "prediction-format.md"
SALT = bytes(range(32))
PATIENT = "Patient/7c9e6679-7425-40de-944b-e07fc1f90ae7"


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def document() -> dict[str, Any]:
    """The example's prediction document, from the format's definition."""
    return {
        "schema": "https://medledger.dev/schemas/prediction/v1",
        "prediction_id": "9b2f0c1e-5d4a-4e8b-a6f3-2c7d1e0b9a84",
        "made_at": "2026-01-02T10:00:00.000Z",
        "subject": PATIENT,
        "model": {
            "name": "example-progression",
            "version": 1,
            "sha256": hashlib.sha256(b"example model").hexdigest(),
            "input": "features",
            "score": {"tensor": "progression", "column": 0, "kind": "regression"},
        },
        "features": [
            {
                "name": "age",
                "code": {"system": "http://loinc.org", "code": "30525-0"},
                "value": 64,
                "unit": "a",
                "category": None,
                "transform": "identity",
                "sources": [f"{PATIENT}/_history/1"],
                "derivation": "age-from-birth-date",
            },
            {
                "name": "s5",
                "code": {"system": "http://loinc.org", "code": "2571-8"},
                "value": 311,
                "unit": "mg/dL",
                "category": None,
                "transform": "ln",
                "sources": ["Observation/tg-1/_history/2"],
                "derivation": None,
            },
        ],
        "input_row": [64, f32(math.log(311))],
        "reference_row": [50, f32(4.6347)],
        "basis": ["Observation/tg-1/_history/2", f"{PATIENT}/_history/1"],
        "score": 180.25,
        "base_score": 123,
        "contributions": [7.25, 50],
        "contribution_space": "score",
        "label": None,
    }


def entry_bytes() -> bytes:
    blinded = blinding.blinded_resource_id(
        blinding.prediction_blinding_salt(SALT),
        "RiskAssessment",
        document()["prediction_id"],
        0,
    )
    entry = ledger_pb2.LedgerEntry(
        kind=ledger_pb2.EVENT_KIND_INFERENCE_MADE,
        resource=ledger_pb2.ResourceRef(type="RiskAssessment", id=blinded),
        content_commitment=commitment.commit_json(SALT, document()),
        actor="hospital-a-app",
        organization="hospital-a",
        purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        trace_id=bytes(16),
    )
    entry.time.FromSeconds(1767348000)
    return entry.SerializeToString(deterministic=True)


def example() -> dict[str, Any]:
    """The doc's example opening: leaf 1 of a tree of two, whose leaf 0 is another event."""
    receipt = example_receipt(entry_bytes())

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "schema": "https://medledger.dev/schemas/prediction-opening/v1",
        "prediction": document(),
        "commitment_salt": b64(SALT),
        "entry": b64(entry_bytes()),
        "receipt": b64(receipt.SerializeToString()),
    }


def doc_example() -> str:
    return example_json(DOC.read_text(encoding="utf-8"), "opening")


def test_the_example_is_the_formats() -> None:
    assert json.loads(doc_example()) == example()


def test_the_example_verifies_with_the_documented_keys() -> None:
    log, witness = example_keys()
    doc = DOC.read_text(encoding="utf-8")
    assert f"--vkey {log.verifier_key}" in doc
    assert f"--witness-vkey {witness.verifier_key}" in doc
    verified = verify_prediction(parse_opening(doc_example().encode()), example_policy())
    assert verified.leaf_index == 1
    assert verified.residual == 0.0


def test_the_example_fails_once_an_input_value_changes() -> None:
    changed = doc_example().replace('"value": 311,', '"value": 312,')
    assert changed != doc_example()
    with pytest.raises(PredictionInvalid) as failure:
        verify_prediction(parse_opening(changed.encode()), example_policy())
    assert failure.value.check == "commitment"
    doc = DOC.read_text(encoding="utf-8")
    assert f"({failure.value.check} check failed)\n  {failure.value.message}" in doc


def test_the_intermediate_values_are_the_documents() -> None:
    canonical = commitment.canonical_json(document())
    blinding_salt = blinding.prediction_blinding_salt(SALT)
    doc = DOC.read_text(encoding="utf-8")
    for value in (
        canonical.decode(),
        commitment.commit(SALT, canonical).hex(),
        blinding_salt.hex(),
        blinding.blinded_resource_id(
            blinding_salt, "RiskAssessment", document()["prediction_id"], 0
        ),
        leaf_hash(entry_bytes()).hex(),
        repr(f32(math.log(311))),
    ):
        assert value in doc, value


def test_the_constants_are_the_codes() -> None:
    doc = DOC.read_text(encoding="utf-8")
    for constant in (
        prediction.PREDICTION_SCHEMA,
        prediction.OPENING_SCHEMA,
        prediction.RESOURCE_TYPE,
        f"{prediction.ADDITIVITY_TOLERANCE:g}",
        f"{prediction.REPRODUCTION_TOLERANCE:g}",
        *(f'"{check}"' for check in prediction.CHECKS),
    ):
        assert constant in doc, constant
    assert repr(blinding.PREDICTION_BLINDING_SALT_LABEL.rstrip(b"\x00"))[2:-1] in doc
    assert repr(blinding.RESOURCE_LABEL.rstrip(b"\x00"))[2:-1] in doc
    assert repr(commitment.COMMITMENT_DOMAIN.rstrip(b"\x00"))[2:-1] in doc
