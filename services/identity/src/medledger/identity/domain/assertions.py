"""Client authentication by signed JWT assertion (RFC 7523 §2.2, SMART Backend Services).

The assertion must be signed by a key the client registered, with an asymmetric algorithm
suited to that key (never ``none``, never HMAC); iss = sub = the client id; aud = our token
endpoint; a short lifetime; and a jti never seen before (kept until the assertion expires,
so a captured assertion cannot be replayed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import Key

from medledger.common.bounded_json import check_jws_header_depth, parse_json
from medledger.common.errors import Unauthenticated
from medledger.identity.domain.client_keys import (
    ALGORITHMS_BY_KEY_TYPE,
    ASSERTION_ALGORITHMS,
    client_key_set,
)
from medledger.identity.domain.ports import Client, DirectoryStorage

ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_BYTES: Final = 8192
MAX_JTI_LENGTH: Final = 256
_REGISTRY: Final = jws.JWSRegistry(algorithms=sorted(ASSERTION_ALGORITHMS))


@dataclass(frozen=True)
class AssertionPolicy:
    token_endpoint: str
    max_lifetime: timedelta
    leeway: timedelta


def _refused(message: str, reason: str) -> Unauthenticated:
    return Unauthenticated(message, reason=reason)


def _pick_key(client: Client, header: Mapping[str, Any]) -> Key:
    keys = client_key_set(client.jwks_json).keys
    kid = header.get("kid")
    candidates = [k for k in keys if k.kid == kid] if kid is not None else keys
    if len(candidates) != 1:
        raise _refused("no registered key of the client matches", "ASSERTION_KEY_UNKNOWN")
    key = candidates[0]
    if header.get("alg") not in ALGORITHMS_BY_KEY_TYPE[key.key_type] or (
        key.alg is not None and key.alg != header.get("alg")
    ):
        raise _refused("the algorithm does not suit the client's key", "ASSERTION_SIGNATURE")
    return key


def _timestamp(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _refused(f"the assertion's {name} must be a number", "ASSERTION_CLAIMS")
    return float(value)


@dataclass(frozen=True)
class AcceptedAssertion:
    client: Client
    jti: str


class AssertionVerifier:
    def __init__(self, store: DirectoryStorage, policy: AssertionPolicy) -> None:
        self._store = store
        self._policy = policy

    async def verify(self, assertion: str, now: datetime) -> Client:
        """The client the assertion authenticates, or Unauthenticated with a reason."""
        return (await self.accept(assertion, now)).client

    async def release(self, accepted: AcceptedAssertion) -> None:
        """Lets ``accepted`` be sent again: no token was issued for it (the ledger did not
        take the TOKEN_ISSUED entry, say), and a client's retry, or gRPC's own, resends the
        very same assertion."""
        await self._store.forget_assertion(accepted.client.client_id, accepted.jti)

    async def accept(self, assertion: str, now: datetime) -> AcceptedAssertion:
        """The client the assertion authenticates and the assertion's id, now used up."""
        if len(assertion) > MAX_ASSERTION_BYTES or assertion.count(".") != 2:
            raise _refused("the client assertion is not a compact JWS", "ASSERTION_MALFORMED")
        try:
            check_jws_header_depth(assertion)
            signed = jws.extract_compact(assertion.encode("ascii"), registry=_REGISTRY)
            header = signed.headers()
            claims = parse_json(signed.payload)
        except (JoseError, ValueError, UnicodeError):
            raise _refused(
                "the client assertion is not a compact JWS", "ASSERTION_MALFORMED"
            ) from None
        if header.get("alg") not in ASSERTION_ALGORITHMS:
            raise _refused("the assertion's algorithm is not accepted", "ASSERTION_SIGNATURE")
        if not isinstance(claims, dict):
            raise _refused("the assertion's claims are not an object", "ASSERTION_MALFORMED")
        client_id = claims.get("iss")
        if not isinstance(client_id, str) or not client_id or claims.get("sub") != client_id:
            raise _refused("the assertion's iss and sub must be the client id", "ASSERTION_CLAIMS")
        client = await self._store.client(client_id)
        if client is None:
            raise _refused("the client is not registered", "CLIENT_UNKNOWN")
        key = _pick_key(client, header)
        try:
            valid = jws.validate_compact(signed, key, registry=_REGISTRY)
        except BadSignatureError:
            valid = False
        except JoseError:
            raise _refused(
                "the algorithm does not suit the client's key", "ASSERTION_SIGNATURE"
            ) from None
        if not valid:
            raise _refused("the assertion's signature is not valid", "ASSERTION_SIGNATURE")
        # Only a genuine assertion may learn that the client is disabled or burn a jti.
        if client.disabled:
            raise _refused("the client is disabled", "CLIENT_DISABLED")
        expires = self._check_claims(claims, now)
        jti = claims["jti"]
        if not await self._store.remember_assertion(client.client_id, jti, expires):
            raise _refused("the client assertion was already used", "ASSERTION_REPLAYED")
        return AcceptedAssertion(client, str(jti))

    def _check_claims(self, claims: Mapping[str, Any], now: datetime) -> datetime:
        """Checks aud, exp, nbf, iat and jti; returns until when the jti must be kept."""
        policy = self._policy
        audience = claims.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience
        if not isinstance(audiences, list) or policy.token_endpoint not in audiences:
            raise _refused("the assertion's aud must be the token endpoint", "ASSERTION_AUDIENCE")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_LENGTH:
            raise _refused("the assertion needs a jti", "ASSERTION_CLAIMS")
        expires = _timestamp(claims, "exp")
        if expires is None:
            raise _refused("the assertion needs an exp", "ASSERTION_CLAIMS")
        current = now.timestamp()
        leeway = policy.leeway.total_seconds()
        if current >= expires + leeway:
            raise _refused("the client assertion has expired", "ASSERTION_EXPIRED")
        if expires > current + (policy.max_lifetime + policy.leeway).total_seconds():
            raise _refused("the assertion's exp is too far ahead", "ASSERTION_LIFETIME")
        for name in ("nbf", "iat"):
            value = _timestamp(claims, name)
            if value is not None and value > current + leeway:
                raise _refused("the client assertion is not valid yet", "ASSERTION_NOT_YET_VALID")
        return datetime.fromtimestamp(expires, now.tzinfo) + policy.leeway
