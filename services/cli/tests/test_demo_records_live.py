"""The demo's patient records (``medledger demo seed --record``, which ``dev up`` runs) against
the real record service over the testkit platform's identity and ledger, secantusdb and
OpenBao: each hospital's own app writes its carebundle patients once, a second seeding finds
them all and writes nothing, and the ids it lists are the server's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli import demo as demo_module
from medledger.cli.calls import bearer
from medledger.cli.demo import (
    DEMO_PATIENT,
    FRESH_STACK,
    PARTNER_CLIENTS,
    DemoPatient,
    Seeded,
    patients_file,
    seed_demo,
)
from medledger.cli.demo_records import (
    DEMO_IDENTIFIER_SYSTEM,
    DEMO_OBSERVATIONS,
    DEMO_RECORDS,
    RECORD_SCOPE,
    DemoRecord,
    bundle_entries,
    rewrite,
)
from medledger.cli.main import app
from medledger.cli.token import request_token
from medledger.common.keyfiles import load_private_key, public_jwks, write_private, write_public
from medledger.devstack.paths import StackPaths
from medledger.devstack.services import BOOTSTRAP_ADMIN_CLIENT
from medledger.testkit.platform import Platform
from medledger.testkit.record_server import start_record_server

TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT
PATRQT = purpose_pb2.PURPOSE_OF_USE_PATRQT
runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


@dataclass
class Demo:
    identity: str
    record: str
    paths: StackPaths

    def seed(self) -> list[Seeded]:
        return seed_demo(self.identity, self.paths, record=self.record)

    async def stub_for(self, client_id: str) -> tuple[Any, grpc.aio.Channel, Any]:
        key = load_private_key(self.paths.client_key(client_id))
        token = (await request_token(self.identity, client_id, key, RECORD_SCOPE)).access_token
        channel = grpc.aio.insecure_channel(self.record)
        return record_pb2_grpc.RecordServiceStub(channel), channel, bearer(token)

    async def users(self) -> dict[str, identity_pb2.User]:
        """Identity's users, by username (as the demo's admin client sees them)."""
        key = load_private_key(self.paths.client_key(BOOTSTRAP_ADMIN_CLIENT))
        token = (
            await request_token(self.identity, BOOTSTRAP_ADMIN_CLIENT, key, "admin")
        ).access_token
        async with grpc.aio.insecure_channel(self.identity) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            reply = await stub.ListUsers(
                identity_pb2.ListUsersRequest(page_size=1000), metadata=bearer(token)
            )
        return {u.username: u for u in reply.users}

    async def login(self, username: str, scope: str) -> str:
        """A user's token, logging in with the password the demo keeps for them."""
        async with grpc.aio.insecure_channel(self.identity) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            reply = await stub.IssueToken(
                identity_pb2.IssueTokenRequest(
                    password=identity_pb2.PasswordGrant(
                        username=username,
                        password=self.paths.password(username).read_text().strip(),
                        scope=scope,
                    )
                )
            )
        return str(reply.access_token)


@pytest.fixture(scope="module")
async def demo(
    auth_platform: Platform, mongo_server: Any, vault_server: Any, tmp_path_factory: Any
) -> AsyncIterator[Demo]:
    server = await start_record_server(
        auth_platform, mongo_server, vault_server, f"demorecords{uuid.uuid4().hex[:8]}"
    )
    # The stack's home as `dev up` leaves it: the bootstrap admin client's key pair.
    paths = StackPaths(tmp_path_factory.mktemp("demo") / "home")
    admin = auth_platform.admin_key
    write_private(paths.client_key(BOOTSTRAP_ADMIN_CLIENT), json.dumps(admin.as_dict(private=True)))
    write_public(paths.client_jwks(BOOTSTRAP_ADMIN_CLIENT), public_jwks(admin))
    try:
        yield Demo(auth_platform.identity_address, f"127.0.0.1:{server.port}", paths)
    finally:
        await server.stop(0)


async def _search(
    stub: Any, metadata: Any, resource_type: str, **params: str
) -> list[record_pb2.StoredResource]:
    found: list[record_pb2.StoredResource] = []
    token = ""
    while True:
        reply = await stub.SearchResources(
            record_pb2.SearchResourcesRequest(
                resource_type=resource_type,
                params=[record_pb2.SearchParam(name=k, value=v) for k, v in params.items()],
                page_size=100,
                page_token=token,
                purpose=TREAT,
            ),
            metadata=metadata,
        )
        found.extend(reply.resources)
        token = reply.next_page_token
        if not token:
            return found


async def _stored(demo: Demo, patients: list[dict[str, Any]]) -> dict[str, Counter[str]]:
    """Per demo patient: how many resources of each type the record service holds."""
    held: dict[str, Counter[str]] = {}
    for client_id in PARTNER_CLIENTS:
        stub, channel, metadata = await demo.stub_for(client_id)
        async with channel:
            for patient in (p for p in patients if p["client"] == client_id):
                counts: Counter[str] = Counter()
                for resource_type in patient["resources"]:
                    params = (
                        {"identifier": f"{DEMO_IDENTIFIER_SYSTEM}|{patient['key']}"}
                        if resource_type == "Patient"
                        else {"patient": patient["patient"]}
                    )
                    counts[resource_type] = len(
                        await _search(stub, metadata, resource_type, **params)
                    )
                held[patient["key"]] = counts
    return held


def _rows(seeded: list[Seeded]) -> list[Seeded]:
    return [s for s in seeded if s.kind == "patient record"]


def _patient_user(seeded: list[Seeded]) -> Seeded:
    (row,) = [s for s in seeded if s.kind == "patient user"]
    return row


async def test_seeding_twice_writes_the_records_once(demo: Demo) -> None:
    first = await asyncio.to_thread(demo.seed)
    rows = _rows(first)
    assert [r.created for r in rows] == [True] * len(DEMO_RECORDS)
    listed = json.loads(patients_file(demo.paths).read_text())["patients"]
    assert [p["key"] for p in listed] == [r.key for r in DEMO_RECORDS]
    for patient, record in zip(listed, DEMO_RECORDS, strict=True):
        assert patient["organization"] == record.organization
        assert patient["client"] == next(
            c for c, o in PARTNER_CLIENTS.items() if o == record.organization
        )
        assert patient["patient"].startswith("Patient/")
        # What a diabetes-progression model reads: BMI, blood pressure, lipids, glucose...
        assert patient["observations"].keys() == DEMO_OBSERVATIONS.keys()
        # ... and, for the breast-cancer-malignancy model, one patient's FNA cytology.
        assert patient["resources"]["Observation"] == len(DEMO_OBSERVATIONS) + len(record.cytology)
        assert patient["patient"] in " ".join(r.detail for r in rows)
    expected = {p["key"]: Counter(p["resources"]) for p in listed}
    assert await _stored(demo, listed) == expected

    # The patient user is the login of the demo patient hospital-a-1, as the record holds it.
    hospital_a_1 = next(p for p in listed if p["key"] == DEMO_PATIENT.record_key)
    patient_id = hospital_a_1["patient"].removeprefix("Patient/")
    user_row = _patient_user(first)
    assert user_row.created
    assert f"{DEMO_PATIENT.record_key}: Patient/{patient_id}" in user_row.name
    user = (await demo.users())[DEMO_PATIENT.username]
    assert user.kind == identity_pb2.USER_KIND_PATIENT
    assert (user.organization, user.patient_id) == ("hospital-a", patient_id)

    second = await asyncio.to_thread(demo.seed)
    assert [r.created for r in _rows(second)] == [False] * len(DEMO_RECORDS)
    again = _patient_user(second)
    assert not again.created
    assert again.name == user_row.name
    assert FRESH_STACK not in again.detail
    assert json.loads(patients_file(demo.paths).read_text())["patients"] == listed
    assert await _stored(demo, listed) == expected

    # The listed ids are the server's: the BMI Observation reads back, in its patient's
    # compartment, with a value.
    patient = listed[0]
    stub, channel, metadata = await demo.stub_for(patient["client"])
    async with channel:
        kind, bmi_id = patient["observations"]["39156-5"].split("/")
        bmi = await stub.GetResource(
            record_pb2.GetResourceRequest(resource_type=kind, id=bmi_id, purpose=TREAT),
            metadata=metadata,
        )
    observation = json.loads(bmi.resource.resource_json)
    assert observation["subject"] == {"reference": patient["patient"]}
    assert observation["valueQuantity"]["unit"] == "kg/m2"
    assert observation["encounter"]["reference"].startswith("Encounter/")
    assert "display" in observation["performer"][0]  # the Practitioner is not stored

    # Hospital B's app may not read hospital A's patient: no consent.
    stub, channel, metadata = await demo.stub_for("hospital-b-app")
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.GetResource(
                record_pb2.GetResourceRequest(
                    resource_type="Patient", id=patient["patient"].split("/")[1], purpose=TREAT
                ),
                metadata=metadata,
            )
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # The patient logs in with the password the demo keeps, and reads their own record
    # (PATIENT_SELF) and nobody else's.
    token = await demo.login(DEMO_PATIENT.username, "patient/*.rs")
    async with grpc.aio.insecure_channel(demo.record) as channel:
        stub = record_pb2_grpc.RecordServiceStub(channel)
        own = await stub.GetResource(
            record_pb2.GetResourceRequest(resource_type="Patient", id=patient_id, purpose=PATRQT),
            metadata=bearer(token),
        )
        assert own.resource.id == patient_id
        other = next(p for p in listed if p["key"] == "hospital-a-2")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetResource(
                record_pb2.GetResourceRequest(
                    resource_type="Patient",
                    id=other["patient"].removeprefix("Patient/"),
                    purpose=PATRQT,
                ),
                metadata=bearer(token),
            )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED

    # The CLI reads the list back for scripts.
    home = str(demo.paths.home)
    printed = runner.invoke(app, ["demo", "patient", "hospital-a-1", "--home", home])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.strip() == patient["patient"]
    bare = runner.invoke(app, ["demo", "patient", "hospital-a-1", "--id", "--home", home])
    assert bare.exit_code == 0, bare.output
    assert bare.stdout.strip() == patient["patient"].removeprefix("Patient/")
    bmi_ref = runner.invoke(
        app, ["demo", "patient", "hospital-a-1", "--observation", "39156-5", "--home", home]
    )
    assert bmi_ref.stdout.strip() == patient["observations"]["39156-5"]
    bmi_id = runner.invoke(
        app, ["demo", "patient", "hospital-a-1", "--observation", "39156-5", "--id", "--home", home]
    )
    assert bmi_id.stdout.strip() == patient["observations"]["39156-5"].partition("/")[2]
    table = runner.invoke(app, ["demo", "patients", "--home", home])
    assert table.exit_code == 0, table.output
    for p in listed:
        assert p["patient"] in table.stdout


async def test_a_patient_user_of_an_older_demo_is_kept_and_named(
    demo: Demo, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An older demo linked its patient user to a Patient id the record service never held;
    # identity cannot relink a user, so seeding keeps it and says how to start afresh.
    # (Another username than the demo's: this identity serves the other tests too.)
    older = DemoPatient("patient-older", DEMO_PATIENT.record_key, "hospital-a")
    monkeypatch.setattr(demo_module, "DEMO_PATIENT", older)
    key = load_private_key(demo.paths.client_key(BOOTSTRAP_ADMIN_CLIENT))
    token = (await request_token(demo.identity, BOOTSTRAP_ADMIN_CLIENT, key, "admin")).access_token
    async with grpc.aio.insecure_channel(demo.identity) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        try:
            await stub.CreateOrganization(
                identity_pb2.CreateOrganizationRequest(
                    organization_id="hospital-a", display_name="Hospital A"
                ),
                metadata=bearer(token),
            )
        except grpc.aio.AioRpcError as error:
            assert error.code() is grpc.StatusCode.ALREADY_EXISTS
        await stub.CreateUser(
            identity_pb2.CreateUserRequest(
                username=older.username,
                kind=identity_pb2.USER_KIND_PATIENT,
                organization="hospital-a",
                patient_id="patient-a-1",
                password="an older demo's password",
            ),
            metadata=bearer(token),
        )
    demo.paths.password(older.username).unlink(missing_ok=True)  # seeded by that older demo

    row = _patient_user(await asyncio.to_thread(demo.seed))
    assert not row.created
    assert row.name == f"{older.username} (Patient/patient-a-1, hospital-a)"
    assert "not the demo patient hospital-a-1" in row.detail
    assert FRESH_STACK in row.detail
    assert (await demo.users())[older.username].patient_id == "patient-a-1"


def test_bundle_references_become_server_references() -> None:
    entries, displays = bundle_entries(DemoRecord("x-1", "hospital-a", "type2_diabetes", 7, "F"))
    assert [e.resource_type for e in entries][:2] == ["Patient", "Encounter"]
    assert {e.resource_type for e in entries} == {
        "Patient",
        "Encounter",
        "Observation",
        "Condition",
        "MedicationRequest",
    }
    assert len(displays) == 1  # the Practitioner
    stored = {e.full_url: f"{e.resource_type}/id{i}" for i, e in enumerate(entries)}
    for entry in entries:
        assert entry.resource["identifier"][-1]["system"] == DEMO_IDENTIFIER_SYSTEM
        rewritten = json.dumps(rewrite(entry.resource, stored, displays))
        assert "urn:uuid:" not in rewritten.replace(
            entries[0].resource["identifier"][0]["system"], ""
        )
        assert '"reference": "Patient/id0"' in rewritten or entry.resource_type == "Patient"
    # The same seed gives the same bundle (and so the same demo ids, idempotency keys).
    again, _ = bundle_entries(DemoRecord("x-1", "hospital-a", "type2_diabetes", 7, "F"))
    assert [e.resource for e in again] == [e.resource for e in entries]
