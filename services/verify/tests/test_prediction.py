"""Prediction openings on the real ledger, cosigned by two real witnesses, verified offline
(medledger.verify.prediction).

The fixture writes what the inference service writes for a prediction: a prediction document,
a fresh commitment salt and an INFERENCE_MADE entry (RiskAssessment, the prediction id blinded
with prediction_blinding_salt, version 0, no subject) appended through LedgerClient; it reads
back the exact leaf bytes and proves each leaf against a checkpoint both witnesses cosigned.
The documents and openings are written by hand from docs/prediction-format.md, not with the
module's own writer, so the two are checked against the written format. Some entries are
ledgered wrong on purpose (another kind, a subject, another prediction's id) and some
documents are committed wrong (contributions that do not add up, an input that is not its
value's transform): the ledger vouches for what was committed, the checks for what it says.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import os
import struct
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerEvent
from medledger.testkit.witnessed import WitnessedLedger, witnessed_ledger
from medledger.verify.blinding import blinded_resource_id, prediction_blinding_salt
from medledger.verify.commitment import canonical_json, commit
from medledger.verify.prediction import (
    CHECKS,
    PredictionDocument,
    PredictionFormatError,
    PredictionInvalid,
    check_model_file,
    check_model_output,
    opening_json,
    parse_opening,
    verify_prediction,
)
from medledger.verify.trust import TrustPolicy

ORIGIN = "prediction.test/ledger"
INFERENCE_MADE = ledger_pb2.EVENT_KIND_INFERENCE_MADE
MODEL_FILE = b"the bytes of an ONNX file, as far as a digest is concerned"
PATIENT = "Patient/7c9e6679-7425-40de-944b-e07fc1f90ae7"


def f32(value: float) -> float:
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def document(**changes: Any) -> dict[str, Any]:
    """A prediction document as docs/prediction-format.md describes it: a regression on three
    features (one derived from the Patient, one ln-transformed) whose contributions add up."""
    value = {
        "schema": "https://medledger.dev/schemas/prediction/v1",
        "prediction_id": str(uuid.uuid4()),
        "made_at": "2026-01-02T10:00:00.000Z",
        "subject": PATIENT,
        "model": {
            "name": "diabetes-progression",
            "version": 1,
            "sha256": hashlib.sha256(MODEL_FILE).hexdigest(),
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
                "name": "bmi",
                "code": {"system": "http://loinc.org", "code": "39156-5"},
                "value": 32.1,
                "unit": "kg/m2",
                "category": None,
                "transform": "identity",
                "sources": ["Observation/bmi/_history/2"],
                "derivation": None,
            },
            {
                "name": "s5",
                "code": {"system": "http://loinc.org", "code": "2571-8"},
                "value": 311.0,
                "unit": "mg/dL",
                "category": None,
                "transform": "ln",
                "sources": ["Observation/tg/_history/1"],
                "derivation": None,
            },
        ],
        "input_row": [64.0, f32(32.1), f32(math.log(311.0))],
        "reference_row": [50.0, f32(25.8), f32(4.6347)],
        "basis": [
            "Observation/bmi/_history/2",
            "Observation/tg/_history/1",
            f"{PATIENT}/_history/1",
        ],
        "score": 180.25,
        "base_score": 123.0,
        "contributions": [7.25, 30.0, 20.0],
        "contribution_space": "score",
        "label": None,
    }
    value.update(changes)
    return value


@dataclass
class Ledgered:
    """One prediction as ledgered: its document, salt, exact entry bytes, receipts."""

    document: dict[str, Any]
    salt: bytes
    entry: bytes
    appended: ledger_pb2.Receipt  # as Append answered: signed by the log only
    witnessed: ledger_pb2.Receipt  # proven against a checkpoint both witnesses cosigned

    def opening(self, *, witnessed: bool = True, **changes: Any) -> dict[str, Any]:
        """The opening (prediction.json) as the format describes it."""
        receipt = self.witnessed if witnessed else self.appended
        opening = {
            "schema": "https://medledger.dev/schemas/prediction-opening/v1",
            "prediction": copy.deepcopy(self.document),
            "commitment_salt": b64(self.salt),
            "entry": b64(self.entry),
            "receipt": b64(receipt.SerializeToString()),
        }
        opening.update(changes)
        return opening


@dataclass
class Ledger:
    predictions: dict[str, Ledgered]
    log_vkeys: list[str]
    witness_vkeys: list[str]

    def policy(self, quorum: int = 2) -> TrustPolicy:
        return TrustPolicy.parse(self.log_vkeys, self.witness_vkeys, quorum, ORIGIN)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def text(opening: dict[str, Any]) -> bytes:
    return json.dumps(opening, indent=2).encode()


@pytest.fixture(scope="module")
async def ledger(mongo_server: Any, vault_server: Any) -> AsyncIterator[Ledger]:
    async with witnessed_ledger(mongo_server, vault_server, ORIGIN) as witnessed:
        yield await _ledger_predictions(witnessed)


async def _ledger_predictions(witnessed: WitnessedLedger) -> Ledger:
    bad_input = document()
    bad_input["input_row"] = [64.0, f32(32.1), f32(311.0)]  # the value, not its ln
    # name: (document, kind, prediction id blinded in the entry, subject)
    writes: dict[str, tuple[dict[str, Any], ledger_pb2.EventKind.ValueType, str | None, bytes]] = {
        "valid": (document(), INFERENCE_MADE, None, b""),
        "bad-sum": (document(contributions=[7.25, 30.0, 20.5]), INFERENCE_MADE, None, b""),
        "bad-input": (bad_input, INFERENCE_MADE, None, b""),
        "wrong-kind": (document(), ledger_pb2.EVENT_KIND_RECORD_CREATED, None, b""),
        "wrong-id": (document(), INFERENCE_MADE, str(uuid.uuid4()), b""),
        "subject": (document(), INFERENCE_MADE, None, os.urandom(32)),
    }
    predictions: dict[str, Ledgered] = {}
    for name, (content, kind, blinded_as, subject) in writes.items():
        salt = os.urandom(32)
        event = LedgerEvent(
            kind=kind,
            actor="client-inference-test",
            organization="hospital-a",
            subject=subject,
            resource_type="RiskAssessment",
            resource_id=blinded_resource_id(
                prediction_blinding_salt(salt),
                "RiskAssessment",
                blinded_as or content["prediction_id"],
                0,
            ),
            resource_version=0,
            content_commitment=commit(salt, canonical_json(content)),
            purpose=purpose_pb2.PURPOSE_OF_USE_TREAT,
        )
        appended = await witnessed.append(event)
        entry = await witnessed.leaf(appended.leaf_index)
        predictions[name] = Ledgered(content, salt, entry, appended, appended)
    checkpoint = await witnessed.cosigned_checkpoint(len(writes))
    for prediction in predictions.values():
        prediction.witnessed = await witnessed.proven(prediction.appended, checkpoint)
    return Ledger(predictions, [witnessed.log_vkey], witnessed.witness_vkeys)


def refused(data: bytes, policy: TrustPolicy) -> PredictionInvalid:
    with pytest.raises(PredictionInvalid) as failure:
        verify_prediction(parse_opening(data), policy)
    assert failure.value.check in CHECKS
    return failure.value


# -- verifying ---------------------------------------------------------------------------------


def test_a_prediction_verifies(ledger: Ledger) -> None:
    valid = ledger.predictions["valid"]
    verified = verify_prediction(parse_opening(text(valid.opening())), ledger.policy())
    assert verified.document == PredictionDocument.from_json(valid.document)
    assert verified.leaf_index == valid.appended.leaf_index
    assert verified.entry.kind == INFERENCE_MADE
    assert verified.entry.actor == "client-inference-test"
    assert len(verified.receipt.checkpoint.witnesses) == 2
    assert verified.residual == 0.0
    assert verified.tolerance == pytest.approx(1e-9 * 180.25)
    assert check_model_file(verified.document, MODEL_FILE) == valid.document["model"]["sha256"]


def test_formatting_and_member_order_are_free(ledger: Ledger) -> None:
    opening = ledger.predictions["valid"].opening()
    opening["prediction"] = dict(reversed(opening["prediction"].items()))
    data = json.dumps(opening, indent="\t", ensure_ascii=True).encode()
    verify_prediction(parse_opening(data), ledger.policy())


def test_the_writer_writes_the_documented_format(ledger: Ledger) -> None:
    valid = ledger.predictions["valid"]
    written = opening_json(
        PredictionDocument.from_json(valid.document), valid.salt, valid.entry, valid.witnessed
    )
    assert json.loads(written) == json.loads(text(valid.opening()))
    verify_prediction(parse_opening(written), ledger.policy())


def test_a_receipt_from_predict_needs_a_refreshed_proof_for_a_quorum(ledger: Ledger) -> None:
    data = text(ledger.predictions["valid"].opening(witnessed=False))
    verify_prediction(parse_opening(data), ledger.policy(quorum=0))
    failure = refused(data, ledger.policy(quorum=2))
    assert failure.check == "receipt checkpoint"


def test_one_changed_input_value_fails_at_the_commitment(ledger: Ledger) -> None:
    opening = ledger.predictions["valid"].opening()
    opening["prediction"]["features"][1]["value"] = 32.2
    failure = refused(text(opening), ledger.policy())
    assert failure.check == "commitment"
    assert "is not what the ledger entry committed to" in failure.message
    scored = ledger.predictions["valid"].opening()
    scored["prediction"]["input_row"][1] = f32(32.2)
    assert refused(text(scored), ledger.policy()).check == "commitment"


def test_a_wrong_model_digest(ledger: Ledger) -> None:
    valid = ledger.predictions["valid"]
    verified = verify_prediction(parse_opening(text(valid.opening())), ledger.policy())
    with pytest.raises(PredictionInvalid) as failure:
        check_model_file(verified.document, MODEL_FILE + b"\x00")
    assert failure.value.check == "model digest"
    assert hashlib.sha256(MODEL_FILE + b"\x00").hexdigest() in failure.value.message
    # Claiming another model in the document breaks the commitment.
    opening = valid.opening()
    opening["prediction"]["model"]["sha256"] = hashlib.sha256(b"another model").hexdigest()
    assert refused(text(opening), ledger.policy()).check == "commitment"


def test_contributions_that_do_not_add_up(ledger: Ledger) -> None:
    failure = refused(text(ledger.predictions["bad-sum"].opening()), ledger.policy())
    assert failure.check == "contributions"
    assert "differs from the score by -0.5" in failure.message


def test_an_input_that_is_not_its_values_transform(ledger: Ledger) -> None:
    failure = refused(text(ledger.predictions["bad-input"].opening()), ledger.policy())
    assert failure.check == "inputs"
    assert "input_row[2] (s5)" in failure.message


def test_an_entry_of_another_kind(ledger: Ledger) -> None:
    failure = refused(text(ledger.predictions["wrong-kind"].opening()), ledger.policy())
    assert failure.check == "ledger entry"
    assert "records RECORD_CREATED, not INFERENCE_MADE" in failure.message


def test_an_entry_about_another_prediction(ledger: Ledger) -> None:
    failure = refused(text(ledger.predictions["wrong-id"].opening()), ledger.policy())
    assert failure.check == "ledger entry"
    assert "about another prediction" in failure.message


def test_an_entry_with_a_subject(ledger: Ledger) -> None:
    failure = refused(text(ledger.predictions["subject"].opening()), ledger.policy())
    assert failure.check == "ledger entry"
    assert "names no subject" in failure.message


def test_another_predictions_entry_and_receipt(ledger: Ledger) -> None:
    valid, other = ledger.predictions["valid"], ledger.predictions["bad-sum"]
    opening = valid.opening(
        entry=b64(other.entry), receipt=b64(other.witnessed.SerializeToString())
    )
    assert refused(text(opening), ledger.policy()).check == "commitment"
    stale = valid.opening(receipt=b64(other.witnessed.SerializeToString()))
    assert refused(text(stale), ledger.policy()).check == "receipt entry"


def test_another_salt(ledger: Ledger) -> None:
    opening = ledger.predictions["valid"].opening(commitment_salt=b64(os.urandom(32)))
    assert refused(text(opening), ledger.policy()).check == "commitment"


def test_reproducing_the_score() -> None:
    model = PredictionDocument.from_json(document())
    check_model_output(model, 180.25 + 1e-4)
    with pytest.raises(PredictionInvalid) as failure:
        check_model_output(model, 180.3)
    assert failure.value.check == "model output"


# -- reading -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(schema="https://example.org/x"), "schema: must be"),
        (lambda o: o.pop("entry"), "(file): lacks entry"),
        (lambda o: o.update(extra=1), "the format does not define: extra"),
        (lambda o: o.update(commitment_salt=b64(bytes(31))), "is 31 bytes, not 32"),
        (lambda o: o.update(entry="not base64!"), "entry: not base64"),
        (lambda o: o.update(receipt=b64(b"\xff\xff")), "receipt: not a ledger Receipt"),
        (lambda o: o["prediction"].pop("label"), "prediction: lacks label"),
        (lambda o: o["prediction"].update(input_row=[64.0, 32.1, 5.0]), "not one"),
        (lambda o: o["prediction"].update(contributions=[1.0]), "one number a feature (3)"),
        (lambda o: o["prediction"].update(made_at="2026-01-02"), "prediction.made_at"),
        (lambda o: o["prediction"].update(prediction_id="X"), "prediction.prediction_id"),
        (lambda o: o["prediction"].update(contribution_space="probability"), "must be 'score'"),
        (lambda o: o["prediction"].update(score=True), "prediction.score: a number"),
        (lambda o: o["prediction"]["model"].update(sha256="AB"), "prediction.model.sha256"),
        (lambda o: o["prediction"]["features"][0].update(transform="sqrt"), "must be one of"),
        (lambda o: o["prediction"]["features"][2].update(value=-1), "ln needs a positive"),
        (lambda o: o["prediction"]["basis"].pop(), "sources[0]: must be in the basis"),
        (lambda o: o["prediction"]["basis"].append("Observation/x"), "is no feature's source"),
        (
            lambda o: o["prediction"]["features"][0].update(sources=["Patient/other"]),
            "must be in the basis",
        ),
    ],
)
def test_what_is_not_an_opening_is_refused(ledger: Ledger, change: Any, message: str) -> None:
    opening = ledger.predictions["valid"].opening()
    change(opening)
    with pytest.raises(PredictionFormatError) as failure:
        parse_opening(text(opening))
    assert message in str(failure.value)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"a": NaN}', "NaN is not a JSON value"),
        (b"[]", "(file): an object is required"),
    ],
)
def test_what_is_not_json_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(
        PredictionFormatError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        parse_opening(data)


def test_the_document_round_trips() -> None:
    value = document()
    parsed = PredictionDocument.from_json(value)
    assert canonical_json(parsed.to_json()) == canonical_json(value)
