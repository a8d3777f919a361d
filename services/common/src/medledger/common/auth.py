"""Access-token verification every service plugs into the auth interceptor.

Tokens are JWTs that identity signs with EdDSA (Ed25519). Each service verifies them
locally against identity's JWKS, cached: fetched again when older than ``cache_seconds``,
and once when a token names a key id the cache does not hold (a rotation), at most once
per ``min_refresh_seconds`` so forged key ids cannot make us hammer identity. Only EdDSA
over Ed25519 keys is accepted: ``none``, HMAC and RSA tokens (including an HMAC keyed with
our public key, the classic key-confusion attack) are refused before any key is used.

Every refusal is ``Unauthenticated`` with an ErrorInfo reason from :class:`TokenError`;
messages are fixed strings, never echoes of the token.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import grpc
from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError, SecurityWarning
from joserfc.jwk import OKPKey

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.bounded_json import check_jws_header_depth, parse_json
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import MedledgerError, Unauthenticated, Unavailable
from medledger.common.interceptors import Principal

log = logging.getLogger("medledger.auth")

ALGORITHM: Final = "EdDSA"
# What identity puts in "iss" and, unless a client asks for another, in "aud".
DEFAULT_ISSUER: Final = "medledger://identity"
DEFAULT_AUDIENCE: Final = "medledger"
# joserfc warns on every use of "EdDSA" because RFC 9864 prefers the fully specified
# "Ed25519" name; our tokens are EdDSA over Ed25519 only, which is exactly that.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

_REGISTRY: Final = jws.JWSRegistry(algorithms=[ALGORITHM])
MAX_TOKEN_BYTES: Final = 8192

JwksFetcher = Callable[[], Awaitable[str]]


class TokenError:
    """The ErrorInfo reasons of a refused token."""

    MISSING: Final = "TOKEN_MISSING"
    MALFORMED: Final = "TOKEN_MALFORMED"
    SIGNATURE: Final = "TOKEN_SIGNATURE"
    EXPIRED: Final = "TOKEN_EXPIRED"
    NOT_YET_VALID: Final = "TOKEN_NOT_YET_VALID"
    AUDIENCE: Final = "TOKEN_AUDIENCE"
    ISSUER: Final = "TOKEN_ISSUER"
    KID_UNKNOWN: Final = "TOKEN_KID_UNKNOWN"


def _refused(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def parse_jwks(jwks_json: str) -> dict[str, OKPKey]:
    """The Ed25519 signing keys of a JWKS by key id; keys of any other kind, or without
    a ``kid``, are left out (a verifier must never pick them)."""
    document = parse_json(jwks_json)
    keys: dict[str, OKPKey] = {}
    for entry in document.get("keys", []) if isinstance(document, dict) else []:
        if not isinstance(entry, dict):
            continue
        kid = entry.get("kid")
        if (
            entry.get("kty") != "OKP"
            or entry.get("crv") != "Ed25519"
            or entry.get("use", "sig") != "sig"
            or entry.get("alg", ALGORITHM) != ALGORITHM
            or not isinstance(kid, str)
            or not kid
            or "d" in entry
        ):
            continue
        keys[kid] = OKPKey.import_key(entry)
    return keys


def _time(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim, or None when absent."""
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(f"the token's {name} claim is not a number", TokenError.MALFORMED)
    return float(value)


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        raise _refused(f"the token's {name} claim is not a string", TokenError.MALFORMED)
    return value


def _strings(claims: Mapping[str, Any], name: str) -> frozenset[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _refused(f"the token's {name} claim is not a list of strings", TokenError.MALFORMED)
    return frozenset(value)


class JwksTokenVerifier:
    """Implements :class:`medledger.common.interceptors.TokenVerifier` with a cached JWKS."""

    def __init__(
        self,
        fetch_jwks: JwksFetcher,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: int = 30,
        cache_seconds: float = 300.0,
        min_refresh_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._fetch = fetch_jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._cache_seconds = cache_seconds
        self._min_refresh = min_refresh_seconds
        self._clock = clock
        self._keys: dict[str, OKPKey] = {}
        self._loaded_at: float | None = None  # monotonic time of the last good fetch
        self._fetched_at: float | None = None  # monotonic time of the last fetch attempt
        self._unknown_kid_at: float | None = None  # monotonic time of the last kid miss refresh
        self._generation = 0  # fetch attempts so far
        self._lock = asyncio.Lock()

    def _not_within(self, since: float | None) -> bool:
        return since is None or time.monotonic() - since >= self._min_refresh

    async def _refresh(self, seen: int) -> None:
        """Fetches the JWKS unless another caller did since attempt ``seen`` (one flight)."""
        async with self._lock:
            if self._generation != seen:
                return
            self._generation += 1
            self._fetched_at = time.monotonic()
            try:
                keys = parse_jwks(await self._fetch())
            except (ValueError, JoseError, MedledgerError):
                log.warning("jwks fetch failed", extra={"cached_keys": len(self._keys)})
                return
            self._keys = keys
            self._loaded_at = self._fetched_at

    async def _key(self, kid: str) -> OKPKey:
        stale = self._loaded_at is None or time.monotonic() - self._loaded_at > self._cache_seconds
        if stale and self._not_within(self._fetched_at):
            await self._refresh(self._generation)
        if self._loaded_at is None:
            raise Unavailable("identity jwks")
        key = self._keys.get(kid)
        if key is None:
            # A kid we do not know: identity may have rotated. Look it up, but at most once per
            # min_refresh_seconds for all unknown kids (forged kids must not flood identity);
            # a caller inside that window waits for its end instead of being refused, so the
            # first tokens of a newly rotated key are not lost to an earlier lookup.
            if self._unknown_kid_at is not None:
                wait = self._unknown_kid_at + self._min_refresh - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            key = self._keys.get(kid)  # another caller's lookup may have brought it
            if key is None and self._not_within(self._unknown_kid_at):
                self._unknown_kid_at = time.monotonic()
                await self._refresh(self._generation)
                key = self._keys.get(kid)
        if key is None:
            raise _refused("the token's signing key is not known", TokenError.KID_UNKNOWN)
        return key

    async def verify(self, token: str, method: str) -> Principal:
        if not token:
            raise _refused("a bearer token is required", TokenError.MISSING)
        if len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
            raise _refused("the token is not a compact JWS", TokenError.MALFORMED)
        try:
            check_jws_header_depth(token)
            signed = jws.extract_compact(token.encode("ascii"), registry=_REGISTRY)
            header = signed.headers()
        except (JoseError, ValueError, UnicodeError):
            raise _refused("the token is not a compact JWS", TokenError.MALFORMED) from None
        if header.get("alg") != ALGORITHM:
            raise _refused("the token's algorithm is not accepted", TokenError.SIGNATURE)
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _refused("the token names no signing key", TokenError.MALFORMED)
        key = await self._key(kid)
        try:
            valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        except BadSignatureError:
            valid = False
        except JoseError:
            raise _refused("the token is not a compact JWS", TokenError.MALFORMED) from None
        if not valid:
            raise _refused("the token's signature is not valid", TokenError.SIGNATURE)
        try:
            claims = parse_json(signed.payload)
        except ValueError:
            claims = None
        if not isinstance(claims, dict):
            raise _refused("the token's claims are not a JSON object", TokenError.MALFORMED)
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if claims.get("iss") != self._issuer:
            raise _refused("the token was not issued by identity", TokenError.ISSUER)
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or self._audience not in audiences:
            raise _refused("the token is not meant for this service", TokenError.AUDIENCE)
        now = self._clock()
        expires, issued, not_before = (_time(claims, n) for n in ("exp", "iat", "nbf"))
        if expires is None or issued is None:
            raise _refused("the token must carry exp and iat", TokenError.MALFORMED)
        if now >= expires + self._leeway:
            raise _refused("the token has expired", TokenError.EXPIRED)
        if issued > now + self._leeway or (
            not_before is not None and not_before > now + self._leeway
        ):
            raise _refused("the token is not valid yet", TokenError.NOT_YET_VALID)
        subject = _string(claims, "sub")
        if not subject:
            raise _refused("the token has no subject", TokenError.MALFORMED)
        return Principal(
            subject=subject,
            organization=_string(claims, "org"),
            client_id=_string(claims, "client_id"),
            scopes=frozenset(_string(claims, "scope").split()),
            purposes=_strings(claims, "purposes"),
            claims=claims,
        )


class IdentityJwksFetcher:
    """Fetches identity's JWKS over gRPC (``GetJwks`` needs no token)."""

    def __init__(self, address: str, settings: ServiceSettings, *, timeout: float = 5.0) -> None:
        self._address = address
        self._settings = settings
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None

    async def __call__(self) -> str:
        if self._channel is None:
            self._channel = create_channel(self._address, self._settings)
        stub: identity_pb2_grpc.IdentityServiceAsyncStub = identity_pb2_grpc.IdentityServiceStub(
            self._channel
        )
        try:
            response = await stub.GetJwks(identity_pb2.GetJwksRequest(), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise Unavailable("identity") from exc
        return response.jwks_json

    async def aclose(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None


def identity_jwks_fetcher(address: str, settings: ServiceSettings) -> IdentityJwksFetcher:
    """The JWKS source of every service but identity: ``GetJwks`` on ``address``."""
    return IdentityJwksFetcher(address, settings)


def service_verifier(
    settings: ServiceSettings, identity_address: str
) -> tuple[JwksTokenVerifier, IdentityJwksFetcher]:
    """The verifier a service (all but identity) plugs into its auth interceptor, and the
    fetcher to close at shutdown."""
    fetcher = identity_jwks_fetcher(identity_address, settings)
    verifier = JwksTokenVerifier(
        fetcher, issuer=settings.token_issuer, audience=settings.token_audience
    )
    return verifier, fetcher
