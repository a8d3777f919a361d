"""Every identity RPC but IssueToken and GetJwks needs a valid access token: the auth
interceptor with ``JwksTokenVerifier`` over identity's own Vault-held key, refusing each
kind of bad token with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from joserfc import jwt
from joserfc.jwk import OKPKey

from medledger.api.identity.v1 import identity_pb2

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": "medledger://identity",
        "sub": "ops-admin",
        "aud": "medledger",
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": uuid.uuid4().hex,
        "org": "medledger",
        "scope": "admin",
        "purposes": [],
        "client_id": "ops-admin",
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def call(identity: Any, token: str | None) -> grpc.aio.AioRpcError | None:
    metadata = identity.bearer(token) if token is not None else None
    try:
        await identity.stub.ListOrganizations(
            identity_pb2.ListOrganizationsRequest(), metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        return exc
    return None


async def test_a_vault_signed_token_is_accepted(identity: Any) -> None:
    assert await call(identity, await identity.signer.sign(claims())) is None
    assert await call(identity, await identity.signer.sign(claims(aud=["x", "medledger"]))) is None


async def test_bad_tokens_are_refused_with_their_reason(identity: Any) -> None:
    signer = identity.signer
    good = await signer.sign(claims())
    header, payload, signature = good.split(".")
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    admin_payload = b64(json.dumps(claims(scope="admin ledger.read")).encode())
    jwks = json.loads((await identity.stub.GetJwks(identity_pb2.GetJwksRequest())).jwks_json)
    public_jwk = json.dumps(jwks["keys"][0]).encode()
    hs_header = b64(json.dumps({"alg": "HS256", "kid": kid}).encode())
    hs_signature = b64(
        hmac.new(public_jwk, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
    )
    none_header = b64(json.dumps({"alg": "none", "kid": kid}).encode())
    stranger = OKPKey.generate_key("Ed25519", parameters={"kid": "stranger"})
    now = int(time.time())
    cases = {
        "TOKEN_MISSING": None,
        "TOKEN_MALFORMED": "definitely-not-a-jwt",
        # The payload changed under an unchanged signature.
        "TOKEN_SIGNATURE": f"{header}.{admin_payload}.{signature}",
        "TOKEN_EXPIRED": await signer.sign(claims(exp=now - 120, iat=now - 420, nbf=now - 420)),
        "TOKEN_NOT_YET_VALID": await signer.sign(claims(nbf=now + 600)),
        "TOKEN_AUDIENCE": await signer.sign(claims(aud="record-only")),
        "TOKEN_ISSUER": await signer.sign(claims(iss="https://evil.example")),
        "TOKEN_KID_UNKNOWN": jwt.encode(
            {"alg": "EdDSA", "kid": "stranger"}, claims(), stranger, algorithms=["EdDSA"]
        ),
    }
    for expected, token in cases.items():
        refused = await call(identity, token)
        assert refused is not None, expected
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, expected
        assert identity.reason(refused) == expected
    # Algorithm confusion: none, and HS256 keyed with our public key, claiming our kid.
    for forged in (f"{none_header}.{payload}.", f"{hs_header}.{payload}.{hs_signature}"):
        refused = await call(identity, forged)
        assert refused is not None
        assert identity.reason(refused) == "TOKEN_SIGNATURE"


async def test_issue_token_jwks_and_health_need_no_token(identity: Any) -> None:
    await identity.stub.GetJwks(identity_pb2.GetJwksRequest())
    with pytest.raises(grpc.aio.AioRpcError) as bad_grant:
        await identity.stub.IssueToken(identity_pb2.IssueTokenRequest())
    assert bad_grant.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(identity.channel)
    await health.Check(health_pb2.HealthCheckRequest())


async def test_every_other_method_needs_a_token(identity: Any) -> None:
    service = identity_pb2.DESCRIPTOR.services_by_name["IdentityService"]
    for method in service.methods:
        if method.name in ("IssueToken", "GetJwks"):
            continue
        request_class = identity_pb2.__dict__[method.input_type.name]
        call_method = getattr(identity.stub, method.name)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call_method(request_class())
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
        assert identity.reason(refused.value) == "TOKEN_MISSING"
