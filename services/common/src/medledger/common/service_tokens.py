"""Access tokens for a service's own calls to other services (RFC 7523 client credentials).

Each calling service is a client of identity whose key is a Vault transit Ed25519 key: the
client assertion is signed inside Vault, so no service holds a private key. The token is
cached and renewed shortly before it expires.

A process that acts for a partner client instead (the MLLP listener, as each sending
facility's client) signs with that client's private JWK file: :class:`ClientKeyTokenSource`,
with the same :func:`client_assertion` as ``medledger token``.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import json
import time
import uuid
import warnings
from typing import Any

import grpc
from joserfc import jwt
from joserfc.errors import SecurityWarning

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import MedledgerError, Unavailable
from medledger.common.keyfiles import ClientKey, signing_algorithm
from medledger.common.vault import VaultTransit

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_TOKEN_ENDPOINT = "medledger://identity/token"  # noqa: S105 (a URL)
RENEW_BEFORE_SECONDS = 60
ASSERTION_LIFETIME_SECONDS = 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def client_jwks(public_keys: dict[int, bytes]) -> str:
    """The JWKS identity registers for a service client: one OKP key per Vault version,
    ``kid`` ``v<version>``."""
    return json.dumps(
        {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(public),
                    "kid": f"v{version}",
                    "use": "sig",
                    "alg": "EdDSA",
                }
                for version, public in sorted(public_keys.items())
            ]
        },
        sort_keys=True,
    )


def client_assertion(
    client_id: str,
    key: ClientKey,
    *,
    token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    lifetime_seconds: int = ASSERTION_LIFETIME_SECONDS,
) -> str:
    """A signed RFC 7523 client assertion (iss = sub = the client id, aud = identity's token
    endpoint, a fresh jti), usable once, signed with the client's private JWK."""
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": uuid.uuid4().hex,
    }
    algorithm = signing_algorithm(key)
    header = {"alg": algorithm, "typ": "JWT"}
    if key.kid:
        header["kid"] = key.kid
    with warnings.catch_warnings():
        # joserfc flags "EdDSA" (RFC 9864 prefers "Ed25519"); it is what partners register.
        warnings.simplefilter("ignore", SecurityWarning)
        return jwt.encode(header, claims, key, algorithms=[algorithm])


class TokenSource(abc.ABC):
    """``await source()`` gives a valid bearer token for ``scope`` (cached); subclasses say
    how the client assertion is signed."""

    def __init__(
        self,
        client_id: str,
        identity_address: str,
        settings: ServiceSettings,
        *,
        scope: str,
        audience: str = "medledger",
        token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    ) -> None:
        self._client_id = client_id
        self._scope = scope
        self._audience = audience
        self._token_endpoint = token_endpoint
        self._channel = create_channel(identity_address, settings)
        self._stub: identity_pb2_grpc.IdentityServiceAsyncStub = (
            identity_pb2_grpc.IdentityServiceStub(self._channel)
        )
        self._token: tuple[str, float] | None = None
        self._lock = asyncio.Lock()

    @abc.abstractmethod
    async def _assertion(self) -> str:
        """A fresh client assertion of the client."""

    async def __call__(self) -> str:
        async with self._lock:
            if self._token is not None and time.monotonic() < self._token[1]:
                return self._token[0]
            request = identity_pb2.IssueTokenRequest(
                client_credentials=identity_pb2.ClientCredentialsGrant(
                    client_assertion_type=ASSERTION_TYPE,
                    client_assertion=await self._assertion(),
                    scope=self._scope,
                    audience=self._audience,
                )
            )
            try:
                reply = await self._stub.IssueToken(request, timeout=10)
            except grpc.aio.AioRpcError as error:
                if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise Unavailable("identity") from error
                raise MedledgerError(
                    "identity refused this service's credentials", reason="SERVICE_TOKEN_REFUSED"
                ) from error
            expires = time.monotonic() + max(reply.expires_in - RENEW_BEFORE_SECONDS, 5)
            self._token = (reply.access_token, expires)
            return reply.access_token

    async def aclose(self) -> None:
        await self._channel.close(None)


class ClientKeyTokenSource(TokenSource):
    """Tokens of a partner client whose private JWK this process holds."""

    def __init__(
        self,
        key: ClientKey,
        client_id: str,
        identity_address: str,
        settings: ServiceSettings,
        *,
        scope: str,
        audience: str = "medledger",
        token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    ) -> None:
        super().__init__(
            client_id,
            identity_address,
            settings,
            scope=scope,
            audience=audience,
            token_endpoint=token_endpoint,
        )
        self._key = key

    async def _assertion(self) -> str:
        return client_assertion(self._client_id, self._key, token_endpoint=self._token_endpoint)


class ServiceTokenSource(TokenSource):
    """Tokens of a service whose client key is a Vault transit Ed25519 key."""

    def __init__(
        self,
        vault: VaultTransit,
        key: str,
        client_id: str,
        identity_address: str,
        settings: ServiceSettings,
        *,
        scope: str,
        audience: str = "medledger",
        token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    ) -> None:
        super().__init__(
            client_id,
            identity_address,
            settings,
            scope=scope,
            audience=audience,
            token_endpoint=token_endpoint,
        )
        self._vault = vault
        self._key = key
        self._version: int | None = None

    async def _assertion(self) -> str:
        if self._version is None:
            self._version = max(await self._vault.public_keys(self._key))
        now = int(time.time())
        header = {"alg": "EdDSA", "typ": "JWT", "kid": f"v{self._version}"}
        claims: dict[str, Any] = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": self._token_endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
        }
        signing_input = (
            f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        )
        signature = await self._vault.sign(self._key, signing_input.encode("ascii"))
        if signature.key_version != self._version:  # rotated since we looked: sign again
            self._version = None
            return await self._assertion()
        return f"{signing_input}.{_b64url(signature.signature)}"
