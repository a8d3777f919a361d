"""No patient data in telemetry: after the followed Predict (and refused requests that carried
the patient's data), no span the services exported — attribute, event, link, status or name,
of any trace — and no line they logged holds the patient's name, identifier, birth date,
measured values or id. And the scan can fail: it finds a value planted in a span or a line.
"""

from __future__ import annotations

import dataclasses
import json

import grpc
import pytest

from medledger.api.inference.v1 import inference_pb2
from medledger.api.record.v1 import record_pb2

from .conftest import (
    BIRTH_DATE,
    DIABETES,
    FAMILY,
    GIVEN,
    IDENTIFIER,
    PHI,
    TREAT,
    Predicted,
    TracedStack,
    phi_findings,
)

pytestmark = pytest.mark.triton

# A birth date written as no FHIR server accepts it: the refusal must not quote it.
BAD_BIRTH_DATE = "29/03/1957"


async def _refused_requests(stack: TracedStack, predicted: Predicted) -> None:
    """Requests carrying the patient's data that the services refuse: their errors, logs and
    spans must not quote it either."""
    with pytest.raises(grpc.aio.AioRpcError) as bad_patient:
        await stack.record.CreateResource(
            record_pb2.CreateResourceRequest(
                resource_json=json.dumps(
                    {
                        "resourceType": "Patient",
                        "identifier": [{"value": IDENTIFIER}],
                        "name": [{"family": FAMILY, "given": [GIVEN]}],
                        "birthDate": BAD_BIRTH_DATE,
                    }
                ),
                purpose=TREAT,
            )
        )
    assert bad_patient.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as unknown_model:
        await stack.inference.Predict(
            inference_pb2.PredictRequest(
                model_name=f"{DIABETES}-{FAMILY.lower()}",
                patient_id=predicted.patient_id,
                purpose=TREAT,
            )
        )
    assert unknown_model.value.code() in {
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    }


async def test_no_span_or_log_line_holds_the_patients_data(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    await _refused_requests(traced_stack, predicted)
    # The followed trace is complete (its last hop, the witnesses, is in) before the scan.
    await traced_stack.receiver.wait_for(
        lambda spans: {"witness-a", "witness-b"} <= {s.service for s in spans},
        predicted.trace_id,
    )
    spans = traced_stack.receiver.spans()
    lines = traced_stack.log_lines()
    # The scan has something to read: every service's spans and logs.
    assert {"inference", "record", "identity", "ledger", "witness-a", "witness-b"} <= {
        s.service for s in spans
    }
    assert len(spans) > 100
    assert len(lines) > 20
    needles = (*PHI, BAD_BIRTH_DATE, FAMILY.lower(), predicted.patient_id)
    assert phi_findings(spans, lines, needles) == []


async def test_the_scan_finds_a_planted_value(
    traced_stack: TracedStack, predicted: Predicted
) -> None:
    spans = traced_stack.receiver.spans(predicted.trace_id)
    assert spans
    clean = phi_findings(spans, [], PHI)
    assert clean == []
    first = spans[0]
    planted = [
        dataclasses.replace(first, attributes={**first.attributes, "db.statement": GIVEN}),
        dataclasses.replace(first, events=(("exception", {"exception.message": IDENTIFIER}),)),
        dataclasses.replace(first, status_message=f"bad value {BIRTH_DATE}"),
    ]
    line = json.dumps({"message": "read", "value": 31.274})
    findings = phi_findings([*spans, *planted], [*traced_stack.log_lines(), line], PHI)
    assert len(findings) == 4
    assert any("attributes: Zebulon" in f for f in findings)
    assert any(f"events: {IDENTIFIER}" in f for f in findings)
    assert any(f"status: {BIRTH_DATE}" in f for f in findings)
    assert any(f.endswith(": 31.274") and f.startswith("log line") for f in findings)
