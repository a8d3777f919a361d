"""Identity under test: built by its own ``identity_runtime`` against the session's real MongoDB
and OpenBao, served by the real bootstrap with its token verifier, appending to a real
in-process ledger. Nothing is mocked.

``identity`` gives each test a fresh database and a bootstrap admin client whose private
key the test holds; helpers sign client assertions and build call metadata.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.auth import JwksTokenVerifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.errors import from_rpc_error
from medledger.common.scopes import LEDGER_READ
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.identity.adapters.vault_signer import VaultTokenSigner
from medledger.identity.bootstrap import BootstrapPlan
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.identity.domain.assertions import ASSERTION_TYPE
from medledger.identity.runtime import IdentityRuntime, identity_runtime
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import authed_channel

ADMIN_CLIENT = "ops-admin"
OPERATORS = "medledger"

SigningKey = OKPKey | ECKey | RSAKey


@pytest.fixture(scope="session")
def identity_vault_token(vault_server: Any) -> str:
    """Identity's own Vault token: its policy only, as the stack and the chart run it."""
    return str(vault_server.token_for("identity"))


def identity_keys(vault_server: Any, identity_vault_token: str) -> VaultTokenSigner:
    """Identity's token signing key in Vault, shared by every identity of the session."""
    vault = VaultSettings(addr=vault_server.addr, token=identity_vault_token)
    return VaultTokenSigner(VaultTransit(vault), IdentityConfig().signing_key)


async def ledger_reader_token(vault_server: Any, identity_vault_token: str) -> str:
    """A token as identity issues them, holding ``ledger.read``, to read the ledger with
    (signed afresh: tests rotate the key, and only the latest versions stay published)."""
    config, now = IdentityConfig(), int(time.time())
    return await identity_keys(vault_server, identity_vault_token).sign(
        {
            "iss": config.issuer,
            "aud": config.default_audience,
            "sub": "identity-tests",
            "scope": LEDGER_READ,
            "iat": now,
            "exp": now + 3600,
        }
    )


@contextlib.asynccontextmanager
async def serving_ledger(
    mongo_server: Any, vault_server: Any, identity_vault_token: str
) -> AsyncIterator[ServiceServer]:
    """A ledger of its own database, serving once its sequencer has a checkpoint. It takes
    identity's appends (and the tests' reads) with tokens identity's key signed, checked
    against that key in Vault: the ledger needs no identity address."""
    config = IdentityConfig()
    verifier = JwksTokenVerifier(
        identity_keys(vault_server, identity_vault_token).jwks,
        issuer=config.issuer,
        audience=config.default_audience,
    )
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0, health_interval_seconds=0.2),
        LedgerConfig(origin="identity.test/ledger", lease_ttl_seconds=2),
        MongoSettings(
            MONGODB_URI=mongo_server.uri,
            MEDLEDGER_MONGODB_DATABASE=f"il{uuid.uuid4().hex[:10]}",
        ),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
        verifier=verifier,
    )
    server = ServiceServer(runtime)
    await server.start()
    reader = await ledger_reader_token(vault_server, identity_vault_token)
    async with authed_channel(f"127.0.0.1:{server.port}", reader) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(100):  # until the sequencer holds its lease and has a checkpoint
            try:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest())
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture(scope="session")
async def ledger_server(
    mongo_server: Any, vault_server: Any, identity_vault_token: str
) -> AsyncIterator[ServiceServer]:
    async with serving_ledger(mongo_server, vault_server, identity_vault_token) as server:
        yield server


@pytest.fixture
async def own_ledger_server(
    mongo_server: Any, vault_server: Any, identity_vault_token: str
) -> AsyncIterator[ServiceServer]:
    """A ledger for one test alone, for tests that rotate identity's signing key. A
    ledger's verifier looks up an unknown key id at most once a second and refuses the
    token meanwhile: versions created in quick succession, reaching the session's ledger,
    would fail a later test's appends (LEDGER_REFUSED). The session's ledger then meets
    only the newest version, once, after the rotating tests."""
    async with serving_ledger(mongo_server, vault_server, identity_vault_token) as server:
        yield server


@dataclass
class Identity:
    server: ServiceServer
    runtime: IdentityRuntime
    config: IdentityConfig
    signer: VaultTokenSigner  # the service's own Vault key, to sign crafted tokens
    channel: grpc.aio.Channel
    stub: identity_pb2_grpc.IdentityServiceAsyncStub
    admin_key: SigningKey
    ledger_port: int
    database: str
    _admin_token: str = field(default="", repr=False)

    @staticmethod
    def public_jwks(*keys: SigningKey) -> str:
        return json.dumps({"keys": [k.as_dict(private=False) for k in keys]})

    @staticmethod
    def new_key(kind: str = "OKP", kid: str | None = None) -> SigningKey:
        params = {"kid": kid} if kid else None
        if kind == "EC":
            return ECKey.generate_key("P-256", parameters=params)
        if kind == "RSA":
            return RSAKey.generate_key(2048, parameters=params)
        return OKPKey.generate_key("Ed25519", parameters=params)

    @staticmethod
    def bearer(token: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {token}")]

    @staticmethod
    def reason(error: grpc.aio.AioRpcError) -> str:
        return from_rpc_error(error).reason

    @staticmethod
    def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
        return [v.field for v in from_rpc_error(error).violations]

    @staticmethod
    async def ledger_entries(
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub,
    ) -> list[ledger_pb2.IndexedEntry]:
        """Every entry of the ledger, page by page."""
        entries: list[ledger_pb2.IndexedEntry] = []
        token = ""
        while True:
            page = await stub.ListEntries(ledger_pb2.ListEntriesRequest(page_token=token))
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    @classmethod
    async def ledger_entry(
        cls, stub: ledger_pb2_grpc.LedgerServiceAsyncStub, kind: int, resource_id: str
    ) -> list[ledger_pb2.IndexedEntry]:
        """Every entry of the ledger, once one of ``kind`` about ``resource_id`` is among
        them (the log's readers see a new checkpoint within a fraction of a second); the
        last one is that entry."""
        for _ in range(50):
            entries = await cls.ledger_entries(stub)
            found = [
                e for e in entries if e.entry.kind == kind and e.entry.resource.id == resource_id
            ]
            if len(found) == 1:
                return [*(e for e in entries if e is not found[0]), found[0]]
            assert not found, "the event was ledgered more than once"
            await asyncio.sleep(0.1)
        pytest.fail("the event never reached the ledger")

    def assertion(
        self,
        client_id: str,
        key: SigningKey,
        *,
        alg: str | None = None,
        lifetime: int = 60,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": client_id,
            "sub": client_id,
            "aud": self.config.token_endpoint,
            "exp": now + lifetime,
            "iat": now,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        algorithm = alg or {"OKP": "EdDSA", "EC": "ES256", "RSA": "RS384"}[key.key_type]
        header: dict[str, Any] = {"alg": algorithm}
        if key.kid:
            header["kid"] = key.kid
        return jwt.encode(header, body, key, algorithms=[algorithm])

    def grant(
        self, assertion: str, scope: str, audience: str = ""
    ) -> identity_pb2.IssueTokenRequest:
        return identity_pb2.IssueTokenRequest(
            client_credentials=identity_pb2.ClientCredentialsGrant(
                client_assertion_type=ASSERTION_TYPE,
                client_assertion=assertion,
                scope=scope,
                audience=audience,
            )
        )

    async def client_token(self, client_id: str, key: SigningKey, scope: str) -> str:
        response = await self.stub.IssueToken(self.grant(self.assertion(client_id, key), scope))
        return response.access_token

    async def admin(self) -> list[tuple[str, str]]:
        """Call metadata with an admin token (the bootstrap admin client's)."""
        if not self._admin_token:
            self._admin_token = await self.client_token(ADMIN_CLIENT, self.admin_key, "admin")
        return self.bearer(self._admin_token)

    async def partner(
        self,
        client_id: str,
        organization: str,
        scopes: list[str],
        key: SigningKey | None = None,
        purposes: tuple[int, ...] = (1,),
    ) -> SigningKey:
        """Registers ``organization`` (if new) and a client; returns the client's key."""
        key = key or self.new_key()
        admin = await self.admin()
        try:
            await self.stub.CreateOrganization(
                identity_pb2.CreateOrganizationRequest(organization_id=organization),
                metadata=admin,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        await self.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id=client_id,
                organization=organization,
                jwks_json=self.public_jwks(key),
                allowed_scopes=scopes,
                allowed_purposes=list(purposes),
            ),
            metadata=admin,
        )
        return key


async def start_identity(
    mongo_server: Any,
    vault_server: Any,
    vault_token: str,
    ledger_port: int,
    database: str | None = None,
    bootstrap: BootstrapPlan | None = None,
    **config: Any,
) -> Identity:
    admin_key = Identity.new_key()
    identity_config = IdentityConfig(**config)
    database = database or f"id{uuid.uuid4().hex[:10]}"
    vault_settings = VaultSettings(addr=vault_server.addr, token=vault_token)
    runtime = identity_runtime(
        IdentitySettings(grpc_port=0, health_interval_seconds=0.2),
        identity_config,
        MongoSettings(
            MONGODB_URI=mongo_server.uri,
            MEDLEDGER_MONGODB_DATABASE=database,
        ),
        vault_settings,
        PeerSettings(ledger_addr=f"127.0.0.1:{ledger_port}"),
        bootstrap
        or BootstrapPlan(
            organization=OPERATORS,
            client_id=ADMIN_CLIENT,
            client_jwks_json=Identity.public_jwks(admin_key),
        ),
    )
    server = ServiceServer(runtime)
    await server.start()
    assert runtime.bootstrapper is not None
    await asyncio.wait_for(runtime.bootstrapper.done.wait(), 30)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    return Identity(
        server=server,
        runtime=runtime,
        config=identity_config,
        signer=VaultTokenSigner(VaultTransit(vault_settings), identity_config.signing_key),
        channel=channel,
        stub=identity_pb2_grpc.IdentityServiceStub(channel),
        admin_key=admin_key,
        ledger_port=ledger_port,
        database=database,
    )


async def stop_identity(identity: Identity) -> None:
    await identity.channel.close()
    await identity.server.stop(0)


MakeIdentity = Callable[..., Awaitable[Identity]]


@pytest.fixture
async def make_identity(
    mongo_server: Any,
    vault_server: Any,
    identity_vault_token: str,
    ledger_server: ServiceServer,
) -> AsyncIterator[MakeIdentity]:
    """Starts identities with ``IDENTITY_*`` settings of the test's choosing, optionally
    another ledger address or the database of an identity already running (a second
    replica); stops them at the end."""
    started: list[Identity] = []

    async def make(
        *,
        ledger_port: int | None = None,
        database: str | None = None,
        bootstrap: BootstrapPlan | None = None,
        **config: Any,
    ) -> Identity:
        one = await start_identity(
            mongo_server,
            vault_server,
            identity_vault_token,
            ledger_server.port if ledger_port is None else ledger_port,
            database,
            bootstrap,
            **config,
        )
        started.append(one)
        return one

    yield make
    for one in started:
        await stop_identity(one)


@pytest.fixture
async def identity(make_identity: MakeIdentity) -> Identity:
    return await make_identity()


@pytest.fixture
async def ledger_stub(
    ledger_server: ServiceServer, vault_server: Any, identity_vault_token: str
) -> AsyncIterator[ledger_pb2_grpc.LedgerServiceAsyncStub]:
    reader = await ledger_reader_token(vault_server, identity_vault_token)
    async with authed_channel(f"127.0.0.1:{ledger_server.port}", reader) as channel:
        yield ledger_pb2_grpc.LedgerServiceStub(channel)
