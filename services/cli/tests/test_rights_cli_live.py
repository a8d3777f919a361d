"""``medledger record access-log``, ``audit`` and ``erase`` against the real record service
(over the testkit platform's identity and ledger, secantusdb and OpenBao): the access log
lists the writes and reads, the audit passes then names a damaged version, erasure needs
--yes and a ground, and afterwards the patient is gone (NOT_FOUND, ERASED)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from click.testing import Result
from pymongo import AsyncMongoClient
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.cli.main import app
from medledger.testkit.fhir_samples import sample
from medledger.testkit.platform import Platform
from medledger.testkit.record_server import start_record_server

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})


@dataclass
class Served:
    address: str
    writer: str  # hospital-a, holder of the patients' records
    eraser: str  # hospital-a, for purpose PATRQT
    auditor: str
    database: Any


async def cli(*args: str, stdin: str = "") -> Result:
    return await asyncio.to_thread(runner.invoke, app, list(args), input=stdin)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
async def served(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[Served]:
    database = f"rightscli{uuid.uuid4().hex[:8]}"
    server = await start_record_server(auth_platform, mongo_server, vault_server, database)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, directConnection=True
    )
    try:
        yield Served(
            address=f"127.0.0.1:{server.port}",
            writer=await auth_platform.token(
                "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_TREAT]
            ),
            eraser=await auth_platform.token(
                "system/*.cruds", "hospital-a", [purpose_pb2.PURPOSE_OF_USE_PATRQT]
            ),
            auditor=await auth_platform.token("audit.read", "hospital-a"),
            database=client[database],
        )
    finally:
        await client.close()
        await server.stop(0)


async def new_patient(served: Served) -> tuple[str, str]:
    """A Patient and one Observation of it, created with the CLI; their ids."""

    async def create(document: dict[str, Any]) -> str:
        done = await cli(
            "record", "create", "-", "--record", served.address, "--token", served.writer,
            stdin=json.dumps(document),
        )  # fmt: skip
        assert done.exit_code == 0, done.output
        return str(json.loads(done.stdout)["id"])

    patient = sample("Patient")
    del patient["id"]
    patient_id = await create(patient)
    observation = {**sample("Observation"), "subject": {"reference": f"Patient/{patient_id}"}}
    for unneeded in ("id", "encounter"):
        del observation[unneeded]
    return patient_id, await create(observation)


async def test_the_access_log_lists_writes_and_reads(served: Served) -> None:
    patient_id, observation_id = await new_patient(served)
    read = await cli(
        "record", "get", f"Observation/{observation_id}", "--record", served.address,
        "--token", served.writer,
    )  # fmt: skip
    assert read.exit_code == 0, read.output
    done = await cli(
        "record", "access-log", patient_id, "--record", served.address, "--token", served.writer,
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    rows = [line for line in done.stdout.splitlines() if "RECORD_" in line]
    assert [r.split("│")[3].strip() for r in rows] == [
        "RECORD_CREATED",
        "RECORD_CREATED",
        "RECORD_READ",
    ]
    assert f"Observation/{observation_id}" in done.stdout
    as_json = await cli(
        "record", "access-log", patient_id, "--json", "--record", served.address,
        "--token", served.writer,
    )  # fmt: skip
    document = json.loads(as_json.stdout)
    assert len(document["entries"]) == len(document["openings"]) == 4  # the last log read too


async def test_the_audit_passes_then_names_a_damaged_version(served: Served) -> None:
    await new_patient(served)
    clean = await cli("record", "audit", "--record", served.address, "--token", served.auditor)
    assert clean.exit_code == 0, clean.output
    assert "match their ledger entries" in clean.stdout
    versions = served.database["record_versions"]
    victim = await versions.find_one({"state": "committed"})
    assert victim is not None
    content = bytearray(victim["content"])
    content[-1] ^= 0x80
    await versions.update_one({"_id": victim["_id"]}, {"$set": {"content": bytes(content)}})
    try:
        damaged = await cli(
            "record", "audit", "--record", served.address, "--token", served.auditor
        )
    finally:
        await versions.update_one({"_id": victim["_id"]}, {"$set": victim})
    assert damaged.exit_code == 1
    assert f"the stored version {victim['_id']}: stored check failed" in flat(damaged.output)
    refused = await cli("record", "audit", "--record", served.address, "--token", served.writer)
    assert refused.exit_code == 1
    assert "PERMISSION_DENIED" in refused.output


async def test_erasure_needs_yes_and_a_ground_then_the_patient_is_gone(served: Served) -> None:
    patient_id, observation_id = await new_patient(served)
    base = ["record", "erase", patient_id, "--record", served.address, "--token", served.eraser]
    no_yes = await cli(*base, "--reason", "PATIENT_REQUEST")
    assert no_yes.exit_code == 2
    assert "--yes" in no_yes.output
    bad_ground = await cli(*base, "--reason", "BORED", "--yes")
    assert bad_ground.exit_code == 2
    done = await cli(*base, "--reason", "patient_request", "--yes")
    assert done.exit_code == 0, done.output
    assert f"Patient/{patient_id} erased: 2 resource version(s)" in flat(done.output)
    gone = await cli(
        "record", "get", f"Observation/{observation_id}", "--record", served.address,
        "--token", served.writer,
    )  # fmt: skip
    assert gone.exit_code == 1
    assert "ERASED" in gone.output
    again = await cli(*base, "--reason", "PATIENT_REQUEST", "--yes")
    assert again.exit_code == 1
    assert "ERASED" in again.output
