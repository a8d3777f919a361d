"""A real identity service (and the ledger it records token issuance in), in the test
process, for tests that run services with token checks: ``await platform.token(scopes)``
registers a partner client with those scopes and returns an access token for it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from joserfc import jwt
from joserfc.jwk import OKPKey

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.identity.__main__ import build_runtime as build_identity
from medledger.identity.bootstrap import BootstrapPlan
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.ledger.__main__ import build_runtime as build_ledger
from medledger.ledger.config import LedgerConfig, LedgerSettings

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
    _clients: dict[str, tuple[str, OKPKey]] = field(default_factory=dict)

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

    async def token(self, scope: str, organization: str = "test-org") -> str:
        """An access token of a partner client of ``organization`` holding ``scope``."""
        if scope not in self._clients:
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
                ),
                metadata=metadata,
            )
            self._clients[scope] = (client_id, key)
        client_id, key = self._clients[scope]
        return await self._issue(client_id, key, scope)


def _mongo(uri: str, database: str) -> MongoSettings:
    return MongoSettings(**{"MONGODB_URI": uri, "MEDLEDGER_MONGODB_DATABASE": database})


async def start_platform(
    mongo_uri: str, *, identity_vault: VaultSettings, ledger_vault: VaultSettings
) -> tuple[Platform, Callable[[], Awaitable[None]]]:
    """Identity and the ledger it records in, on free ports, each with its own Vault
    credentials; returns the platform and a function that stops it. Used by the
    ``auth_platform`` fixture and the benchmarks."""
    database = f"platform{uuid.uuid4().hex[:8]}"
    ledger = ServiceServer(
        build_ledger(
            LedgerSettings(grpc_port=0),
            LedgerConfig(origin="platform.test/ledger", lease_ttl_seconds=2),
            _mongo(mongo_uri, database),
            ledger_vault,
        )
    )
    await ledger.start()
    admin_key = OKPKey.generate_key("Ed25519", parameters={"kid": "admin-1"})
    config = IdentityConfig()
    runtime = build_identity(
        IdentitySettings(grpc_port=0),
        config,
        _mongo(mongo_uri, database),
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
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{identity.port}")
    platform = Platform(
        identity_address=f"127.0.0.1:{identity.port}",
        ledger_address=f"127.0.0.1:{ledger.port}",
        stub=identity_pb2_grpc.IdentityServiceStub(channel),
        config=config,
        admin_key=admin_key,
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


class _Bearer(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Adds ``authorization: Bearer <token>`` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        metadata.append(("authorization", f"Bearer {self._token}"))
        return details._replace(metadata=metadata)

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def authed_channel(address: str, token: str) -> grpc.aio.Channel:
    """An insecure channel whose every call carries ``token``."""
    interceptors: list[Any] = [_Bearer(token)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)
