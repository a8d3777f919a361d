"""``medledger token`` against a live identity: the token it prints verifies with identity's
JWKS; a wrong key or scope is refused with identity's reason and exit status 1."""

from __future__ import annotations

import json
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.calls import bearer
from medledger.cli.token import request_token
from medledger.common.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwksTokenVerifier
from medledger.common.keyfiles import ensure_key_pair, public_jwks, write_private

METHOD = "/medledger.api.identity.v1.IdentityService/ListClients"


async def _verifier(identity: Any) -> JwksTokenVerifier:
    async def jwks() -> str:
        reply = await identity.stub.GetJwks(identity_pb2.GetJwksRequest())
        return reply.jwks_json

    return JwksTokenVerifier(jwks, issuer=DEFAULT_ISSUER, audience=DEFAULT_AUDIENCE)


async def test_token_alone_on_stdout_verifies_with_the_jwks(identity: Any) -> None:
    result = await identity.cli(
        "token",
        "--client-id",
        "ops-admin",
        "--key",
        identity.admin.private_file,
        "--scope",
        "admin ledger.read",
    )
    assert result.code == 0, result.output
    assert result.stderr == ""
    token = result.stdout.strip()
    assert result.stdout == token + "\n"  # TOKEN=$(medledger token ...) gets exactly the token
    principal = await (await _verifier(identity)).verify(token, METHOD)
    assert principal.subject == "ops-admin"
    assert principal.organization == "medledger"
    assert principal.scopes == frozenset({"admin", "ledger.read"})
    # Usable at once: an admin call with it.
    clients = await identity.stub.ListClients(
        identity_pb2.ListClientsRequest(), metadata=bearer(token)
    )
    assert [c.client_id for c in clients.clients] == ["ops-admin"]
    # Issued to a client, so ledgered as TOKEN_ISSUED.
    entries = await identity.ledger.ListEntries(ledger_pb2.ListEntriesRequest(page_size=1000))
    assert any(
        e.entry.kind == ledger_pb2.EVENT_KIND_TOKEN_ISSUED and e.entry.actor == "ops-admin"
        for e in entries.entries
    )


async def test_json_prints_the_whole_answer(identity: Any) -> None:
    result = await identity.cli(
        "token",
        "--client-id",
        "ops-admin",
        "--key",
        identity.admin.private_file,
        "--scope",
        "ledger.read",
        "--json",
    )
    assert result.code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["tokenType"] == "Bearer"
    assert answer["scope"] == "ledger.read"
    assert int(answer["expiresIn"]) == 300
    await (await _verifier(identity)).verify(answer["accessToken"], METHOD)


async def test_wrong_key_is_refused_with_the_reason(identity: Any) -> None:
    other = ensure_key_pair(
        "ops-admin", identity.paths.keys / "other.jwk", identity.paths.keys / "other.jwks.json"
    )
    result = await identity.cli(
        "token", "--client-id", "ops-admin", "--key", other.private_file, "--scope", "admin"
    )
    assert result.code == 1
    assert result.stdout == ""
    assert "UNAUTHENTICATED ASSERTION_KEY_UNKNOWN" in result.output
    assert "no registered key of the client matches" in result.output

    # The same key without its kid: identity tries the one registered key, which fails.
    unnamed = identity.paths.keys / "unnamed.jwk"
    document = other.key.as_dict(private=True)
    document.pop("kid")
    write_private(unnamed, json.dumps(document))
    result = await identity.cli(
        "token", "--client-id", "ops-admin", "--key", unnamed, "--scope", "admin"
    )
    assert result.code == 1
    assert "UNAUTHENTICATED ASSERTION_SIGNATURE" in result.output


async def test_scope_outside_the_allowed_ones_is_refused(identity: Any) -> None:
    result = await identity.cli(
        "token",
        "--client-id",
        "ops-admin",
        "--key",
        identity.admin.private_file,
        "--scope",
        "system/Patient.rs",
    )
    assert result.code == 1
    assert "PERMISSION_DENIED SCOPE_NOT_ALLOWED" in result.output


async def test_unknown_client_is_refused(identity: Any) -> None:
    result = await identity.cli(
        "token", "--client-id", "nobody-app", "--key", identity.admin.private_file, "--scope", "x"
    )
    assert result.code == 1
    assert "UNAUTHENTICATED CLIENT_UNKNOWN" in result.output


async def test_p256_and_rsa_keys_sign_assertions(identity: Any) -> None:
    admin = await request_token(
        identity.address, "ops-admin", identity.admin.key, "admin", timeout=10
    )
    await identity.stub.CreateOrganization(
        identity_pb2.CreateOrganizationRequest(organization_id="lab-x"),
        metadata=bearer(admin.access_token),
    )
    keys = {
        "ec-app": ECKey.generate_key("P-256", parameters={"kid": "ec-1"}),
        "rsa-app": RSAKey.generate_key(2048, parameters={"kid": "rsa-1"}),
    }
    for client_id, key in keys.items():
        await identity.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id=client_id,
                organization="lab-x",
                jwks_json=public_jwks(key),
                allowed_scopes=["system/Observation.rs"],
                allowed_purposes=[1],
            ),
            metadata=bearer(admin.access_token),
        )
        key_file = identity.paths.keys / f"{client_id}.jwk"
        write_private(key_file, json.dumps(key.as_dict(private=True)))
        result = await identity.cli(
            "token",
            "--client-id",
            client_id,
            "--key",
            key_file,
            "--scope",
            "system/Observation.r",
        )
        assert result.code == 0, result.output
        principal = await (await _verifier(identity)).verify(result.stdout.strip(), METHOD)
        assert principal.subject == client_id
        assert principal.organization == "lab-x"
