"""The signing key's life: JWKS, rotation with tokens in flight, and verification by
another service through ``identity_jwks_fetcher`` (GetJwks over gRPC).

An operator rotates the key in Vault (identity's own token may not); an admin then calls
RotateSigningKey, which ledgers the rotation and publishes the new key."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.auth import JwksTokenVerifier, identity_jwks_fetcher
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.errors import FailedPrecondition, Unauthenticated
from medledger.common.server import ServiceServer
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import IDENTITY_TOKEN_KEY
from medledger.devstack.process import free_port
from medledger.devstack.vault import DevVault

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


@pytest.fixture(scope="module")
def vault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevVault]:
    """A Vault of this module's own: the rotations here change identity's signing key, which
    every other identity of the session (the testkit platform's among them) shares in the
    session's Vault; rotated there, the platform's identity signed with a version its ledger
    then refused for a while (TOKEN_KID_UNKNOWN), failing later modules' fixtures."""
    server = DevVault(
        port=free_port(with_next=True),
        log_file=tmp_path_factory.mktemp("rotation-vault") / "vault.log",
        die_with_parent=True,
    )
    server.start()
    server.provision()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def identity_vault_token(vault_server: DevVault) -> str:
    """Identity's own Vault token, in this module's Vault."""
    return str(vault_server.token_for("identity"))


@pytest.fixture
def ledger_server(own_ledger_server: ServiceServer) -> ServiceServer:
    """Each test here appends to a ledger of its own (see ``own_ledger_server``)."""
    return own_ledger_server


def kid_of(token: str) -> str:
    header = token.split(".", maxsplit=1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


async def jwks_kids(identity: Any) -> list[str]:
    jwks = json.loads((await identity.stub.GetJwks(identity_pb2.GetJwksRequest())).jwks_json)
    for key in jwks["keys"]:
        assert key["kty"] == "OKP"
        assert key["crv"] == "Ed25519"
        assert key["use"] == "sig"
        assert key["alg"] == "EdDSA"
        assert "d" not in key
    return [k["kid"] for k in jwks["keys"]]


async def operator_rotates(vault_server: Any) -> None:
    """The operators' part of a rotation, with their own token."""
    token = vault_server.operator_token
    operator = VaultTransit(VaultSettings(addr=vault_server.addr, token=token))
    await operator.rotate(IDENTITY_TOKEN_KEY)
    operator.close()


async def test_identity_cannot_rotate_its_own_key(identity: Any, vault_server: Any) -> None:
    own = VaultTransit(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    )
    with pytest.raises(FailedPrecondition) as refused:
        await own.rotate(IDENTITY_TOKEN_KEY)
    own.close()
    assert refused.value.reason == "VAULT_FORBIDDEN"
    # And RotateSigningKey publishes nothing until an operator has rotated the key in Vault.
    with pytest.raises(grpc.aio.AioRpcError) as early:
        await identity.stub.RotateSigningKey(
            identity_pb2.RotateSigningKeyRequest(), metadata=await identity.admin()
        )
    assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert identity.reason(early.value) == "KEY_NOT_ROTATED"


async def test_rotation_keeps_tokens_in_flight_valid(
    identity: Any, ledger_stub: Any, vault_server: Any
) -> None:
    admin = await identity.admin()
    in_flight = admin[0][1].removeprefix("Bearer ")
    old_kid = kid_of(in_flight)
    assert (await jwks_kids(identity))[0] == old_kid

    await operator_rotates(vault_server)
    rotated = await identity.stub.RotateSigningKey(
        identity_pb2.RotateSigningKeyRequest(), metadata=admin
    )
    assert rotated.kid != old_kid
    assert await jwks_kids(identity) == [rotated.kid, old_kid]  # current, then previous
    # The token signed before the rotation still works; a new one names the new key.
    await identity.stub.ListOrganizations(identity_pb2.ListOrganizationsRequest(), metadata=admin)
    fresh = await identity.client_token("ops-admin", identity.admin_key, "admin")
    assert kid_of(fresh) == rotated.kid
    await identity.stub.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(), metadata=identity.bearer(fresh)
    )
    # Ledgered, with the version it created.
    version = await identity.signer.current_version()
    entries = await identity.ledger_entry(
        ledger_stub, ledger_pb2.EVENT_KIND_KEY_ROTATED, "identity-token"
    )
    rotation = [
        e.entry
        for e in entries
        if e.entry.kind == ledger_pb2.EVENT_KIND_KEY_ROTATED and e.entry.resource.version == version
    ]
    assert len(rotation) == 1
    assert rotation[0].actor == "ops-admin"
    assert rotation[0].organization == "medledger"


async def test_only_admins_rotate(identity: Any) -> None:
    key = await identity.partner("lab-app", "st-marys", ["ledger.read"])
    token = await identity.client_token("lab-app", key, "ledger.read")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.RotateSigningKey(
            identity_pb2.RotateSigningKeyRequest(), metadata=identity.bearer(token)
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert identity.reason(refused.value) == "SCOPE_MISSING"


async def test_other_services_verify_through_get_jwks(identity: Any, vault_server: Any) -> None:
    fetcher = identity_jwks_fetcher(f"127.0.0.1:{identity.server.port}", ServiceSettings())
    verifier = JwksTokenVerifier(fetcher, issuer="medledger://identity", audience="medledger")
    try:
        key = await identity.partner(
            "lab-app", "st-marys", ["system/Observation.rs"], purposes=(1, 4)
        )
        token = await identity.client_token("lab-app", key, "system/Observation.rs")
        principal = await verifier.verify(token, "/medledger.api.record.v1.RecordService/Read")
        assert principal.subject == principal.client_id == "lab-app"
        assert principal.organization == "st-marys"
        assert principal.scopes == frozenset({"system/Observation.rs"})
        assert principal.purposes == frozenset({"TREAT", "HRESCH"})
        # After a rotation the new kid is unknown to the cache: one refresh finds it.
        await operator_rotates(vault_server)
        await identity.stub.RotateSigningKey(
            identity_pb2.RotateSigningKeyRequest(), metadata=await identity.admin()
        )
        fresh = await identity.client_token("lab-app", key, "system/Observation.rs")
        await verifier.verify(fresh, "/x")
        with pytest.raises(Unauthenticated) as refused:
            await verifier.verify(token[:-4] + "AAAA", "/x")
        assert refused.value.reason == "TOKEN_SIGNATURE"
    finally:
        await fetcher.aclose()
