"""IngestCsvLabResults and its stream against real servers (identity, ledger, secantusdb,
OpenBao): valid rows become Observations with receipts that verify, bad rows are located by
row and column without their values, a retry writes nothing new, patients are found by id or
by identifier, a large file is read as it arrives, and a ledger lost in the middle of a file
leaves no chunk half written (the retry finishes it).

The stream tests use one more record server, on the same database as the ``api`` fixture's,
that writes chunks of :data:`CHUNK` rows (RECORD_CSV_CHUNK_ROWS) and reaches the ledger
through a TCP relay the test can cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from medledger.api.ledger.v1 import ledger_pb2
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.common.errors import from_rpc_error
from medledger.devstack.process import free_port
from medledger.record.config import RecordConfig
from medledger.record.domain.csv_ingest import MAX_UNARY_ROWS
from medledger.testkit.record_server import start_record_server
from medledger.testkit.tokens import authed_channel

from . import test_record_api
from .test_record_api import (
    ORG_A,
    ORG_B,
    TREAT,
    Caller,
    RecordApi,
    check_receipt,
    failure,
    get,
    new_patient,
)

api = test_record_api.api  # the module-scoped fixture: its servers, started for this module

HEADER = "patient_id,loinc,value,unit,effective\r\n"
WHEN = "2024-03-01T08:30:00+01:00"
MRN_SYSTEM = "https://hospital-a.example/mrn"
CHUNK = 40


def row(patient: str, code: str = "2345-7", value: str = "5.4", unit: str = "mmol/L") -> str:
    return f"{patient},{code},{value},{unit},{WHEN}\r\n"


async def ingest(
    caller: Caller,
    text: str,
    key: str = "",
    mapping: record_pb2.CsvLabMapping | None = None,
) -> record_pb2.IngestCsvLabResultsResponse:
    return await caller.stub.IngestCsvLabResults(
        record_pb2.IngestCsvLabResultsRequest(
            csv=text, mapping=mapping, idempotency_key=key, purpose=TREAT
        )
    )


async def observations_of(caller: Caller, patient_id: str) -> list[str]:
    """The ids of the patient's Observations as readers see them."""
    ids: list[str] = []
    token = ""
    while True:
        page = await caller.stub.SearchResources(
            record_pb2.SearchResourcesRequest(
                resource_type="Observation",
                params=[record_pb2.SearchParam(name="patient", value=patient_id)],
                page_size=1000,
                page_token=token,
                purpose=TREAT,
            )
        )
        ids += [r.id for r in page.resources]
        token = page.next_page_token
        if not token:
            return ids


class Upload:
    """One IngestCsvLabResultsStream call, fed message by message as the test decides."""

    def __init__(self, stub: record_pb2_grpc.RecordServiceAsyncStub, token: str) -> None:
        self._queue: asyncio.Queue[record_pb2.IngestCsvLabResultsStreamRequest | None] = (
            asyncio.Queue()
        )
        self.call = stub.IngestCsvLabResultsStream(
            self._requests(), metadata=[("authorization", f"Bearer {token}")]
        )
        self.sent: list[int] = []  # the CSV bytes of each message

    async def _requests(self) -> AsyncIterator[record_pb2.IngestCsvLabResultsStreamRequest]:
        while (message := await self._queue.get()) is not None:
            yield message

    def send(self, csv: bytes = b"", **first: Any) -> None:
        self.sent.append(len(csv))
        self._queue.put_nowait(record_pb2.IngestCsvLabResultsStreamRequest(csv=csv, **first))

    def close(self) -> None:
        self._queue.put_nowait(None)

    async def response(self) -> record_pb2.IngestCsvLabResultsStreamResponse:
        answer = await asyncio.wait_for(self.call.read(), timeout=120)
        assert answer is not grpc.aio.EOF
        return answer  # type: ignore[return-value]

    async def rest(self) -> list[record_pb2.IngestCsvLabResultsStreamResponse]:
        """The answers not read yet, to the end of the call (``read``: gRPC does not let one
        call mix reads and iteration)."""
        answers = []
        while (answer := await asyncio.wait_for(self.call.read(), timeout=120)) is not grpc.aio.EOF:
            answers.append(answer)
        return answers  # type: ignore[return-value]


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def upload_all(
    stub: record_pb2_grpc.RecordServiceAsyncStub, token: str, data: bytes, key: str
) -> list[record_pb2.IngestCsvLabResultsStreamResponse]:
    upload = Upload(stub, token)
    upload.send(idempotency_key=key, purpose=TREAT)
    for piece in pieces(data, 8192):
        upload.send(piece)
    upload.close()
    return await upload.rest()


# -- the relayed server (its ledger can be cut) -----------------------------------------------


@dataclass
class Relay:
    """A TCP relay to the ledger: ``cut`` drops every connection and refuses new ones until
    ``restore``."""

    target: tuple[str, int]
    port: int = field(default_factory=free_port)
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        self._server = None

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@dataclass
class Relayed:
    relay: Relay
    a: Caller
    token: str


@pytest.fixture(scope="module")
async def relayed(api: RecordApi, mongo_server: Any, vault_server: Any) -> AsyncIterator[Relayed]:
    host, port = api.platform.ledger_address.rsplit(":", 1)
    relay = Relay((host, int(port)))
    await relay.restore()
    server = await start_record_server(
        api.platform,
        mongo_server,
        vault_server,
        api.database.name,
        config=RecordConfig(ledger_timeout_seconds=2.0, csv_chunk_rows=CHUNK),
        ledger_addr=f"127.0.0.1:{relay.port}",
    )
    token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    channel = authed_channel(f"127.0.0.1:{server.port}", token)
    try:
        yield Relayed(
            relay, Caller(record_pb2_grpc.RecordServiceStub(channel), api.a.client_id), token
        )
    finally:
        await channel.close(None)
        await server.stop(0)
        with contextlib.suppress(AssertionError):
            await relay.cut()


# -- unary ------------------------------------------------------------------------------------


async def test_good_rows_are_written_bad_rows_located_and_a_retry_writes_nothing(
    api: RecordApi,
) -> None:
    patient = await new_patient(api)
    unknown = str(uuid.uuid4())
    text = (
        HEADER
        + row(patient.id)  # row 1
        + row(patient.id, code="2345-8")  # 2: check digit
        + row(patient.id, code="718-7", value="<13", unit="g/dL")  # 3
        + row(patient.id, value="5.4.1", unit="mmHg")  # 4: value and unit
        + row(unknown)  # 5: no such Patient
        + f"{patient.id},2160-0,0.9,mg/dL,2999-01-01T00:00:00Z\r\n"  # 6: in the future
        + f"{patient.id},2160-0\r\n"  # 7: too few fields
        + row(patient.id, code="4548-4", value="6.1", unit="%")  # 8
    )
    key = f"labs-{uuid.uuid4().hex}"
    size = await api.size()
    reply = await ingest(api.a, text, key)
    assert (reply.rows_total, reply.rows_accepted) == (8, 3)
    assert [(i.location, i.code) for i in reply.issues] == [
        ("row 2 / loinc", "code-invalid"),
        ("row 4 / value", "value"),
        ("row 4 / unit", "code-invalid"),
        ("row 5 / patient_id", "not-found"),
        ("row 6 / effective", "value"),
        ("row 7", "structure"),
    ]
    assert {i.severity for i in reply.issues} == {record_pb2.ISSUE_SEVERITY_ERROR}
    said = " ".join(i.diagnostics for i in reply.issues)
    for value in ("2345-8", "5.4.1", "mmHg", unknown, "2999", patient.id):
        assert value not in said

    # Written in one ledger step: one checkpoint, contiguous leaves, nothing else appended.
    assert [w.resource_type for w in reply.written] == ["Observation"] * 3
    receipts = [w.receipt for w in reply.written]
    assert len({r.checkpoint for r in receipts}) == 1
    first = receipts[0].leaf_index
    assert [r.leaf_index for r in receipts] == [first, first + 1, first + 2]
    assert await api.size() == size + 3

    expected = [("2345-7", 5.4, "mmol/L", ""), ("718-7", 13, "g/dL", "<"), ("4548-4", 6.1, "%", "")]
    for written, (code, value, unit, comparator) in zip(reply.written, expected, strict=True):
        stored = await get(api.a, "Observation", written.id)
        assert stored.receipt == written.receipt
        await check_receipt(api, stored, ledger_pb2.EVENT_KIND_RECORD_CREATED)
        document = json.loads(stored.resource_json)
        assert document["status"] == "final"
        assert document["category"][0]["coding"][0]["code"] == "laboratory"
        assert document["code"]["coding"] == [{"system": "http://loinc.org", "code": code}]
        assert document["subject"] == {"reference": f"Patient/{patient.id}"}
        assert document["effectiveDateTime"] == WHEN
        quantity = document["valueQuantity"]
        assert (quantity["value"], quantity["code"], quantity.get("comparator", "")) == (
            value,
            unit,
            comparator,
        )
        assert quantity["system"] == "http://unitsofmeasure.org"

    # The retry: the same answer, nothing new in the ledger or the record.
    size = await api.size()
    again = await ingest(api.a, text, key)
    assert again == reply
    assert await api.size() == size
    assert sorted(await observations_of(api.a, patient.id)) == sorted(w.id for w in reply.written)


async def test_patients_found_by_identifier(api: RecordApi) -> None:
    mrn = f"MRN-{uuid.uuid4().hex[:8]}"
    patient = await new_patient(api, identifier=[{"system": MRN_SYSTEM, "value": mrn}])
    mapping = record_pb2.CsvLabMapping(
        patient_column="MRN",
        patient_identifier_system=MRN_SYSTEM,
        code_column="Test",
        value_column="Result",
        unit_column="Units",
        effective_column="Collected",
    )
    text = (
        "Collected,MRN,Test,Result,Units\n"
        f"{WHEN},{mrn},2345-7,99,mg/dL\n"
        f"{WHEN},MRN-nobody-{uuid.uuid4().hex[:6]},2345-7,99,mg/dL\n"
        f'{WHEN},"{patient.id}",2345-7,99,mg/dL\n'  # a Patient id is no MRN
    )
    reply = await ingest(api.a, text, mapping=mapping)
    assert [(i.location, i.code) for i in reply.issues] == [
        ("row 2 / MRN", "not-found"),
        ("row 3 / MRN", "not-found"),
    ]
    [written] = reply.written
    document = json.loads((await get(api.a, "Observation", written.id)).resource_json)
    assert document["subject"] == {"reference": f"Patient/{patient.id}"}
    assert document["valueQuantity"]["value"] == 99


async def test_rows_of_patients_the_caller_may_not_write_are_refused(api: RecordApi) -> None:
    patient = await new_patient(api)  # hospital A's; hospital B holds no consent
    token = await api.platform.token("system/*.cruds", ORG_B, [TREAT])
    async with authed_channel(api.record_address, token) as channel:
        b_writer = Caller(record_pb2_grpc.RecordServiceStub(channel), "")
        reply = await ingest(b_writer, HEADER + row(patient.id) + row(patient.id, "718-7"))
    assert reply.rows_accepted == 0
    assert [(i.location, i.code) for i in reply.issues] == [
        ("row 1 / patient_id", "forbidden"),
        ("row 2 / patient_id", "forbidden"),
    ]
    assert await observations_of(api.a, patient.id) == []


async def test_bad_requests_are_refused_naming_the_field(api: RecordApi) -> None:
    patient = await new_patient(api)
    size = await api.size()
    no_column = await failure(
        ingest(api.a, HEADER + row(patient.id), mapping=record_pb2.CsvLabMapping(unit_column="u"))
    )
    assert no_column.code == grpc.StatusCode.INVALID_ARGUMENT
    assert no_column.reason == "MAPPING_INVALID"
    assert [v.field for v in no_column.violations] == ["mapping.unit_column"]
    twice = await failure(
        ingest(api.a, HEADER, mapping=record_pb2.CsvLabMapping(value_column="LOINC"))
    )
    assert [v.field for v in twice.violations] == ["mapping.value_column"]
    empty = await failure(ingest(api.a, ""))
    assert [v.field for v in empty.violations] == ["csv"]
    no_purpose = await failure(
        api.a.stub.IngestCsvLabResults(record_pb2.IngestCsvLabResultsRequest(csv=HEADER))
    )
    assert [v.field for v in no_purpose.violations] == ["purpose"]
    too_many = await failure(ingest(api.a, HEADER + row(patient.id) * (MAX_UNARY_ROWS + 1)))
    assert too_many.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in too_many.violations] == ["csv"]
    assert "IngestCsvLabResultsStream" in too_many.violations[0].description
    assert await api.size() == size  # nothing written
    assert await observations_of(api.a, patient.id) == []


# -- the stream -------------------------------------------------------------------------------


async def test_a_large_file_is_read_and_written_as_it_arrives(
    api: RecordApi, relayed: Relayed
) -> None:
    """The first chunk's answer comes while most of the file is still unsent: the server
    reads a piece at a time and never waits for (nor holds) the whole file."""
    patient = await new_patient(api)
    count = CHUNK * 2 + 17
    data = ("\ufeff" + HEADER + row(patient.id) * count).encode()
    piece_size = 512
    parts = pieces(data, piece_size)
    upload = Upload(relayed.a.stub, relayed.token)
    upload.send(
        idempotency_key=f"big-{uuid.uuid4().hex}",
        purpose=TREAT,
        mapping=record_pb2.CsvLabMapping(),
    )
    # Enough pieces for one chunk and a little more, then wait for its answer.
    rows_per_piece = piece_size // len(row(patient.id))
    enough = CHUNK // rows_per_piece + 2
    for part in parts[:enough]:
        upload.send(part)
    first = await upload.response()
    assert len(first.written) == CHUNK
    assert first.rows_accepted == CHUNK
    assert CHUNK <= first.rows_read < count
    assert not first.done
    assert len({w.receipt.checkpoint for w in first.written}) == 1  # one ledger step
    for part in parts[enough:]:
        upload.send(part)
    upload.close()
    answers = [first, *await upload.rest()]
    assert len(parts) > 10  # the file was larger than any one message
    assert max(upload.sent) <= piece_size
    assert [len(a.written) for a in answers] == [CHUNK, CHUNK, 17]
    assert [a.done for a in answers] == [False, False, True]
    assert (answers[-1].rows_read, answers[-1].rows_accepted) == (count, count)
    assert all(not a.issues for a in answers)
    written = [w.id for a in answers for w in a.written]
    assert len(set(written)) == count
    assert sorted(await observations_of(api.a, patient.id)) == sorted(written)


async def test_stream_issues_and_bad_mapping(api: RecordApi) -> None:
    patient = await new_patient(api)
    token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    data = (HEADER + row(patient.id) + row(patient.id, unit="mmHg")).encode()
    answers = await upload_all(api.a.stub, token, data, "")
    [last] = answers
    assert last.done
    assert (last.rows_read, last.rows_accepted) == (2, 1)
    assert [(i.location, i.code) for i in last.issues] == [("row 2 / unit", "code-invalid")]

    upload = Upload(api.a.stub, token)
    upload.send(purpose=TREAT, mapping=record_pb2.CsvLabMapping(code_column="test"))
    upload.send(data)
    upload.close()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await upload.rest()
    error = from_rpc_error(raised.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == ["mapping.code_column"]

    upload = Upload(api.a.stub, token)
    upload.send(data, purpose=TREAT)
    upload.send(b"", purpose=TREAT)  # only the first message names the purpose
    upload.close()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await upload.rest()
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_refused_stream_answers_its_status_however_much_the_client_still_sends(
    api: RecordApi,
) -> None:
    """The server reads the rest of a refused stream before answering, so the client gets
    the status it was sent, never gRPC's INTERNAL for a write after the end."""
    token = await api.platform.token("system/*.cruds", ORG_A, [TREAT])
    for _ in range(10):
        upload = Upload(api.a.stub, token)
        for _ in range(3):
            upload.send()  # no purpose
        for _ in range(20):
            upload.send(b"x" * 65536)
        upload.close()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await upload.rest()
        error = from_rpc_error(raised.value)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in error.violations] == ["purpose"]


async def test_ledger_lost_mid_file_leaves_no_chunk_half_written(
    api: RecordApi, relayed: Relayed
) -> None:
    patient = await new_patient(api)
    count = CHUNK + 12
    data = (HEADER + row(patient.id) * count).encode()
    key = f"cut-{uuid.uuid4().hex}"
    upload = Upload(relayed.a.stub, relayed.token)
    upload.send(idempotency_key=key, purpose=TREAT)
    cut_at = len(HEADER) + len(row(patient.id)) * (CHUNK + 5)
    head, tail = data[:cut_at], data[cut_at:]
    upload.send(head)
    first = await upload.response()
    assert len(first.written) == CHUNK

    await relayed.relay.cut()
    upload.send(tail)
    upload.close()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await upload.rest()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    # The first chunk is there with its receipts; of the second, nothing is visible.
    visible = await observations_of(api.a, patient.id)
    assert sorted(visible) == sorted(w.id for w in first.written)

    # The retry with the same key: the first chunk answered as it was, the second finished.
    await relayed.relay.restore()
    answers = await _retry_until_served(relayed, data, key)
    assert [w.id for w in answers[0].written] == [w.id for w in first.written]
    assert [w.receipt for w in answers[0].written] == [w.receipt for w in first.written]
    assert answers[-1].done
    assert answers[-1].rows_accepted == count
    written = [w.id for a in answers for w in a.written]
    assert len(set(written)) == count
    assert sorted(await observations_of(api.a, patient.id)) == sorted(written)


async def _retry_until_served(
    relayed: Relayed, data: bytes, key: str
) -> Sequence[record_pb2.IngestCsvLabResultsStreamResponse]:
    """gRPC reconnects to a restored peer after a backoff: the retry is sent again while the
    answer is UNAVAILABLE."""
    for _ in range(60):
        try:
            return await upload_all(relayed.a.stub, relayed.token, data, key)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("the record server never reached the restored ledger")
