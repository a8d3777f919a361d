"""The listener over a real socket: framing as engines send it (split reads, several
messages per connection, noise, broken frames), unknown facilities, limits (size, idle,
connections), and a record service that does not answer."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from pymongo import AsyncMongoClient

from medledger.mllp.domain.framing import encode_frame
from medledger.testkit.platform import Platform

from .conftest import (
    Hl7Client,
    MllpClient,
    adt_a01,
    dead_address,
    errs,
    facilities_file,
    listening,
    msa,
    start_record,
)


def control() -> str:
    return uuid.uuid4().hex[:16]


async def test_framing_as_engines_send_it(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path
) -> None:
    """Messages from a facility not configured (answered AR without any service), sent in
    every shape of stream: each gets its own ACK, in order, on the same connection."""
    async with listening(
        facilities_file(tmp_path, hl7_client), dead_address(), auth_platform.identity_address
    ) as runtime:
        client = await MllpClient.connect(runtime.port)
        ids = [control() for _ in range(5)]
        messages = [adt_a01(i, sender="UNKNOWN_HOSP").encode() for i in ids]
        # Noise before the first start block, two messages in one write, one split in
        # three writes, a stray LF between frames, a frame without its final CR.
        await client.send_raw(b"hello\r\n" + encode_frame(messages[0]) + encode_frame(messages[1]))
        wire = encode_frame(messages[2])
        for piece in (wire[:3], wire[3:40], wire[40:]):
            await client.send_raw(piece)
            await asyncio.sleep(0.05)
        await client.send_raw(b"\n" + encode_frame(messages[3]))
        await client.send_raw(b"\x0b" + messages[4] + b"\x1c")
        acks = [await client.ack() for _ in ids]
        assert [msa(a) for a in acks] == [("AR", i) for i in ids]
        for ack in acks:
            (err,) = errs(ack)
            assert str(err(2)) == "MSH^1^4"
            assert str(err(3)(1)(1)) == "204"
            assert str(err(4)) == "E"
        await client.close()


async def test_a_broken_frame_is_answered_and_the_connection_kept(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path
) -> None:
    async with listening(
        facilities_file(tmp_path, hl7_client), dead_address(), auth_platform.identity_address
    ) as runtime:
        client = await MllpClient.connect(runtime.port)
        later = control()
        stub = b"\x0b" + adt_a01(control()).encode()[:60]
        await client.send_raw(stub + encode_frame(adt_a01(later, sender="NOBODY").encode()))
        nak = await client.ack()
        assert msa(nak) == ("AR", "")  # its control id cannot be trusted: not echoed
        assert str(errs(nak)[0](3)(1)(1)) == "100"
        assert msa(await client.ack()) == ("AR", later)
        # Not a message at all inside a frame: AR, located at MSH.
        bad = await client.request("PID|1||MRN1^^^X^MR||Doe^Jane")
        assert msa(bad) == ("AR", "")
        assert str(errs(bad)[0](2)) == "MSH^1"
        assert b"Doe" not in str(bad).encode()
        await client.close()


async def test_an_oversize_message_is_rejected_and_the_connection_closed(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path
) -> None:
    async with listening(
        facilities_file(tmp_path, hl7_client),
        dead_address(),
        auth_platform.identity_address,
        mllp_max_message_bytes=2048,
    ) as runtime:
        client = await MllpClient.connect(runtime.port)
        big = adt_a01(control()) + "\rNTE|1||" + "x" * 4096
        await client.send(big)
        ack = await client.ack()
        assert msa(ack)[0] == "AR"
        assert str(errs(ack)[0](3)(1)(1)) == "207"
        assert await client.closed_by_listener()
        # The listener itself goes on.
        other = await MllpClient.connect(runtime.port)
        small = control()
        assert msa(await other.request(adt_a01(small, sender="NOBODY"))) == ("AR", small)
        await other.close()


async def test_an_idle_connection_is_closed(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path
) -> None:
    async with listening(
        facilities_file(tmp_path, hl7_client),
        dead_address(),
        auth_platform.identity_address,
        mllp_idle_timeout_seconds=0.5,
    ) as runtime:
        client = await MllpClient.connect(runtime.port)
        assert await client.closed_by_listener(timeout=10)
        assert runtime.listener.connections == 0


async def test_connections_past_the_cap_are_closed_at_once(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path
) -> None:
    async with listening(
        facilities_file(tmp_path, hl7_client),
        dead_address(),
        auth_platform.identity_address,
        mllp_max_connections=1,
    ) as runtime:
        first = await MllpClient.connect(runtime.port)
        one = control()
        assert msa(await first.request(adt_a01(one, sender="NOBODY"))) == ("AR", one)
        second = await MllpClient.connect(runtime.port)
        assert await second.closed_by_listener()
        # The first is still served.
        two = control()
        assert msa(await first.request(adt_a01(two, sender="NOBODY"))) == ("AR", two)
        await first.close()


async def test_the_record_service_down_is_ar_and_nothing_is_written(
    auth_platform: Platform,
    hl7_client: Hl7Client,
    mongo_server: Any,
    vault_server: Any,
    tmp_path: Path,
) -> None:
    record = await start_record(auth_platform, mongo_server, vault_server)
    await record.server.stop(0)  # it stops answering; its data stays
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_server.uri, directConnection=True
    )
    try:
        async with listening(
            facilities_file(tmp_path, hl7_client), record.address, auth_platform.identity_address
        ) as runtime:
            client = await MllpClient.connect(runtime.port)
            sent = control()
            ack = await client.request(adt_a01(sent))
            assert msa(ack) == ("AR", sent)
            (err,) = errs(ack)
            assert str(err(3)(1)(1)) == "207"
            assert "resend later" in str(err(8))
            await client.close()
        database = mongo[record.database]
        for name in await database.list_collection_names():
            assert await database[name].count_documents({}) == 0, name
    finally:
        await mongo.close()


async def test_stopping_closes_open_connections_quietly(
    auth_platform: Platform, hl7_client: Hl7Client, tmp_path: Path, caplog: Any
) -> None:
    async with listening(
        facilities_file(tmp_path, hl7_client), dead_address(), auth_platform.identity_address
    ) as runtime:
        client = await MllpClient.connect(runtime.port)
        one = control()
        assert msa(await client.request(adt_a01(one, sender="NOBODY"))) == ("AR", one)
        with caplog.at_level("ERROR"):
            await runtime.stop(0.1)  # the engine keeps its connection open
            assert await client.closed_by_listener()
            await asyncio.sleep(0.1)
        assert runtime.listener.connections == 0
        assert [r for r in caplog.records if r.levelname == "ERROR"] == []
