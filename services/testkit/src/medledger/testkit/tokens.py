"""Access tokens for tests of services that check them, without running identity.

A service serves no one without a token verifier, so a test injects one: a
:class:`LocalIssuer` signs tokens with an Ed25519 key made here (EdDSA, as identity signs
them) and :meth:`LocalIssuer.verifier` is the services' own ``JwksTokenVerifier`` over that
key's JWKS, so it accepts exactly these tokens, through the real verification code.
Tests of the token flow itself use identity (``medledger.testkit.platform``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from typing import Any

import grpc
from joserfc import jwt
from joserfc.jwk import OKPKey

from medledger.common.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER, JwksTokenVerifier
from medledger.common.ledger_client import TokenSource
from medledger.common.scopes import PLATFORM_SCOPES

# Every platform scope and every SMART permission on every resource: a caller that every
# declared policy admits, for tests about something else than authorisation.
ALL_SCOPES = (*sorted(PLATFORM_SCOPES), "system/*.cruds")


class LocalIssuer:
    def __init__(
        self,
        *,
        issuer: str = DEFAULT_ISSUER,
        audience: str = DEFAULT_AUDIENCE,
        lifetime_seconds: int = 3600,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._lifetime = lifetime_seconds
        self._key = OKPKey.generate_key(
            "Ed25519", parameters={"kid": f"test-{uuid.uuid4().hex[:8]}"}
        )

    async def jwks(self) -> str:
        return json.dumps({"keys": [self._key.as_dict(private=False, use="sig", alg="EdDSA")]})

    def verifier(self) -> JwksTokenVerifier:
        """A verifier accepting this issuer's tokens (one per server: it caches per event loop)."""
        return JwksTokenVerifier(self.jwks, issuer=self.issuer, audience=self.audience)

    def token(
        self,
        scopes: Iterable[str] = ALL_SCOPES,
        *,
        subject: str = "test-client",
        organization: str = "test-org",
        purposes: Iterable[str] = (),
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": subject,
            "client_id": subject,
            "org": organization,
            "scope": " ".join(scopes),
            "purposes": list(purposes),
            "iat": now,
            "exp": now + self._lifetime,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": "EdDSA", "kid": self._key.kid}
        return jwt.encode(header, claims, self._key, algorithms=["EdDSA"])

    def metadata(self, scopes: Iterable[str] = ALL_SCOPES, **claims: Any) -> list[tuple[str, str]]:
        """Call metadata carrying a fresh token with ``scopes``."""
        return [("authorization", f"Bearer {self.token(scopes, **claims)}")]

    def source(self, scopes: Iterable[str] = ALL_SCOPES, **claims: Any) -> TokenSource:
        """What a client that fetches its own tokens (LedgerClient, the witness publisher)
        takes: a fresh token with ``scopes`` on each call."""
        fixed = tuple(scopes)

        async def fresh() -> str:
            return self.token(fixed, **claims)

        return fresh

    def channel(self, address: str, scopes: Iterable[str] = ALL_SCOPES) -> grpc.aio.Channel:
        """An insecure channel whose every call carries a token with ``scopes``."""
        return authed_channel(address, self.token(scopes))


class _Bearer:
    """Adds ``authorization: Bearer <token>`` to a call's metadata."""

    def __init__(self, token: str) -> None:
        self._token = token

    def _with_token(self, details: Any) -> Any:
        metadata = list(details.metadata or [])
        metadata.append(("authorization", f"Bearer {self._token}"))
        return details._replace(metadata=metadata)


class _UnaryBearer(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


# grpc.aio files an interceptor under the first call shape it implements, so each shape
# needs its own.
class _StreamBearer(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


def authed_channel(address: str, token: str) -> grpc.aio.Channel:
    """An insecure channel whose every unary-request call carries ``token``."""
    interceptors: list[Any] = [_UnaryBearer(token), _StreamBearer(token)]
    return grpc.aio.insecure_channel(address, interceptors=interceptors)


# One issuer for the tests of a process; each server still gets its own verifier.
TEST_TOKENS = LocalIssuer()
