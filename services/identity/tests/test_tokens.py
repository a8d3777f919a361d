"""Tokens from client assertions (RFC 7523), against real MongoDB, OpenBao and an in-process
ledger (password logins: test_logins.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import grpc
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey

from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.auth import JwksTokenVerifier, identity_jwks_fetcher
from medledger.common.config import MongoSettings, ServiceSettings, VaultSettings
from medledger.common.interceptors import Principal
from medledger.common.server import ServiceServer
from medledger.devstack.process import free_port
from medledger.ledger.config import LedgerConfig, LedgerSettings
from medledger.ledger.runtime import ledger_runtime

MEMBER = "st-marys"
# identity's tokens are EdDSA over Ed25519 by contract; joserfc warns that RFC 9864 prefers
# the name "Ed25519".
pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def header_of(token: str) -> dict[str, Any]:
    header = token.split(".", maxsplit=1)[0]
    return dict(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))))


async def test_client_credentials_token_is_signed_by_vault_key_and_ledgered(
    identity: Any, ledger_stub: Any
) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/Observation.rs", "ledger.read"])
    response = await identity.stub.IssueToken(
        identity.grant(identity.assertion("lab-app", key), "system/Observation.r ledger.read")
    )
    assert response.token_type == "Bearer"
    assert response.expires_in == 300
    assert response.scope == "system/Observation.r ledger.read"
    claims = claims_of(response.access_token)
    assert claims["iss"] == "medledger://identity"
    assert claims["sub"] == claims["client_id"] == "lab-app"
    assert claims["aud"] == "medledger"
    assert claims["org"] == MEMBER
    assert claims["purposes"] == ["TREAT"]
    assert claims["exp"] - claims["iat"] == 300
    header = header_of(response.access_token)
    assert header["alg"] == "EdDSA"
    jwks = json.loads((await identity.stub.GetJwks(identity_pb2.GetJwksRequest())).jwks_json)
    assert header["kid"] in [k["kid"] for k in jwks["keys"]]
    # TOKEN_ISSUED, read back from the ledger: identifiers only.
    entries = await identity.ledger_entries(ledger_stub)
    issued = [
        e.entry
        for e in entries
        if e.entry.kind == ledger_pb2.EVENT_KIND_TOKEN_ISSUED
        and e.entry.resource.id == claims["jti"]
    ]
    print(
        "ENTRIES",
        [(e.entry.kind, e.entry.actor, e.entry.resource.id) for e in entries],
        claims["jti"],
    )
    assert len(issued) == 1
    entry = issued[0]
    assert entry.actor == "lab-app"
    assert entry.organization == MEMBER
    assert entry.resource.type == "AccessToken"
    assert entry.subject == b""
    assert entry.content_commitment == b""
    assert all(response.access_token.encode() not in e.entry_bytes for e in entries)


async def test_ec_and_rsa_client_keys_sign_assertions(identity: Any) -> None:
    for kind, client_id in (("EC", "ec-app"), ("RSA", "rsa-app")):
        key = await identity.partner(
            client_id, MEMBER, ["system/*.rs"], key=identity.new_key(kind, kid=f"{client_id}-1")
        )
        token = await identity.client_token(client_id, key, "system/Patient.rs")
        assert claims_of(token)["sub"] == client_id


async def test_replayed_assertion_is_refused(identity: Any) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/Observation.rs"])
    assertion = identity.assertion("lab-app", key)
    await identity.stub.IssueToken(identity.grant(assertion, "system/Observation.rs"))
    with pytest.raises(grpc.aio.AioRpcError) as replay:
        await identity.stub.IssueToken(identity.grant(assertion, "system/Observation.rs"))
    assert replay.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert identity.reason(replay.value) == "ASSERTION_REPLAYED"


async def test_disabled_client_gets_no_new_token(identity: Any) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/Observation.rs", "identity.read"])
    earlier = await identity.client_token("lab-app", key, "identity.read")
    admin = await identity.admin()
    disabled = await identity.stub.DisableClient(
        identity_pb2.DisableClientRequest(client_id="lab-app"), metadata=admin
    )
    assert disabled.client.disabled
    assert disabled.client.HasField("disable_time")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.client_token("lab-app", key, "identity.read")
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert identity.reason(refused.value) == "CLIENT_DISABLED"
    # A token issued before expires on its own.
    await identity.stub.GetOrganization(
        identity_pb2.GetOrganizationRequest(organization_id=MEMBER),
        metadata=identity.bearer(earlier),
    )


async def test_scopes_must_be_covered_by_the_allowed_ones(identity: Any) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/*.rs", "ledger.read"])
    narrowed = await identity.stub.IssueToken(
        identity.grant(identity.assertion("lab-app", key), "system/Observation.read ledger.read")
    )
    assert narrowed.scope == "system/Observation.rs ledger.read"  # v1 spelling, issued as v2
    for scope in ("system/Observation.c", "patient/Observation.r", "admin"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.IssueToken(
                identity.grant(identity.assertion("lab-app", key), scope)
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert identity.reason(refused.value) == "SCOPE_NOT_ALLOWED"


async def test_bad_client_assertions_are_refused_with_a_reason(identity: Any) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/*.rs"])
    intruder = identity.new_key()
    public_secret = json.dumps(key.as_dict(private=False)).encode()
    hs256 = jwt.encode(
        {"alg": "HS256"},
        {
            "iss": "lab-app",
            "sub": "lab-app",
            "aud": identity.config.token_endpoint,
            "exp": int(time.time()) + 60,
            "jti": "hs",
        },
        OctKey.import_key(public_secret),
        algorithms=["HS256"],
    )
    _, payload, _ = identity.assertion("lab-app", key).split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    cases = {
        "ASSERTION_AUDIENCE": identity.assertion("lab-app", key, aud="https://elsewhere/token"),
        "ASSERTION_EXPIRED": identity.assertion("lab-app", key, lifetime=-120),
        "ASSERTION_LIFETIME": identity.assertion("lab-app", key, lifetime=3600),
        "ASSERTION_NOT_YET_VALID": identity.assertion("lab-app", key, nbf=int(time.time()) + 600),
        "ASSERTION_CLAIMS": identity.assertion("lab-app", key, sub="someone-else"),
        "CLIENT_UNKNOWN": identity.assertion("no-such-app", key),
        "ASSERTION_SIGNATURE": identity.assertion("lab-app", intruder),
        "ASSERTION_MALFORMED": "not.a-jws",
    }
    for expected, assertion in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.IssueToken(identity.grant(assertion, "system/Patient.rs"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, expected
        assert identity.reason(refused.value) == expected
    for forged in (f"{none_header}.{payload}.", hs256):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.IssueToken(identity.grant(forged, "system/Patient.rs"))
        assert identity.reason(refused.value) == "ASSERTION_SIGNATURE"
    # A forged assertion does not burn the jti of a genuine one.
    with pytest.raises(grpc.aio.AioRpcError):
        await identity.stub.IssueToken(
            identity.grant(identity.assertion("lab-app", intruder, jti="j-1"), "system/Patient.rs")
        )
    await identity.stub.IssueToken(
        identity.grant(identity.assertion("lab-app", key, jti="j-1"), "system/Patient.rs")
    )


async def test_no_token_when_the_ledger_is_down(identity: Any, make_identity: Any) -> None:
    key = await identity.partner("lab-app", MEMBER, ["system/*.rs"])
    # A second replica on the same data whose ledger does not answer.
    cut_off = await make_identity(ledger_port=free_port(), database=identity.database)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await cut_off.client_token("lab-app", key, "system/Patient.rs")
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert cut_off.reason(down.value) == "DEPENDENCY_UNAVAILABLE"
    # The same client, through a replica whose ledger answers, gets its token.
    await identity.client_token("lab-app", key, "system/Patient.rs")
    # The very assertion the cut-off replica could not honour may be sent again: no token
    # came of it, so it is not spent (gRPC itself retries an UNAVAILABLE answer with it).
    assertion = identity.assertion("lab-app", key)
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await cut_off.stub.IssueToken(identity.grant(assertion, "system/Patient.rs"))
    assert again.value.code() == grpc.StatusCode.UNAVAILABLE
    issued = await identity.stub.IssueToken(identity.grant(assertion, "system/Patient.rs"))
    assert issued.access_token
    with pytest.raises(grpc.aio.AioRpcError) as spent:
        await identity.stub.IssueToken(identity.grant(assertion, "system/Patient.rs"))
    assert identity.reason(spent.value) == "ASSERTION_REPLAYED"


async def test_issue_token_bad_input_names_the_field(identity: Any) -> None:
    cases = [
        (identity_pb2.IssueTokenRequest(), ["grant"]),
        (
            identity_pb2.IssueTokenRequest(
                client_credentials=identity_pb2.ClientCredentialsGrant(
                    client_assertion_type="client_secret", audience="two words"
                )
            ),
            [
                "client_credentials.client_assertion_type",
                "client_credentials.client_assertion",
                "client_credentials.scope",
                "client_credentials.audience",
            ],
        ),
        (
            identity_pb2.IssueTokenRequest(password=identity_pb2.PasswordGrant()),
            ["password.username", "password.password"],
        ),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await identity.stub.IssueToken(request)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert identity.bad_fields(bad.value) == fields


async def test_identity_authenticates_to_a_ledger_that_requires_tokens(
    mongo_server: Any, vault_server: Any, make_identity: Any
) -> None:
    """identity signs its own ledger.append token; the ledger verifies it against
    identity's JWKS like any service would."""
    ledger_port = free_port()
    identity = await make_identity(ledger_port=ledger_port)
    fetcher = identity_jwks_fetcher(f"127.0.0.1:{identity.server.port}", ServiceSettings())
    seen: list[Principal] = []

    class Recording(JwksTokenVerifier):
        async def verify(self, token: str, method: str) -> Principal:
            principal = await super().verify(token, method)
            seen.append(principal)
            return principal

    ledger = ServiceServer(
        ledger_runtime(
            LedgerSettings(grpc_port=ledger_port, health_interval_seconds=0.2),
            LedgerConfig(origin="identity.test/authenticated", lease_ttl_seconds=2),
            MongoSettings(
                MONGODB_URI=mongo_server.uri, MEDLEDGER_MONGODB_DATABASE=f"la{identity.database}"
            ),
            VaultSettings(addr=vault_server.addr, token=vault_server.token_for("ledger")),
            verifier=Recording(fetcher, issuer="medledger://identity", audience="medledger"),
        )
    )
    await ledger.start()
    try:
        key = await identity.partner("lab-app", MEMBER, ["system/*.rs"])
        for _ in range(50):  # until the ledger's sequencer holds its lease
            try:
                await identity.client_token("lab-app", key, "system/Patient.rs")
                break
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                await asyncio.sleep(0.1)
        else:
            pytest.fail("no token was issued")
    finally:
        await ledger.stop(0)
        await fetcher.aclose()
    assert seen
    assert {p.subject for p in seen} == {"medledger-identity"}
    assert all(p.scopes == frozenset({"ledger.append"}) for p in seen)
    assert all(p.organization == "medledger" for p in seen)
