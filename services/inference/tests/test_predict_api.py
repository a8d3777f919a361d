"""Predict and BatchPredict over gRPC against real servers: the testkit platform's identity
and ledger, a record service, secantusdb, OpenBao and one tritonserver serving freshly built
models. A hospital app scores its own patient from Observations it wrote; the answer adds up,
its opening verifies offline against the ledger, and the RiskAssessment and its Provenance
are in the patient's record. Another organisation without consent is refused, as a direct
read would be; a patient missing features is FAILED_PRECONDITION naming each.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from medledger.api.common.v1 import purpose_pb2
from medledger.api.inference.v1 import inference_pb2, inference_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.models import read_model
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import MedledgerError, from_rpc_error
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.devstack.triton import TritonServer
from medledger.inference.adapters.patient_records import CODES_PER_SEARCH, RecordClient
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.domain.features import Coding
from medledger.inference.domain.model_definition import ModelDefinition, parse_model_card
from medledger.inference.domain.patient_inputs import search_codes
from medledger.inference.domain.predictor import Caller
from medledger.inference.runtime import from_settings as inference_from_settings
from medledger.testkit.fhir_samples import measured_observation
from medledger.testkit.inprocess import eventually
from medledger.testkit.models import serving_models
from medledger.testkit.platform import ADMIN_CLIENT, Platform
from medledger.testkit.record_server import start_record_server
from medledger.testkit.tokens import authed_channel
from medledger.verify.prediction import parse_opening, verify_prediction
from medledger.verify.trust import TrustPolicy

pytestmark = pytest.mark.triton

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
DIABETES, BREAST = "diabetes-progression", "breast-cancer-malignancy"
LOINC = "http://loinc.org"
# A diabetes patient's measurements: (LOINC, value, UCUM unit).
MEASURED = (
    ("39156-5", 31.2, "kg/m2"),
    ("8478-0", 101, "mm[Hg]"),
    ("2093-3", 221, "mg/dL"),
    ("13457-7", 139.6, "mg/dL"),
    ("2085-9", 41, "mg/dL"),
    ("2571-8", 2.1, "mmol/L"),  # triglycerides in SI units: converted, then ln
    ("2345-7", 7.4, "mmol/L"),  # glucose in SI units: converted to mg/dL
)


@dataclass
class Served:
    triton: TritonServer
    address: str  # the inference server's
    cut: inference_pb2_grpc.InferenceServiceAsyncStub  # hospital A's app; the ledger down
    a: inference_pb2_grpc.InferenceServiceAsyncStub  # hospital A's app: its own patients
    b: inference_pb2_grpc.InferenceServiceAsyncStub  # hospital B's app: no consent
    record: record_pb2_grpc.RecordServiceAsyncStub  # hospital A's app
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    policy: TrustPolicy
    record_address: str
    a_token: str  # hospital A's app's


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TritonServer]]:
    with serving_models(tmp_path_factory, "predict") as served:
        yield served


@pytest.fixture(scope="module")
async def served(
    triton: tuple[Path, TritonServer], auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[Served]:
    repository, tritonserver = triton
    platform = auth_platform
    suffix = uuid.uuid4().hex[:8]
    record = await start_record_server(platform, mongo_server, vault_server, f"predrec{suffix}")

    def inference_server(ledger: str) -> ServiceServer:
        return ServiceServer(
            inference_from_settings(
                InferenceSettings(grpc_port=0, health_interval_seconds=0.2),
                InferenceConfig(model_repository=repository, ledger_timeout_seconds=2),
                TritonSettings(url=tritonserver.grpc_url, timeout_seconds=10),
                MongoSettings(
                    MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"predinf{suffix}"
                ),
                VaultSettings(addr=vault_server.addr, token=vault_server.token_for("inference")),
                PeerSettings(
                    identity_addr=platform.identity_address,
                    ledger_addr=ledger,
                    record_addr=f"127.0.0.1:{record.port}",
                ),
            )
        )

    inference = inference_server(platform.ledger_address)
    cut = inference_server(f"127.0.0.1:{free_port()}")
    await cut.start()
    await inference.start()
    address = f"127.0.0.1:{inference.port}"
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    a_token = await platform.token("system/*.cruds inference.predict", "hospital-a", [TREAT])
    b_token = await platform.token("system/*.rs inference.predict", "hospital-b", [TREAT])
    reader = await platform.token("ledger.read", "hospital-a")
    channels = [
        authed_channel(f"127.0.0.1:{cut.port}", a_token),
        authed_channel(address, admin),
        authed_channel(address, a_token),
        authed_channel(address, b_token),
        authed_channel(f"127.0.0.1:{record.port}", a_token),
        authed_channel(platform.ledger_address, reader),
    ]
    admin_stub = inference_pb2_grpc.InferenceServiceStub(channels[1])
    for name in (DIABETES, BREAST):
        await admin_stub.RegisterModel(
            inference_pb2.RegisterModelRequest(model=read_model(name, 1, repository=repository))
        )
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[5])
    vkey = (await ledger.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    try:
        yield Served(
            triton=tritonserver,
            address=address,
            cut=inference_pb2_grpc.InferenceServiceStub(channels[0]),
            a=inference_pb2_grpc.InferenceServiceStub(channels[2]),
            b=inference_pb2_grpc.InferenceServiceStub(channels[3]),
            record=record_pb2_grpc.RecordServiceStub(channels[4]),
            ledger=ledger,
            policy=TrustPolicy.parse([vkey]),
            record_address=f"127.0.0.1:{record.port}",
            a_token=a_token,
        )
    finally:
        for channel in channels:
            await channel.close(None)
        await inference.stop(0)
        await cut.stop(0)
        await record.stop(0)


async def create(served: Served, resource: dict[str, Any]) -> record_pb2.StoredResource:
    reply = await served.record.CreateResource(
        record_pb2.CreateResourceRequest(resource_json=json.dumps(resource), purpose=TREAT)
    )
    return reply.resource


async def diabetes_patient(served: Served, *, skip: tuple[str, ...] = ()) -> str:
    patient = await create(
        served, {"resourceType": "Patient", "gender": "male", "birthDate": "1968-05-14"}
    )
    for code, value, unit in MEASURED:
        if code in skip:
            continue
        await create(served, measured_observation(patient.id, LOINC, code, value, unit))
    return patient.id


def predict(patient_id: str, model: str = DIABETES) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(model_name=model, patient_id=patient_id, purpose=TREAT)


async def failure(call: Any) -> MedledgerError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return from_rpc_error(raised.value)


async def test_a_prediction_adds_up_verifies_offline_and_is_in_the_record(
    served: Served,
) -> None:
    patient_id = await diabetes_patient(served)
    reply = await served.a.Predict(predict(patient_id))
    assert reply.contribution_space == inference_pb2.CONTRIBUTION_SPACE_SCORE
    assert [c.feature for c in reply.contributions] == [
        "age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6",
    ]  # fmt: skip
    total = reply.base_score + sum(c.contribution for c in reply.contributions)
    assert total == pytest.approx(reply.score, rel=1e-9, abs=1e-9)
    values = {c.feature: c.value for c in reply.contributions}
    assert values["s6"] == pytest.approx(7.4 * 180.156 / 10, rel=1e-6)  # glucose in mg/dL
    assert values["s4"] == pytest.approx(221 / 41, rel=1e-9)  # derived TC/HDL ratio
    assert values["sex"] == 2.0
    assert 25 < reply.score < 346
    # The opening verifies offline against the ledger's key: this model, these inputs.
    opening = parse_opening(reply.prediction_opening)
    verified = verify_prediction(opening, served.policy)
    assert verified is not None
    assert opening.document.score == reply.score
    assert reply.receipt.leaf_index == opening.receipt.leaf_index
    entry = (
        await served.ledger.GetEntry(
            ledger_pb2.GetEntryRequest(leaf_index=reply.receipt.leaf_index)
        )
    ).entry
    assert entry.kind == ledger_pb2.EVENT_KIND_INFERENCE_MADE
    assert entry.subject == b""
    assert patient_id.encode() not in entry.SerializeToString()
    # The RiskAssessment is the patient's, cites the Observations and the ledger leaf.
    risk = await served.record.GetResource(
        record_pb2.GetResourceRequest(
            resource_type="RiskAssessment", id=reply.risk_assessment_id, purpose=TREAT
        )
    )
    document = json.loads(risk.resource.resource_json)
    assert document["subject"]["reference"] == f"Patient/{patient_id}"
    assert len(document["basis"]) >= 7
    assert str(reply.receipt.leaf_index) in json.dumps(document)
    provenance = await served.record.SearchResources(
        record_pb2.SearchResourcesRequest(
            resource_type="Provenance",
            params=[record_pb2.SearchParam(name="patient", value=patient_id)],
            purpose=TREAT,
        )
    )
    assert len(provenance.resources) == 1
    # Written together with the RiskAssessment (one transaction Bundle, one ledger step),
    # targeting exactly its first version.
    (written,) = provenance.resources
    targets = [t["reference"] for t in json.loads(written.resource_json)["target"]]
    assert targets == [
        f"RiskAssessment/{reply.risk_assessment_id}/_history/1",
        f"Patient/{patient_id}",
    ]
    assert written.receipt.checkpoint == risk.resource.receipt.checkpoint


async def test_a_prediction_reads_only_the_observations_its_model_uses(served: Served) -> None:
    patient_id = await diabetes_patient(served)
    # Results no model reads: haemoglobin, and a local code that needs escaping in a query.
    odd = Coding("urn:lab:local|x", "a,b$c\\d")
    await create(served, measured_observation(patient_id, LOINC, "718-7", 14.1, "g/dL"))
    await create(served, measured_observation(patient_id, odd.system, odd.code, 1.0, "1"))
    records = RecordClient(served.record_address, InferenceSettings())
    caller = Caller("app", "hospital-a", served.a_token, TREAT)

    async def codes_read(*codes: Coding) -> list[tuple[str, str]]:
        read = await records.read(caller, patient_id, codes, with_patient=False)
        found = [o["code"]["coding"][0] for o in read.observations]
        return sorted((c["system"], c["code"]) for c in found)

    try:
        glucose = Coding(LOINC, "2345-7")
        assert await codes_read(glucose) == [(LOINC, "2345-7")]
        assert await codes_read(odd) == [(odd.system, odd.code)]
        assert await codes_read(Coding("urn:lab:local", "a")) == []
        # More codes than one search lists: several searches, one answer.
        unused = [Coding(LOINC, f"{n}-0") for n in range(CODES_PER_SEARCH + 5)]
        assert await codes_read(*unused, glucose, odd) == sorted(
            [(LOINC, "2345-7"), (odd.system, odd.code)]
        )
        # The model's codes: every measured feature, none of the others.
        read = await records.read(
            caller, patient_id, search_codes(await diabetes_model(served)), with_patient=True
        )
        assert sorted(o["code"]["coding"][0]["code"] for o in read.observations) == sorted(
            code for code, _, _ in MEASURED
        )
        assert read.patient is not None
    finally:
        await records.aclose()
    reply = await served.a.Predict(predict(patient_id))
    assert len(reply.contributions) == 10


async def diabetes_model(served: Served) -> ModelDefinition:
    model = (await served.a.GetModel(inference_pb2.GetModelRequest(name=DIABETES))).model
    return parse_model_card(json.loads(model.model_card_json))


async def test_without_consent_or_features_nothing_is_predicted(served: Served) -> None:
    patient_id = await diabetes_patient(served, skip=("39156-5", "2345-7"))
    missing = await failure(served.a.Predict(predict(patient_id)))
    assert missing.code == grpc.StatusCode.FAILED_PRECONDITION
    assert sorted(v.field for v in missing.violations) == ["bmi", "s6"]
    complete = await diabetes_patient(served)
    denied = await failure(served.b.Predict(predict(complete)))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    unknown = await failure(served.a.Predict(predict(complete, model="no-such-model")))
    assert unknown.code == grpc.StatusCode.NOT_FOUND
    bad = await failure(served.a.Predict(predict("not an id!")))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT
    no_purpose = await failure(
        served.a.Predict(inference_pb2.PredictRequest(model_name=DIABETES, patient_id=complete))
    )
    assert [v.field for v in no_purpose.violations] == ["purpose"]


async def test_a_batch_reports_each_patient_and_goes_on_after_an_error(served: Served) -> None:
    good = [await diabetes_patient(served) for _ in range(3)]
    lacking = await diabetes_patient(served, skip=("2093-3",))
    events = [
        event
        async for event in served.a.BatchPredict(
            inference_pb2.BatchPredictRequest(
                model_name=DIABETES, patient_ids=[good[0], lacking, *good[1:]], purpose=TREAT
            )
        )
    ]
    results = [e.result for e in events if e.HasField("result")]
    errors = [e.error for e in events if e.HasField("error")]
    progress = [e.progress for e in events if e.HasField("progress")]
    assert sorted(r.patient_id for r in results) == sorted(good)
    assert [(e.patient_id, e.reason) for e in errors] == [(lacking, "FEATURES_UNUSABLE")]
    assert {"s1", "s4"} <= set(errors[0].features)
    assert progress[0].total == 4
    assert (progress[-1].completed, progress[-1].failed) == (3, 1)
    for result in results:
        total = result.base_score + sum(c.contribution for c in result.contributions)
        assert total == pytest.approx(result.score, rel=1e-9, abs=1e-9)
        assert verify_prediction(parse_opening(result.prediction_opening), served.policy)


async def risk_assessments(served: Served, patient_id: str) -> list[str]:
    found = await served.record.SearchResources(
        record_pb2.SearchResourcesRequest(
            resource_type="RiskAssessment",
            params=[record_pb2.SearchParam(name="patient", value=patient_id)],
            purpose=TREAT,
        )
    )
    return [r.id for r in found.resources]


async def test_with_the_ledger_down_nothing_is_written(served: Served) -> None:
    patient_id = await diabetes_patient(served)
    down = await failure(served.cut.Predict(predict(patient_id)))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    assert down.metadata["dependency"] == "ledger"
    assert await risk_assessments(served, patient_id) == []


async def health(address: str) -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
        return int(reply.status)


async def test_triton_down_takes_health_down_and_predictions_unavailable(
    served: Served,
) -> None:
    """Last: it stops the module's Triton."""
    patient_id = await diabetes_patient(served)
    served.triton.stop()

    async def not_serving() -> bool:
        return await health(served.address) == health_pb2.HealthCheckResponse.NOT_SERVING

    await eventually(not_serving, within=15)
    before = await served.ledger.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
    down = await failure(served.a.Predict(predict(patient_id)))
    assert down.code == grpc.StatusCode.UNAVAILABLE
    assert down.metadata["dependency"] == "triton"
    batch = served.a.BatchPredict(
        inference_pb2.BatchPredictRequest(
            model_name=DIABETES, patient_ids=[patient_id], purpose=TREAT
        )
    )
    stopped = await failure(_drain(batch))
    assert stopped.code == grpc.StatusCode.UNAVAILABLE
    assert await risk_assessments(served, patient_id) == []
    written = await served.ledger.ListEntries(
        ledger_pb2.ListEntriesRequest(
            start_index=int(before.checkpoint.split(b"\n")[1]), page_size=1000
        )
    )
    assert ledger_pb2.EVENT_KIND_INFERENCE_MADE not in [e.entry.kind for e in written.entries]


async def _drain(stream: Any) -> list[Any]:
    return [event async for event in stream]
