"""End to end: an interface engine's messages over a real socket, through the listener, into
the real record service (with identity, the ledger, secantusdb and OpenBao): ADT^A01 accepted
and readable, a resend acknowledged without writing, errors located without values, a type
not taken rejected."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import pytest

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.api.record.v1 import record_pb2, record_pb2_grpc
from medledger.mllp.runtime import MllpRuntime
from medledger.testkit.platform import Platform
from medledger.testkit.tokens import authed_channel
from medledger.verify.trust import TrustPolicy

from .conftest import (
    ORG,
    SENDER,
    TREAT,
    Hl7Client,
    MllpClient,
    RecordService,
    adt_a01,
    errs,
    facilities_file,
    listening,
    msa,
)

AUTHORITY_OID = "1.2.840.99999.1"
WRITES = (ledger_pb2.EVENT_KIND_RECORD_CREATED, ledger_pb2.EVENT_KIND_RECORD_UPDATED)


@pytest.fixture(scope="module")
async def listener(
    auth_platform: Platform,
    record_service: RecordService,
    hl7_client: Hl7Client,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[MllpRuntime]:
    facilities = facilities_file(tmp_path_factory.mktemp("facilities"), hl7_client)
    async with listening(
        facilities, record_service.address, auth_platform.identity_address
    ) as runtime:
        yield runtime


class Ledger:
    def __init__(self, stub: ledger_pb2_grpc.LedgerServiceAsyncStub, policy: TrustPolicy):
        self.stub = stub
        self.policy = policy

    async def size(self) -> int:
        checkpoint = await self.stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
        return int(self.policy.open(checkpoint.checkpoint).size)

    async def entries_since(self, size: int) -> list[ledger_pb2.LedgerEntry]:
        reply = await self.stub.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=size, page_size=1000)
        )
        return [e.entry for e in reply.entries]


@pytest.fixture(scope="module")
async def ledger(auth_platform: Platform) -> AsyncIterator[Ledger]:
    channel = authed_channel(
        auth_platform.ledger_address, await auth_platform.token("ledger.read", ORG)
    )
    stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(channel)
    vkey = (await stub.GetVerifierKey(ledger_pb2.GetVerifierKeyRequest())).vkey
    yield Ledger(stub, TrustPolicy.parse([vkey]))
    await channel.close(None)


@pytest.fixture(scope="module")
async def reader(
    auth_platform: Platform, record_service: RecordService
) -> AsyncIterator[record_pb2_grpc.RecordServiceAsyncStub]:
    """Another client of the same hospital, which reads what the feed wrote."""
    token = await auth_platform.token("system/*.rs", ORG, [TREAT])
    channel = authed_channel(record_service.address, token)
    yield record_pb2_grpc.RecordServiceStub(channel)
    await channel.close(None)


def control() -> str:
    return uuid.uuid4().hex[:16]


async def test_an_admission_is_accepted_readable_and_its_resend_writes_nothing(
    listener: MllpRuntime,
    ledger: Ledger,
    reader: record_pb2_grpc.RecordServiceAsyncStub,
    hl7_client: Hl7Client,
) -> None:
    mrn, sent = f"MRN{uuid.uuid4().hex[:10]}", control()
    message = adt_a01(sent, mrn=mrn, authority=f"HOSP_A&{AUTHORITY_OID}&ISO")
    client = await MllpClient.connect(listener.port)
    size = await ledger.size()
    ack = await client.request(message)
    assert msa(ack) == ("AA", sent)
    assert all(str(e(4)) in {"W", "I"} for e in errs(ack))  # warnings at most
    written = [e for e in await ledger.entries_since(size) if e.kind in WRITES]
    assert len(written) == 2  # the Patient and the Encounter
    # Written as the facility's client, under its organisation.
    assert {(e.actor, e.organization) for e in written} == {(hl7_client.client_id, ORG)}

    found = await reader.SearchResources(
        record_pb2.SearchResourcesRequest(
            resource_type="Patient",
            params=[
                record_pb2.SearchParam(name="identifier", value=f"urn:oid:{AUTHORITY_OID}|{mrn}")
            ],
            purpose=TREAT,
        )
    )
    (patient,) = found.resources
    read = await reader.GetResource(
        record_pb2.GetResourceRequest(resource_type="Patient", id=patient.id, purpose=TREAT)
    )
    document = json.loads(read.resource.resource_json)
    assert document["birthDate"] == "1980-01-01"
    assert document["identifier"][0]["value"] == mrn

    # The engine lost the ACK and resends: AA again, nothing new written.
    size = await ledger.size()
    again = await client.request(message)
    assert msa(again) == ("AA", sent)
    assert [e for e in await ledger.entries_since(size) if e.kind in WRITES] == []
    # The same control id with other content is an error the sender must fix: AE at MSH-10.
    reused = await client.request(message.replace("Doe^Jane", "Doe^Joan"))
    assert msa(reused) == ("AE", sent)
    (err,) = errs(reused)
    assert str(err(2)) == "MSH^1^10"
    assert str(err(3)(1)(1)) == "205"
    await client.close()


async def test_field_errors_are_ae_located_without_values(
    listener: MllpRuntime, ledger: Ledger
) -> None:
    sent = control()
    client = await MllpClient.connect(listener.port)
    size = await ledger.size()
    ack = await client.request(adt_a01(sent, birth_date="19801399"))
    assert msa(ack) == ("AE", sent)
    located = {str(e(2)): e for e in errs(ack)}
    assert "PID^1^7" in located
    assert str(located["PID^1^7"](4)) == "E"
    assert b"19801399" not in str(ack).encode()
    assert [e for e in await ledger.entries_since(size) if e.kind in WRITES] == []
    await client.close()


async def test_a_message_type_not_taken_is_ar(listener: MllpRuntime) -> None:
    sent = control()
    client = await MllpClient.connect(listener.port)
    message = adt_a01(sent).replace("ADT^A01^ADT_A01", "ADT^A40^ADT_A39")
    ack = await client.request(message)
    assert msa(ack) == ("AR", sent)
    assert any(str(e(2)).startswith("MSH^1^9") for e in errs(ack))
    assert str(ack.segment("MSH")(9)) == "ACK^A40^ACK"
    await client.close()


async def test_several_messages_on_one_connection_are_answered_in_order(
    listener: MllpRuntime,
) -> None:
    client = await MllpClient.connect(listener.port)
    ids = [control() for _ in range(3)]
    # Sent back to back without waiting (pipelined): still one at a time, in order.
    for i in ids:
        await client.send(adt_a01(i, sender=SENDER))
    assert [msa(await client.ack()) for _ in ids] == [("AA", i) for i in ids]
    await client.close()


def enhanced(message: str, accept: str, application: str = "NE") -> str:
    """The message in enhanced acknowledgement mode (MSH-15, MSH-16)."""
    msh, rest = message.split("\r", 1)
    return f"{msh}|||{accept}|{application}\r{rest}"


async def test_enhanced_mode_commit_acks_are_sent_as_msh_15_asks(
    listener: MllpRuntime, ledger: Ledger
) -> None:
    client = await MllpClient.connect(listener.port)
    # AL: CA once stored and ledgered.
    sent, size = control(), await ledger.size()
    ack = await client.request(enhanced(adt_a01(sent), "AL"))
    assert msa(ack) == ("CA", sent)
    assert len([e for e in await ledger.entries_since(size) if e.kind in WRITES]) == 2
    # ER: nothing for a message stored; CE (with its ERR) for one with errors.
    quiet, size = control(), await ledger.size()
    await client.send(enhanced(adt_a01(quiet), "ER"))
    bad = control()
    ack = await client.request(enhanced(adt_a01(bad, birth_date="19801399"), "ER"))
    assert msa(ack) == ("CE", bad)  # the first acknowledgement back: the stored one sent none
    assert "PID^1^7" in {str(e(2)) for e in errs(ack)}
    assert len([e for e in await ledger.entries_since(size) if e.kind in WRITES]) == 2
    # SU: nothing for a message with errors; NE: never; then an original-mode message on the
    # same connection is answered: nothing was left unanswered in between.
    await client.send(enhanced(adt_a01(control(), birth_date="19801399"), "SU"))
    size = await ledger.size()
    await client.send(enhanced(adt_a01(control()), "NE"))
    last = control()
    assert msa(await client.request(adt_a01(last))) == ("AA", last)
    assert len([e for e in await ledger.entries_since(size) if e.kind in WRITES]) == 4
    # A value outside table 0155: rejected at MSH-15, in original mode.
    odd = await client.request(enhanced(adt_a01(control()), "XX"))
    assert msa(odd)[0] == "AR"
    assert str(errs(odd)[0](2)) == "MSH^1^15"
    await client.close()
