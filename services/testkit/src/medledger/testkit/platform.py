"""A real identity service (and the ledger it records token issuance in), in the test
process, for tests that run services with token checks: ``await platform.token(scopes)``
registers a partner client with those scopes and returns an access token for it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.identity.bootstrap import BootstrapPlan
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.identity.runtime import identity_runtime
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import from_settings as ledger_from_settings
from medledger.testkit.tokens import authed_channel

__all__ = ["Platform", "auth_platform", "authed_channel", "mongo_settings", "start_platform"]

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
OPERATORS = "medledger"
ADMIN_CLIENT = "ops-admin"


@dataclass
class Platform:
    identity_address: str
    ledger_address: str
    stub: identity_pb2_grpc.IdentityServiceAsyncStub
    config: IdentityConfig
    admin_key: OKPKey
    # The MongoDB database identity and the ledger keep their collections in.
    database: str = ""
    _clients: dict[tuple[str, str, tuple[int, ...]], tuple[str, OKPKey]] = field(
        default_factory=dict
    )

    async def _issue(self, client_id: str, key: OKPKey, scope: str) -> str:
        now = int(time.time())
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.config.token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        assertion = jwt.encode({"alg": "EdDSA", "kid": key.kid}, claims, key, algorithms=["EdDSA"])
        reply = await self.stub.IssueToken(
            identity_pb2.IssueTokenRequest(
                client_credentials=identity_pb2.ClientCredentialsGrant(
                    client_assertion_type=ASSERTION_TYPE,
                    client_assertion=assertion,
                    scope=scope,
                )
            )
        )
        return reply.access_token

    async def token(
        self,
        scope: str,
        organization: str = "test-org",
        purposes: Sequence[purpose_pb2.PurposeOfUse.ValueType] = (),
    ) -> str:
        """An access token of a partner client of ``organization`` holding ``scope`` and
        registered for ``purposes`` (one client per scope, organisation and purposes)."""
        client = (scope, organization, tuple(purposes))
        if client not in self._clients:
            admin = await self._issue(ADMIN_CLIENT, self.admin_key, "admin")
            metadata = [("authorization", f"Bearer {admin}")]
            try:
                await self.stub.CreateOrganization(
                    identity_pb2.CreateOrganizationRequest(
                        organization_id=organization, display_name=organization
                    ),
                    metadata=metadata,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                    raise
            client_id = f"client-{uuid.uuid4().hex[:10]}"
            key = OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})
            await self.stub.RegisterClient(
                identity_pb2.RegisterClientRequest(
                    client_id=client_id,
                    organization=organization,
                    jwks_json=json.dumps({"keys": [key.as_dict(private=False)]}),
                    allowed_scopes=scope.split(),
                    allowed_purposes=purposes,
                ),
                metadata=metadata,
            )
            self._clients[client] = (client_id, key)
        client_id, key = self._clients[client]
        return await self._issue(client_id, key, scope)


def mongo_settings(uri: str, database: str) -> MongoSettings:
    """A service's settings of ``database`` on the test server at ``uri``."""
    return MongoSettings(**{"MONGODB_URI": uri, "MEDLEDGER_MONGODB_DATABASE": database})


async def start_platform(
    mongo_uri: str, *, identity_vault: VaultSettings, ledger_vault: VaultSettings
) -> tuple[Platform, Callable[[], Awaitable[None]]]:
    """Identity and the ledger it records in, on free ports, each with its own Vault
    credentials; returns the platform and a function that stops it. Used by the
    ``auth_platform`` fixture and the benchmarks."""
    database = f"platform{uuid.uuid4().hex[:8]}"
    # The ledger checks identity's tokens (identity's own appends included), so it is told
    # where identity will listen before identity, which needs the ledger's address, starts.
    identity_address = f"127.0.0.1:{free_port()}"
    ledger = ServiceServer(
        ledger_from_settings(
            LedgerSettings(grpc_port=0),
            LedgerConfig(origin="platform.test/ledger", lease_ttl_seconds=2),
            mongo_settings(mongo_uri, database),
            ledger_vault,
            PeerSettings(identity_addr=identity_address),
        )
    )
    await ledger.start()
    admin_key = OKPKey.generate_key("Ed25519", parameters={"kid": "admin-1"})
    config = IdentityConfig()
    runtime = identity_runtime(
        IdentitySettings(grpc_port=int(identity_address.rsplit(":", 1)[1])),
        config,
        mongo_settings(mongo_uri, database),
        identity_vault,
        PeerSettings(ledger_addr=f"127.0.0.1:{ledger.port}"),
        BootstrapPlan(
            organization=OPERATORS,
            client_id=ADMIN_CLIENT,
            client_jwks_json=json.dumps({"keys": [admin_key.as_dict(private=False)]}),
            service_clients=("ledger", "record", "inference"),
        ),
    )
    identity = ServiceServer(runtime)
    await identity.start()
    assert runtime.bootstrapper is not None
    await asyncio.wait_for(runtime.bootstrapper.done.wait(), 60)
    channel = grpc.aio.insecure_channel(identity_address)
    platform = Platform(
        identity_address=identity_address,
        ledger_address=f"127.0.0.1:{ledger.port}",
        stub=identity_pb2_grpc.IdentityServiceStub(channel),
        config=config,
        admin_key=admin_key,
        database=database,
    )

    async def stop() -> None:
        await channel.close(None)
        await identity.stop(0)
        await ledger.stop(0)

    return platform, stop


@pytest.fixture(scope="session")
async def auth_platform(mongo_server: Any, vault_server: Any) -> AsyncIterator[Platform]:
    """Identity (with its ledger) serving on free ports; services under test point
    ``MEDLEDGER_IDENTITY_ADDR`` at ``platform.identity_address``."""
    platform, stop = await start_platform(
        mongo_server.uri,
        identity_vault=VaultSettings(
            addr=vault_server.addr, token=vault_server.token_for("identity")
        ),
        ledger_vault=VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
    )
    yield platform
    await stop()
