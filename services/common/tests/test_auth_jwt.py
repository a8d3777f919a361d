"""JwksTokenVerifier: EdDSA only, claims checked, JWKS cached with bounded refreshes.

Keys are made here; the JWKS source is a plain async function that counts its calls (the
verifier's only dependency). Identity's own tests run the same verifier against tokens
signed in OpenBao, through the interceptor."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import pytest
from joserfc import jws, jwt
from joserfc.jwk import OKPKey, RSAKey

from medledger.common.auth import JwksTokenVerifier, parse_jwks
from medledger.common.errors import Unauthenticated, Unavailable

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

ISSUER = "medledger://identity"
AUDIENCE = "medledger"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Jwks:
    """A JWKS source whose keys the test changes, counting fetches."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.fetches = 0
        self.down = False

    async def __call__(self) -> str:
        self.fetches += 1
        if self.down:
            raise Unavailable("identity")
        return json.dumps({"keys": [k.as_dict(private=False, use="sig") for k in self.keys]})


def ed25519(kid: str) -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": kid})


def token(key: Any, alg: str = "EdDSA", **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "lab-app",
        "aud": AUDIENCE,
        "exp": now + 300,
        "iat": now,
        "nbf": now,
        "jti": uuid.uuid4().hex,
        "org": "st-marys",
        "client_id": "lab-app",
        "scope": "system/Observation.rs ledger.read",
        "purposes": ["TREAT"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


def verifier(source: Jwks, **options: Any) -> JwksTokenVerifier:
    return JwksTokenVerifier(source, issuer=ISSUER, audience=AUDIENCE, **options)


async def refused(check: JwksTokenVerifier, value: str) -> str:
    with pytest.raises(Unauthenticated) as error:
        await check.verify(value, "/svc/Method")
    return error.value.reason


async def test_a_good_token_gives_its_principal() -> None:
    key = ed25519("k1")
    principal = await verifier(Jwks(key)).verify(token(key), "/svc/Method")
    assert principal.subject == "lab-app"
    assert principal.organization == "st-marys"
    assert principal.client_id == "lab-app"
    assert principal.scopes == frozenset({"system/Observation.rs", "ledger.read"})
    assert principal.purposes == frozenset({"TREAT"})
    assert principal.claims["jti"]


async def test_each_fault_has_its_reason() -> None:
    key, stranger = ed25519("k1"), ed25519("k2")
    check = verifier(Jwks(key))
    now = int(time.time())
    good = token(key)
    header, payload, signature = good.split(".")
    other_payload = b64(
        json.dumps(
            {**json.loads(base64.urlsafe_b64decode(payload + "==")), "scope": "admin"}
        ).encode()
    )
    cases = {
        "TOKEN_MISSING": "",
        "TOKEN_MALFORMED": "a.b",
        "TOKEN_SIGNATURE": f"{header}.{other_payload}.{signature}",
        "TOKEN_EXPIRED": token(key, exp=now - 31, iat=now - 400, nbf=now - 400),
        "TOKEN_NOT_YET_VALID": token(key, nbf=now + 60),
        "TOKEN_AUDIENCE": token(key, aud=["record", "inference"]),
        "TOKEN_ISSUER": token(key, iss="https://attacker.example"),
        "TOKEN_KID_UNKNOWN": token(stranger),
    }
    for reason, value in cases.items():
        assert await refused(check, value) == reason
    # Within the leeway (30 s) clock skew is tolerated.
    await check.verify(token(key, exp=now - 10, nbf=now + 10, iat=now + 10), "/m")
    for malformed in (
        token(key, exp="soon"),
        token(key, iat=None),
        token(key, sub=""),
        token(key, purposes="TREAT"),
        f"{header}.{b64(b'[1]')}.{signature}",
        "x" * 9000,
    ):
        assert await refused(check, malformed) in ("TOKEN_MALFORMED", "TOKEN_SIGNATURE")


async def test_only_eddsa_is_accepted_whatever_the_key() -> None:
    key = ed25519("k1")
    rsa = RSAKey.generate_key(2048, parameters={"kid": "r1"})
    check = verifier(Jwks(key, rsa))
    good = token(key)
    _, payload, _ = good.split(".")
    none_header = b64(json.dumps({"alg": "none", "kid": "k1"}).encode())
    # Key confusion: HMAC keyed with the public key (its JWK, or its raw bytes).
    public_jwk = json.dumps(key.as_dict(private=False)).encode()
    raw_public = base64.urlsafe_b64decode(key.as_dict()["x"] + "=")
    forged = []
    for secret in (public_jwk, raw_public):
        hs_header = b64(json.dumps({"alg": "HS256", "kid": "k1"}).encode())
        mac = hmac.new(secret, f"{hs_header}.{payload}".encode(), hashlib.sha256).digest()
        forged.append(f"{hs_header}.{payload}.{b64(mac)}")
    for value in (
        f"{none_header}.{payload}.",
        *forged,
        token(rsa, alg="RS256"),  # a genuine RS256 signature by a key in the JWKS
    ):
        assert await refused(check, value) == "TOKEN_SIGNATURE"


def test_jwks_keeps_only_ed25519_signing_keys_with_a_kid() -> None:
    key = ed25519("k1")
    document = {
        "keys": [
            key.as_dict(private=False),
            {**ed25519("enc").as_dict(private=False), "use": "enc"},
            {**ed25519("rs").as_dict(private=False), "alg": "RS256"},
            {k: v for k, v in ed25519("x").as_dict(private=False).items() if k != "kid"},
            RSAKey.generate_key(2048, parameters={"kid": "r1"}).as_dict(private=False),
            ed25519("private").as_dict(private=True),
        ]
    }
    assert list(parse_jwks(json.dumps(document))) == ["k1"]


async def test_jwks_is_cached_and_refreshed_once_for_an_unknown_kid() -> None:
    old, new = ed25519("old"), ed25519("new")
    source = Jwks(old)
    check = verifier(source, cache_seconds=300, min_refresh_seconds=0.2)
    for _ in range(20):
        await check.verify(token(old), "/m")
    assert source.fetches == 1
    # Rotation: the first token with the new kid triggers one refresh.
    source.keys = [new, old]
    await check.verify(token(new), "/m")
    assert source.fetches == 2
    # Unknown kids: at most one refresh per min_refresh_seconds, however many arrive at once.
    await asyncio.sleep(0.25)
    stranger = ed25519("stranger")
    answers = await asyncio.gather(*(refused(check, token(stranger)) for _ in range(10)))
    assert answers == ["TOKEN_KID_UNKNOWN"] * 10
    assert source.fetches == 4  # the first at once, one more when the window ended
    # A key rotated in within that window is not refused: the token waits for the next look.
    newer = ed25519("newer")
    source.keys = [newer, new]
    began = time.monotonic()
    await check.verify(token(newer), "/m")
    assert source.fetches == 5
    assert time.monotonic() - began < 0.5
    # Sequential forged kids are looked up no more than once per window.
    began = time.monotonic()
    for _ in range(4):
        assert await refused(check, token(stranger)) == "TOKEN_KID_UNKNOWN"
    assert source.fetches - 5 <= 1 + (time.monotonic() - began) / 0.2


async def test_a_stale_jwks_is_refetched_and_kept_when_identity_is_down() -> None:
    key = ed25519("k1")
    source = Jwks(key)
    check = verifier(source, cache_seconds=0.1, min_refresh_seconds=0.05)
    await check.verify(token(key), "/m")
    source.down = True
    await asyncio.sleep(0.15)
    await check.verify(token(key), "/m")  # refresh failed: the cached keys still verify
    assert source.fetches == 2
    never_loaded = verifier(source)
    with pytest.raises(Unavailable):
        await never_loaded.verify(token(key), "/m")


async def test_deep_json_in_a_token_is_malformed_not_a_recursion_error() -> None:
    key = ed25519("k1")
    check = verifier(Jwks(key))
    _, payload, signature = token(key).split(".")
    assert await refused(check, f"{b64(b'[' * 5_000)}.{payload}.{signature}") == "TOKEN_MALFORMED"
    # Claims are read once the signature holds: deep ones signed by a known key too.
    deep_claims = jws.serialize_compact(
        {"alg": "EdDSA", "kid": "k1"}, b"[" * 5_000, key, algorithms=["EdDSA"]
    )
    assert await refused(check, deep_claims) == "TOKEN_MALFORMED"
