"""``medledger record``: the CLI's own behaviour (arguments, requests, output, exit status and
error rendering) against a fake RecordService in this process.

The fake is allowed here because what is under test is the command, not the record service:
it keeps resources in a dict, answers what the contract says (versions, pages, the errors
the real service raises, with their reasons and bad fields) and records each request so the
tests can see what the CLI sent. It is served by the real server bootstrap, so the token check
and the error mapping are the real ones. The live test against the real record service is in
test_record_cli_live.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.cli.main import app
from medledger.common.errors import Aborted, FieldViolation, InvalidArgument, NotFound
from medledger.common.service import Servicer
from medledger.record.server import RECORD_ACCESS
from medledger.testkit.inprocess import running
from medledger.testkit.tokens import TEST_TOKENS
from medledger.verify.receipts import read_receipt

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})

PATIENT = {"resourceType": "Patient", "name": [{"family": "Doe", "given": ["Jane"]}]}


class FakeRecords(record_pb2_grpc.RecordServiceServicer):
    """Versions in a dict; every request kept in ``requests``."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], list[record_pb2.StoredResource]] = {}
        self.requests: list[Any] = []
        self.by_key: dict[str, record_pb2.StoredResource] = {}
        self.leaves = 0

    def _store(self, document: dict[str, Any], key: str) -> record_pb2.StoredResource:
        if key in self.by_key:
            return self.by_key[key]
        if "birthDate" in document and document["birthDate"] == "yesterday":
            raise InvalidArgument(
                [FieldViolation("resource_json.birthDate", "not a FHIR date")],
                reason="RESOURCE_INVALID",
            )
        kind = document["resourceType"]
        resource_id = document.get("id") or str(len(self.versions) + 1)
        history = self.versions.setdefault((kind, resource_id), [])
        version = len(history) + 1
        document = {**document, "id": resource_id, "meta": {"versionId": str(version)}}
        self.leaves += 1
        stored = record_pb2.StoredResource(
            resource_type=kind,
            id=resource_id,
            version=version,
            resource_json=json.dumps(document),
            receipt=ledger_pb2.Receipt(
                leaf_index=100 + self.leaves,  # not 0, which JSON leaves out
                leaf_hash=bytes(32),
                checkpoint=b"fake.test/ledger\n1\nAAAA\n",
            ),
            commitment_salt=b"salt",
        )
        stored.updated_time.FromSeconds(1_700_000_000 + self.leaves)
        history.append(stored)
        self.by_key[key] = stored
        return stored

    def _history(self, kind: str, resource_id: str) -> list[record_pb2.StoredResource]:
        history = self.versions.get((kind, resource_id))
        if not history:
            raise NotFound("no such resource", reason="RESOURCE_NOT_FOUND")
        return history

    async def CreateResource(
        self, request: record_pb2.CreateResourceRequest, context: Any
    ) -> record_pb2.CreateResourceResponse:
        self.requests.append(request)
        document = json.loads(request.resource_json)
        document.pop("id", None)
        return record_pb2.CreateResourceResponse(
            resource=self._store(document, request.idempotency_key)
        )

    async def GetResource(
        self, request: record_pb2.GetResourceRequest, context: Any
    ) -> record_pb2.GetResourceResponse:
        self.requests.append(request)
        history = self._history(request.resource_type, request.id)
        if request.version > len(history):
            raise NotFound("no such version", reason="VERSION_NOT_FOUND")
        return record_pb2.GetResourceResponse(resource=history[request.version - 1])

    async def UpdateResource(
        self, request: record_pb2.UpdateResourceRequest, context: Any
    ) -> record_pb2.UpdateResourceResponse:
        self.requests.append(request)
        document = json.loads(request.resource_json)
        history = self._history(document["resourceType"], document["id"])
        if request.expected_version != len(history):
            raise Aborted(
                "the resource changed since the expected version; read it again",
                reason="STALE_VERSION",
            )
        return record_pb2.UpdateResourceResponse(
            resource=self._store(document, request.idempotency_key)
        )

    def _page(
        self, items: list[record_pb2.StoredResource], size: int, token: str
    ) -> tuple[list[record_pb2.StoredResource], str]:
        start = int(token or 0)
        end = start + (size or 2)  # a small default page, so walking takes several
        return items[start:end], str(end) if end < len(items) else ""

    async def ListResourceHistory(
        self, request: record_pb2.ListResourceHistoryRequest, context: Any
    ) -> record_pb2.ListResourceHistoryResponse:
        self.requests.append(request)
        newest_first = list(reversed(self._history(request.resource_type, request.id)))
        page, token = self._page(newest_first, request.page_size, request.page_token)
        return record_pb2.ListResourceHistoryResponse(versions=page, next_page_token=token)

    async def SearchResources(
        self, request: record_pb2.SearchResourcesRequest, context: Any
    ) -> record_pb2.SearchResourcesResponse:
        self.requests.append(request)
        bad = [p for p in request.params if p.name not in {"family", "gender"}]
        if bad:
            raise InvalidArgument(
                [FieldViolation(f"params.{p.name}", "not a search parameter") for p in bad],
                reason="SEARCH_PARAM_UNKNOWN",
            )
        latest = [h[-1] for (kind, _), h in self.versions.items() if kind == request.resource_type]
        family = {p.value for p in request.params if p.name == "family"}
        matching = [
            s
            for s in latest
            if not family or json.loads(s.resource_json)["name"][0]["family"] in family
        ]
        page, token = self._page(matching, request.page_size, request.page_token)
        return record_pb2.SearchResourcesResponse(resources=page, next_page_token=token)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRecords, str]]:
    records = FakeRecords()
    servicer = Servicer(records, record_pb2_grpc.add_RecordServiceServicer_to_server, RECORD_ACCESS)
    async with running(servicer, name="record") as server:
        yield records, f"127.0.0.1:{server.port}"


async def cli(address: str, *args: str, token: str | None = None, stdin: str = "") -> Result:
    """``medledger record ARGS`` against ``address``, in a thread: the command runs its own
    event loop, while the fake serves on the test's."""
    given = token if token is not None else TEST_TOKENS.token()
    return await asyncio.to_thread(
        runner.invoke,
        app,
        ["record", *args, "--record", address, "--token", given],
        input=stdin,
    )


def _one_line(result: Result) -> str:
    """The error: one line, the last on stderr (after the idempotency key of a write)."""
    lines = result.stderr.strip().splitlines()
    assert [line.startswith("✗") for line in lines].count(True) == 1, result.stderr
    assert lines[-1].startswith("✗"), result.stderr
    return lines[-1]


async def test_create_prints_the_resource_and_saves_the_receipt(
    fake: tuple[FakeRecords, str], tmp_path: Path
) -> None:
    records, address = fake
    source = tmp_path / "patient.json"
    source.write_text(json.dumps(PATIENT))
    receipt = tmp_path / "receipt.json"
    result = await cli(
        address, "create", str(source), "--purpose", "treat", "--receipt-out", str(receipt)
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)  # stdout is the resource alone
    assert created["resourceType"] == "Patient"
    assert created["id"] == "1"
    (request,) = records.requests
    assert request.resource_json == json.dumps(PATIENT)  # sent as written
    assert request.purpose == purpose_pb2.PURPOSE_OF_USE_TREAT
    # A fresh idempotency key, printed so that a retry can reuse it.
    assert len(request.idempotency_key) == 32
    assert f"--idempotency-key {request.idempotency_key}" in result.stderr
    assert "Patient/1 version 1" in result.stderr
    assert f"receipt saved to {receipt}" in result.stderr
    assert read_receipt(receipt) == records.versions["Patient", "1"][0].receipt


async def test_create_from_stdin_with_a_given_key_is_written_once(
    fake: tuple[FakeRecords, str],
) -> None:
    records, address = fake
    first = await cli(
        address, "create", "-", "--idempotency-key", "retry-1", stdin=json.dumps(PATIENT)
    )
    again = await cli(
        address, "create", "-", "--idempotency-key", "retry-1", stdin=json.dumps(PATIENT)
    )
    assert first.exit_code == again.exit_code == 0, first.output + again.output
    assert first.stdout == again.stdout
    assert "idempotency key" not in first.stderr  # only a generated key is announced
    assert [r.idempotency_key for r in records.requests] == ["retry-1", "retry-1"]
    assert list(records.versions) == [("Patient", "1")]


async def test_json_prints_the_whole_answer(fake: tuple[FakeRecords, str]) -> None:
    _, address = fake
    result = await cli(address, "create", "-", "--json", stdin=json.dumps(PATIENT))
    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)["resource"]
    assert stored["resourceType"] == "Patient"
    assert stored["version"] == "1"
    assert stored["receipt"]["leafIndex"] == "101"
    assert json.loads(stored["resourceJson"])["id"] == "1"


async def test_get_update_and_history(fake: tuple[FakeRecords, str], tmp_path: Path) -> None:
    records, address = fake
    assert (await cli(address, "create", "-", stdin=json.dumps(PATIENT))).exit_code == 0
    for version, family in ((1, "Roe"), (2, "Poe")):
        changed = {**PATIENT, "id": "1", "name": [{"family": family}]}
        updated = await cli(
            address,
            "update",
            "-",
            "--expected-version",
            str(version),
            stdin=json.dumps(changed),
        )
        assert updated.exit_code == 0, updated.output
        assert json.loads(updated.stdout)["meta"]["versionId"] == str(version + 1)

    latest = await cli(address, "get", "Patient/1", "--purpose", "HPAYMT")
    assert latest.exit_code == 0, latest.output
    assert json.loads(latest.stdout)["name"] == [{"family": "Poe"}]
    first = await cli(address, "get", "Patient/1", "--version", "1")
    assert json.loads(first.stdout)["name"][0]["family"] == "Doe"
    gets = [r for r in records.requests if isinstance(r, record_pb2.GetResourceRequest)]
    assert [(g.version, g.purpose) for g in gets] == [
        (0, purpose_pb2.PURPOSE_OF_USE_HPAYMT),
        (1, purpose_pb2.PURPOSE_OF_USE_TREAT),
    ]

    # Every page walked (the fake's pages hold 2), newest first.
    history = await cli(address, "history", "Patient/1", "--json")
    assert history.exit_code == 0, history.output
    walked = json.loads(history.stdout)
    assert [v["version"] for v in walked["versions"]] == ["3", "2", "1"]
    assert "nextPageToken" not in walked
    table = await cli(address, "history", "Patient/1")
    assert "Patient/1: 3 version(s)" in table.stdout
    assert "2023-11-14" in table.stdout  # the fake's update times

    # One page, and the token of the next.
    page = await cli(address, "history", "Patient/1", "--page-size", "1", "--json")
    assert [v["version"] for v in json.loads(page.stdout)["versions"]] == ["3"]
    assert json.loads(page.stdout)["nextPageToken"] == "1"
    rest = await cli(address, "history", "Patient/1", "--page-token", "1")
    assert "Patient/1: 2 version(s)" in rest.stdout
    assert "more:" not in rest.stderr
    listed = [r for r in records.requests if isinstance(r, record_pb2.ListResourceHistoryRequest)]
    assert [(r.page_size, r.page_token) for r in listed[-2:]] == [(1, ""), (0, "1")]


async def test_search_sends_each_param(fake: tuple[FakeRecords, str]) -> None:
    records, address = fake
    for family in ("Doe", "Roe", "Doe", "Doe"):
        document = {**PATIENT, "name": [{"family": family}]}
        assert (await cli(address, "create", "-", stdin=json.dumps(document))).exit_code == 0
    result = await cli(
        address, "search", "Patient", "-p", "family=Doe", "--param", "gender=a=b", "--json"
    )
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in json.loads(result.stdout)["resources"]] == ["1", "3", "4"]
    (search, *_) = (r for r in records.requests if isinstance(r, record_pb2.SearchResourcesRequest))
    assert [(p.name, p.value) for p in search.params] == [("family", "Doe"), ("gender", "a=b")]
    table = await cli(address, "search", "Patient", "-p", "family=Doe", "--page-size", "2")
    assert "2 Patient resource(s)" in table.stdout
    assert "Patient/3" in table.stdout
    assert "more: --page-token 2" in table.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "line"),
    [
        (["get", "Patient/404"], "",
         "✗ GetResource at {address}: NOT_FOUND RESOURCE_NOT_FOUND: no such resource"),
        (["create", "-"], json.dumps({**PATIENT, "birthDate": "yesterday"}),
         "✗ CreateResource at {address}: INVALID_ARGUMENT RESOURCE_INVALID: invalid request: "
         "resource_json.birthDate (resource_json.birthDate: not a FHIR date)"),
        (["update", "-", "--expected-version", "7"], json.dumps({**PATIENT, "id": "1"}),
         "✗ UpdateResource at {address}: ABORTED STALE_VERSION: the resource changed since the "
         "expected version; read it again"),
        (["search", "Patient", "-p", "colour=blue", "-p", "mood=calm"], "",
         "✗ SearchResources at {address}: INVALID_ARGUMENT SEARCH_PARAM_UNKNOWN: invalid request: "
         "params.colour, params.mood (params.colour: not a search parameter; params.mood: not a "
         "search parameter)"),
    ],
)  # fmt: skip
async def test_refusals_are_one_line_and_exit_1(
    fake: tuple[FakeRecords, str], args: list[str], stdin: str, line: str
) -> None:
    _, address = fake
    assert (await cli(address, "create", "-", stdin=json.dumps(PATIENT))).exit_code == 0
    result = await cli(address, *args, stdin=stdin)
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert _one_line(result).endswith(line.format(address=address))


async def test_token_refused_by_the_service(fake: tuple[FakeRecords, str]) -> None:
    _, address = fake
    refused = await cli(address, "get", "Patient/1", token=TEST_TOKENS.token(["ledger.read"]))
    assert refused.exit_code == 1, refused.output
    assert f"GetResource at {address}: PERMISSION_DENIED SCOPE_MISSING" in _one_line(refused)
    malformed = await cli(address, "get", "Patient/1", token="not-a-token")
    assert "UNAUTHENTICATED TOKEN_MALFORMED" in _one_line(malformed)


async def test_unreachable_service_exits_1() -> None:
    result = await cli("127.0.0.1:9", "get", "Patient/1", "--timeout", "2")
    assert result.exit_code == 1, result.output
    assert "GetResource at 127.0.0.1:9: UNAVAILABLE" in _one_line(result)
    assert "is the service up?" in result.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "why"),
    [
        (["get", "Patient"], "", "'Patient' is not Type/id"),
        (["get", "Patient/1/_history/2"], "", "is not Type/id"),
        (["get", "Patient/1", "--version", "-1"], "", "greater than or equal to 0"),
        (["history", "patient/1"], "", "'patient/1' is not Type/id"),
        (["history", "Patient/1", "--page-size", "0"], "", "greater than or equal to 1"),
        (["search", "Patient/1"], "", "'Patient/1' is not a FHIR resource type"),
        (["search", "Patient", "-p", "family"], "", "'family' is not name=value"),
        (["search", "Patient", "-p", "=Doe"], "", "'=Doe' is not name=value"),
        (["create", "-"], "{not json", "- is not JSON"),
        (["create", "-"], "[1, 2]", "- is not a FHIR resource (a JSON object)"),
        (["create", "/nonexistent/patient.json"], "", "cannot read /nonexistent/patient.json"),
        (["create", "-", "--purpose", "CURIOSITY"], json.dumps(PATIENT),
         "'CURIOSITY' is not one of TREAT"),
        (["update", "-"], json.dumps(PATIENT), "Missing option '--expected-version'"),
        (["update", "-", "--expected-version", "0"], json.dumps(PATIENT),
         "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_any_call(args: list[str], stdin: str, why: str) -> None:
    # Nothing listens on this address: a usage error must be found before any call.
    result = runner.invoke(
        app, ["record", *args, "--record", "127.0.0.1:9", "--token", "t"], input=stdin
    )
    assert result.exit_code == 2, result.output
    assert why in " ".join(result.output.split())
    assert "idempotency key" not in result.output  # none announced for a call never made


def test_a_token_is_required() -> None:
    result = runner.invoke(app, ["record", "get", "Patient/1", "--record", "127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "an access token is required" in " ".join(result.output.split())
