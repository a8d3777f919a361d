"""``python -m medledger.mllp`` as the local stack runs it (the devstack component on a free
port, against this session's identity and record service): ready when its port accepts and
its log says so, the demo feed's ADT^A01 accepted once identity knows the feed's client, and
stopped by its pid."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from medledger.api.identity.v1 import identity_pb2
from medledger.common.keyfiles import load_private_key, public_jwks
from medledger.devstack import mllp as devstack_mllp
from medledger.devstack.mllp import DEMO_HL7_FEEDS, HL7_CLIENT_SCOPES, Hl7Feed, MllpServer
from medledger.devstack.paths import StackPaths
from medledger.devstack.probes import Health
from medledger.devstack.process import free_port
from medledger.testkit.platform import Platform

from .conftest import (
    TREAT,
    MllpClient,
    RecordService,
    admin_metadata,
    adt_a01,
    ensure_organization,
    errs,
    msa,
)


@pytest.fixture
def paths(tmp_path: Path) -> StackPaths:
    paths = StackPaths(tmp_path / "home")
    paths.make_home()
    return paths


async def test_the_stack_component_serves_the_demo_feed(
    auth_platform: Platform,
    record_service: RecordService,
    paths: StackPaths,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The demo feed under a client id of its own: this session's identity is shared, and a
    # module that runs `demo seed` against it registers the demo's id with another key.
    (demo,) = DEMO_HL7_FEEDS
    feed = Hl7Feed(
        f"{demo.client_id}-{uuid.uuid4().hex[:6]}", demo.organization, demo.sending_facilities
    )
    monkeypatch.setattr(devstack_mllp, "DEMO_HL7_FEEDS", (feed,))
    server = MllpServer(
        port=free_port(),
        paths=paths,
        identity_addr=auth_platform.identity_address,
        record_addr=record_service.address,
        log_file=paths.log("mllp"),
        pid_file=paths.pid("mllp"),
        die_with_parent=True,
    )
    await asyncio.to_thread(server.start)
    try:
        assert server.health() is Health.SERVING
        assert "mllp listener ready" in paths.log("mllp").read_text()
        client = await MllpClient.connect(server.port)
        # Before the feed's client is registered (what `demo seed` does after `dev up`):
        # nothing processed, the engine is told to resend.
        early = uuid.uuid4().hex[:16]
        ack = await client.request(adt_a01(early, sender="HOSP-A"))
        assert msa(ack) == ("AR", early)
        assert str(errs(ack)[0](3)(1)(1)) == "207"

        await ensure_organization(auth_platform, feed.organization)
        await auth_platform.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id=feed.client_id,
                organization=feed.organization,
                jwks_json=public_jwks(load_private_key(paths.client_key(feed.client_id))),
                allowed_scopes=HL7_CLIENT_SCOPES,
                allowed_purposes=[TREAT],
            ),
            metadata=await admin_metadata(auth_platform),
        )
        sent = uuid.uuid4().hex[:16]
        assert msa(await client.request(adt_a01(sent, sender="HOSP-A"))) == ("AA", sent)
        # The resend of the message that was refused goes through now.
        assert msa(await client.request(adt_a01(early, sender="HOSP-A"))) == ("AA", early)
        await client.close()
    finally:
        assert await asyncio.to_thread(server.stop)
    assert server.health() is Health.DOWN
