"""A partner's view of medledger: the ``medledger`` command, as a real process, against
identity and a ledger served in this process by their own bootstraps, over the session's
real secantusdb and OpenBao. Nothing is mocked.

Identity starts as ``medledger dev up`` starts it: its bootstrap admin client ``ops-admin``
comes from the public JWKS file the stack generates under ``<home>/keys/``, read through
``IDENTITY_BOOTSTRAP_*`` settings, so the CLI holds the private half.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.auth import JwksTokenVerifier
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.keyfiles import KeyPair, ensure_key_pair
from medledger.common.scopes import LEDGER_READ, PATIENT_DIRECTORY
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.devstack.mongo import MongoServer
from medledger.devstack.paths import StackPaths
from medledger.devstack.services import BOOTSTRAP_ADMIN_CLIENT
from medledger.devstack.vault import DevVault
from medledger.identity.adapters.vault_signer import VaultTokenSigner
from medledger.identity.config import IdentityConfig, IdentitySettings
from medledger.identity.runtime import IdentityRuntime, from_settings
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime
from medledger.testkit.tokens import authed_channel


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """stdout and stderr, whitespace collapsed (wrapped lines compare as one)."""
        return " ".join(f"{self.stdout}\n{self.stderr}".split())


@dataclass
class LiveIdentity:
    address: str
    paths: StackPaths
    admin: KeyPair
    runtime: IdentityRuntime
    stub: identity_pb2_grpc.IdentityServiceAsyncStub
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub
    vault: DevVault

    async def register_holder(self, patient_id: str, organization: str) -> None:
        """What the record service tells identity when ``organization``'s principal creates
        the Patient ``patient_id`` (its token's ``medledger/patient-directory``)."""
        token = await identity_signed_token(self.vault, PATIENT_DIRECTORY, "record")
        await self.stub.RegisterPatientHolder(
            identity_pb2.RegisterPatientHolderRequest(
                patient_id=patient_id, organization=organization
            ),
            metadata=[("authorization", f"Bearer {token}")],
        )

    async def cli(self, *args: str | Path) -> CliResult:
        """``medledger ARGS`` as a real process, with this stack's home and identity."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "medledger.cli.main",
            *(str(a) for a in args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={
                **os.environ,
                "COLUMNS": "200",
                "NO_COLOR": "1",
                "MEDLEDGER_HOME": str(self.paths.home),
                "MEDLEDGER_IDENTITY_ADDR": self.address,
            },
        )
        stdout, stderr = await process.communicate()
        assert process.returncode is not None
        return CliResult(process.returncode, stdout.decode(), stderr.decode())


Cli = Callable[..., Awaitable[CliResult]]


def _identity_keys(vault_server: DevVault) -> VaultTokenSigner:
    """Identity's token signing key in Vault (every identity of the session signs with it)."""
    vault = VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    return VaultTokenSigner(VaultTransit(vault), IdentityConfig().signing_key)


async def identity_signed_token(vault_server: DevVault, scope: str, subject: str) -> str:
    """A token as identity issues them, holding ``scope`` (signed afresh: tests rotate the
    key, and only the latest versions stay published)."""
    config, now = IdentityConfig(), int(time.time())
    return await _identity_keys(vault_server).sign(
        {
            "iss": config.issuer,
            "aud": config.default_audience,
            "sub": subject,
            "scope": scope,
            "iat": now,
            "exp": now + 3600,
        }
    )


async def ledger_reader_token(vault_server: DevVault) -> str:
    """A token holding ``ledger.read``, to read the ledger with."""
    return await identity_signed_token(vault_server, LEDGER_READ, "partner-tests")


@pytest.fixture(scope="session")
async def partner_ledger(
    mongo_server: MongoServer, vault_server: DevVault
) -> AsyncIterator[ServiceServer]:
    # It checks identity's tokens against identity's key in Vault: no identity address.
    config = IdentityConfig()
    runtime = ledger_runtime(
        LedgerSettings(grpc_port=0, health_interval_seconds=0.2),
        LedgerConfig(origin="partner.test/ledger", lease_ttl_seconds=2),
        MongoSettings(
            MONGODB_URI=mongo_server.uri,
            MEDLEDGER_MONGODB_DATABASE=f"pl{uuid.uuid4().hex[:10]}",
        ),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
        verifier=JwksTokenVerifier(
            _identity_keys(vault_server).jwks,
            issuer=config.issuer,
            audience=config.default_audience,
        ),
    )
    server = ServiceServer(runtime)
    await server.start()
    reader = await ledger_reader_token(vault_server)
    async with authed_channel(f"127.0.0.1:{server.port}", reader) as channel:
        stub = ledger_pb2_grpc.LedgerServiceStub(channel)
        for _ in range(100):  # until the sequencer holds its lease and has a checkpoint
            try:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=2)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
    yield server
    await server.stop(0)


@pytest.fixture
async def identity(
    tmp_path: Path,
    mongo_server: MongoServer,
    vault_server: DevVault,
    partner_ledger: ServiceServer,
) -> AsyncIterator[LiveIdentity]:
    """Identity over a fresh database, bootstrapped as the stack does it, with the stack's
    state folder (``paths``) in a temporary directory."""
    paths = StackPaths(tmp_path / "medledger-home")
    admin = ensure_key_pair(
        BOOTSTRAP_ADMIN_CLIENT,
        paths.client_key(BOOTSTRAP_ADMIN_CLIENT),
        paths.client_jwks(BOOTSTRAP_ADMIN_CLIENT),
    )
    config = IdentityConfig(
        bootstrap_client_id=BOOTSTRAP_ADMIN_CLIENT,
        bootstrap_client_jwks_file=admin.public_file,
    )
    runtime = from_settings(
        IdentitySettings(grpc_port=0, health_interval_seconds=0.2),
        config,
        MongoSettings(
            MONGODB_URI=mongo_server.uri,
            MEDLEDGER_MONGODB_DATABASE=f"pi{uuid.uuid4().hex[:10]}",
        ),
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity")),
        PeerSettings(ledger_addr=f"127.0.0.1:{partner_ledger.port}"),
    )
    server = ServiceServer(runtime)
    await server.start()
    assert runtime.bootstrapper is not None
    await asyncio.wait_for(runtime.bootstrapper.done.wait(), 30)
    address = f"127.0.0.1:{server.port}"
    try:
        async with (
            grpc.aio.insecure_channel(address) as channel,
            authed_channel(
                f"127.0.0.1:{partner_ledger.port}", await ledger_reader_token(vault_server)
            ) as ledger_channel,
        ):
            yield LiveIdentity(
                address=address,
                paths=paths,
                admin=admin,
                runtime=runtime,
                stub=identity_pb2_grpc.IdentityServiceStub(channel),
                ledger=ledger_pb2_grpc.LedgerServiceStub(ledger_channel),
                vault=vault_server,
            )
    finally:
        await server.stop(0)
