"""The listener against real servers: identity and its ledger (the testkit platform), the
record service in this process, a hospital's HL7 client registered with identity, and a
listener on a free port with its facilities file. An MLLP client speaks to it over a real
socket."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import hl7
import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.keyfiles import ensure_key_pair
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.mllp.config import MllpSettings
from medledger.mllp.domain.facilities import DEFAULT_SCOPE
from medledger.mllp.domain.framing import Frame, MllpDecoder, encode_frame
from medledger.mllp.runtime import MllpRuntime, from_settings
from medledger.record.config import RecordConfig, RecordSettings
from medledger.record.runtime import from_settings as record_from_settings
from medledger.testkit.platform import ADMIN_CLIENT, Platform

ORG = "hospital-a"
SENDER = "HOSP_A"  # MSH-4 of the hospital's engine
TREAT = purpose_pb2.PURPOSE_OF_USE_TREAT


@dataclass(frozen=True)
class Hl7Client:
    """The hospital's HL7 client, as identity registered it, with its key file."""

    client_id: str
    key_file: Path


@dataclass
class RecordService:
    address: str
    database: str
    server: ServiceServer


async def start_record(platform: Platform, mongo_server: Any, vault_server: Any) -> RecordService:
    database = f"mllp{uuid.uuid4().hex[:8]}"
    server = ServiceServer(
        record_from_settings(
            RecordSettings(grpc_port=0),
            MongoSettings(MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=database),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record")),
            PeerSettings(
                identity_addr=platform.identity_address, ledger_addr=platform.ledger_address
            ),
            RecordConfig(),
        )
    )
    await server.start()
    return RecordService(f"127.0.0.1:{server.port}", database, server)


@pytest.fixture(scope="session")
async def record_service(
    auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[RecordService]:
    service = await start_record(auth_platform, mongo_server, vault_server)
    yield service
    await service.server.stop(0)


async def admin_metadata(platform: Platform) -> list[tuple[str, str]]:
    admin = await platform._issue(ADMIN_CLIENT, platform.admin_key, "admin")
    return [("authorization", f"Bearer {admin}")]


async def ensure_organization(platform: Platform, organization: str) -> None:
    try:
        await platform.stub.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(
                organization_id=organization, display_name=organization
            ),
            metadata=await admin_metadata(platform),
        )
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.ALREADY_EXISTS:  # made by an earlier module
            raise


async def register_hl7_client(
    platform: Platform, keys: Path, organization: str = ORG, scope: str = DEFAULT_SCOPE
) -> Hl7Client:
    """A client of ``organization`` as a hospital's HL7 feed is registered, with its key."""
    metadata = await admin_metadata(platform)
    await ensure_organization(platform, organization)
    client_id = f"{organization}-hl7-{uuid.uuid4().hex[:6]}"
    pair = ensure_key_pair(client_id, keys / f"{client_id}.jwk", keys / f"{client_id}.jwks")
    await platform.stub.RegisterClient(
        identity_pb2.RegisterClientRequest(
            client_id=client_id,
            organization=organization,
            jwks_json=pair.jwks_json,
            allowed_scopes=scope.split(),
            allowed_purposes=[TREAT],
        ),
        metadata=metadata,
    )
    return Hl7Client(client_id, pair.private_file)


@pytest.fixture(scope="session")
async def hl7_client(
    auth_platform: Platform, tmp_path_factory: pytest.TempPathFactory
) -> Hl7Client:
    return await register_hl7_client(auth_platform, tmp_path_factory.mktemp("keys"))


def facilities_file(
    folder: Path,
    client: Hl7Client,
    *,
    senders: Sequence[str] = (SENDER,),
    names: Sequence[str] = (),
) -> Path:
    path = folder / f"facilities-{uuid.uuid4().hex[:6]}.json"
    entry = {
        "id": "hospital-a",
        "client_id": client.client_id,
        "key_file": str(client.key_file),
        "sending_facilities": list(senders),
        "certificate_names": list(names),
    }
    path.write_text(json.dumps({"facilities": [entry]}), encoding="utf-8")
    return path


@asynccontextmanager
async def listening(
    facilities: Path, record_address: str, identity_address: str, **settings: Any
) -> AsyncIterator[MllpRuntime]:
    """A listener on a free loopback port until the block ends."""
    runtime = from_settings(
        MllpSettings(mllp_port=0, mllp_facilities_file=facilities, **settings),
        PeerSettings(identity_addr=identity_address, record_addr=record_address),
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(1.0)


def dead_address() -> str:
    return f"127.0.0.1:{free_port()}"


class MllpClient:
    """An interface engine's end of one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = MllpDecoder(1 << 20)
        self.pending: list[bytes] = []

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> MllpClient:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
        )
        return cls(reader, writer)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, message: str) -> None:
        await self.send_raw(encode_frame(message.encode("utf-8")))

    async def ack(self, timeout: float = 30.0) -> hl7.Message:
        """The next acknowledgement, parsed."""
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("the listener closed the connection")
            self.pending += [e.payload for e in self.decoder.feed(data) if isinstance(e, Frame)]
        return hl7.parse(self.pending.pop(0).decode("utf-8"))

    async def request(self, message: str) -> hl7.Message:
        await self.send(message)
        return await self.ack()

    async def closed_by_listener(self, timeout: float = 10.0) -> bool:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionError, ssl.SSLError):
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()


def adt_a01(
    control_id: str,
    *,
    sender: str = SENDER,
    mrn: str = "",
    authority: str = "HOSP_A&1.2.840.99999.1&ISO",
    birth_date: str = "19800101",
) -> str:
    mrn = mrn or f"MRN{uuid.uuid4().hex[:10]}"
    return "\r".join(
        [
            f"MSH|^~\\&|EPIC|{sender}|MEDLEDGER|ML|20260301083000||ADT^A01^ADT_A01|{control_id}|P|2.5",
            "EVN|A01|20260301083000",
            f"PID|1||{mrn}^^^{authority}^MR||Doe^Jane||{birth_date}|F",
            "PV1|1|I|WARD1^101^1",
        ]
    )


def msa(ack: hl7.Message) -> tuple[str, str]:
    segment = ack.segment("MSA")
    return str(segment(1)), str(segment(2))


def errs(ack: hl7.Message) -> list[hl7.Segment]:
    return [s for s in ack if str(s[0]) == "ERR"]
