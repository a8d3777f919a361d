"""``medledger token``: a client's private key → an access token, for scripts, grpcurl and
buf curl (``TOKEN=$(medledger token ...)``).

The command signs an RFC 7523 client assertion (iss = sub = the client id, aud = identity's
token endpoint, one-minute lifetime, a fresh jti) with the client's private JWK, the way
SMART Backend Services clients authenticate, and exchanges it with ``IssueToken``. The key
never leaves this machine; identity only ever sees the signed assertion.

:func:`request_token` is the same exchange for other commands (``medledger demo``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from google.protobuf import json_format
from rich.console import Console

from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.cli.calls import CallFailed, checked, open_channel
from medledger.common.auth import DEFAULT_AUDIENCE
from medledger.common.keyfiles import ClientKey, KeyFileError, load_private_key, signing_algorithm
from medledger.common.service_tokens import (
    ASSERTION_TYPE,
    DEFAULT_TOKEN_ENDPOINT,
    client_assertion,
)

DEFAULT_IDENTITY: Final = "127.0.0.1:50051"

errors = Console(stderr=True)

IdentityOption = Annotated[
    str,
    typer.Option(
        "--identity",
        metavar="HOST:PORT",
        envvar="MEDLEDGER_IDENTITY_ADDR",
        help="Identity's gRPC address.",
    ),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds the call to identity may take.")
]


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without checking its signature: only to fill in a request
    that the server checks against the verified token anyway (``consent check``)."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a JWT (header.payload.signature)")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a JWT (its payload is not base64url JSON)") from None
    if not isinstance(claims, dict):
        raise ValueError("not a JWT (its payload is not a JSON object)")
    return claims


async def request_token(
    identity: str,
    client_id: str,
    key: ClientKey,
    scope: str,
    *,
    audience: str = DEFAULT_AUDIENCE,
    token_endpoint: str = DEFAULT_TOKEN_ENDPOINT,
    timeout: float = 10.0,
) -> identity_pb2.IssueTokenResponse:
    """Exchanges a fresh client assertion for an access token; :class:`CallFailed` when
    identity refuses (the reason says why: ``ASSERTION_KEY_UNKNOWN``, ``SCOPE_NOT_ALLOWED``…)."""
    request = identity_pb2.IssueTokenRequest(
        client_credentials=identity_pb2.ClientCredentialsGrant(
            client_assertion_type=ASSERTION_TYPE,
            client_assertion=client_assertion(client_id, key, token_endpoint=token_endpoint),
            scope=scope,
            audience=audience,
        )
    )
    async with open_channel(identity) as channel:
        stub: identity_pb2_grpc.IdentityServiceAsyncStub = identity_pb2_grpc.IdentityServiceStub(
            channel
        )
        return await checked("IssueToken", identity, stub.IssueToken(request, timeout=timeout))


def token_command(
    *,
    client_id: Annotated[
        str, typer.Option("--client-id", help="The client id identity registered.")
    ],
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            dir_okay=False,
            metavar="FILE",
            help="The client's private JWK (Ed25519, P-256 or RSA), e.g. "
            ".medledger/keys/hospital-a-app.jwk.",
        ),
    ],
    scope: Annotated[
        str,
        typer.Option(
            "--scope",
            envvar="MEDLEDGER_SCOPE",
            help="Space-separated scopes to ask for, within the client's allowed ones (SMART "
            'v2 such as "system/Observation.rs", or ledger.read).',
        ),
    ],
    audience: Annotated[
        str, typer.Option("--audience", help='Who the token is for ("aud").')
    ] = DEFAULT_AUDIENCE,
    identity: IdentityOption = DEFAULT_IDENTITY,
    token_endpoint: Annotated[
        str,
        typer.Option(
            "--token-endpoint",
            envvar="MEDLEDGER_TOKEN_ENDPOINT",
            help="The assertion's \"aud\": identity's IDENTITY_TOKEN_ENDPOINT.",
        ),
    ] = DEFAULT_TOKEN_ENDPOINT,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the whole answer (token, type, lifetime, scopes)."),
    ] = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Get an access token for a client, signed for with its private key.

    Prints the token alone, for TOKEN=$(medledger token ...) and
    `authorization: Bearer $TOKEN` (grpcurl -H, buf curl -H, any gRPC client).

    Exit status: 0 a token; 1 identity refused or did not answer (the reason is printed);
    2 a usage error (a bad option or key file).
    """
    try:
        private = load_private_key(key)
        signing_algorithm(private)
    except KeyFileError as error:
        raise typer.BadParameter(str(error), param_hint="--key") from None
    try:
        reply = asyncio.run(
            request_token(
                identity,
                client_id,
                private,
                scope,
                audience=audience,
                token_endpoint=token_endpoint,
                timeout=timeout,
            )
        )
    except CallFailed as failure:
        errors.print(f"[red bold]✗ no token:[/red bold] {failure}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if as_json:
        document = json_format.MessageToDict(reply, always_print_fields_with_no_presence=True)
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(reply.access_token)
