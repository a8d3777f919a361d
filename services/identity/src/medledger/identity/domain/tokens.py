"""Access tokens: who gets one, with which scopes and purposes, and the signing key's life.

Tokens are JWTs (RFC 9068 shape): iss, sub, aud, exp, iat, nbf, jti, plus ``org``,
``scope`` (space-separated), ``purposes`` (HL7 PurposeOfUse codes) and either
``client_id`` (partner clients) or ``user_kind`` (users). A token exists only once the
ledger holds its entry (TOKEN_ISSUED for a partner client, USER_LOGIN for a user): if the
ledger does not answer, no token is returned.

A password login answers every failure alike (a wrong username, password or TOTP code, a
missing code, a disabled user): same code, reason and message, and never sooner than
``TokenPolicy.failed_login_floor`` after it began, so neither the answer nor its timing tells
which check failed. Each attempt passes the :class:`LoginThrottle` before its password is
hashed; unknown usernames cost a hash as known ones do.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Final, NoReturn

from medledger.common.errors import (
    FieldViolation,
    InvalidArgument,
    MedledgerError,
    PermissionDenied,
    Unauthenticated,
)
from medledger.common.interceptors import Principal
from medledger.identity.domain import passwords
from medledger.identity.domain.assertions import ASSERTION_TYPE, AssertionVerifier
from medledger.identity.domain.authz import require_admin
from medledger.identity.domain.directory import utc_now
from medledger.identity.domain.login_throttle import LoginThrottle
from medledger.identity.domain.passwords import Passwords
from medledger.identity.domain.ports import (
    SECOND_FACTOR_KINDS,
    Credentials,
    DirectoryStorage,
    IdentityEvents,
    SecretSealer,
    TokenSigner,
)
from medledger.identity.domain.purposes import ETREAT, HOPERAT, PATRQT, TREAT
from medledger.identity.domain.scopes import (
    ADMIN,
    LEDGER_APPEND,
    LEDGER_READ,
    Scope,
    covered,
    normalized,
    parse_scopes,
)

# The identity service's own principal, for the calls it makes (ledger appends).
SERVICE_PRINCIPAL: Final = "medledger-identity"
MAX_USERNAME_LENGTH: Final = 128  # directory.USERNAME's bound


@dataclass(frozen=True)
class UserPolicy:
    """What a kind of user may ask for: the scopes and the purposes of its tokens."""

    scopes: tuple[str, ...]
    purposes: tuple[str, ...]


USER_POLICIES: Final[Mapping[str, UserPolicy]] = MappingProxyType(
    {
        "practitioner": UserPolicy(("user/*.cruds",), (TREAT, ETREAT, HOPERAT)),
        # Patients read their own record and manage their own consents.
        "patient": UserPolicy(("patient/*.rs", "patient/Consent.cu"), (PATRQT,)),
        "admin": UserPolicy((ADMIN, LEDGER_READ), (HOPERAT,)),
    }
)


@dataclass(frozen=True)
class TokenPolicy:
    issuer: str
    default_audience: str
    lifetime: timedelta
    service_organization: str
    # A failed password login answers no sooner than this after it began.
    failed_login_floor: timedelta = timedelta(0)


@dataclass(frozen=True)
class IssuedToken:
    access_token: str
    expires_in: int
    scope: str


def _granted(requested: str, allowed: Sequence[str], field: str) -> list[str]:
    """The requested scopes (all allowed ones when none are asked for), each covered by
    an allowed scope; PermissionDenied otherwise."""
    granted: list[Scope] = parse_scopes(allowed, "allowed_scopes")
    if not requested.strip():
        return normalized(granted)
    wanted = parse_scopes(requested.split(), field)
    refused = [str(s) for s in wanted if not covered(s, granted)]
    if refused:
        raise PermissionDenied(
            "a requested scope is not allowed",
            reason="SCOPE_NOT_ALLOWED",
            metadata={"refused_scopes": " ".join(refused)},
        )
    return normalized(wanted)


class TokenService:
    def __init__(
        self,
        store: DirectoryStorage,
        signer: TokenSigner,
        sealer: SecretSealer,
        events: IdentityEvents,
        assertions: AssertionVerifier,
        policy: TokenPolicy,
        passwords: Passwords,
        throttle: LoginThrottle,
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._signer = signer
        self._sealer = sealer
        self._events = events
        self._assertions = assertions
        self._policy = policy
        self._passwords = passwords
        self._throttle = throttle
        self._clock = clock
        # identity's own ledger token, its expiry and the signing key version that signed it.
        self._service_token: tuple[str, datetime, int] | None = None
        # One rotation at a time here: each ledgers the version it creates, so two at once
        # would both claim the same version (another replica's conflict is ABORTED).
        self._rotation = asyncio.Lock()

    async def _sign(
        self,
        *,
        subject: str,
        organization: str,
        audience: str,
        scopes: Sequence[str],
        purposes: Sequence[str],
        extra: Mapping[str, object],
    ) -> tuple[str, str, datetime]:
        """(token, jti, expiry)."""
        now = self._clock()
        issued = int(now.timestamp())
        expires = issued + int(self._policy.lifetime.total_seconds())
        jti = uuid.uuid4().hex
        claims: dict[str, object] = {
            "iss": self._policy.issuer,
            "sub": subject,
            "aud": audience,
            "exp": expires,
            "iat": issued,
            "nbf": issued,
            "jti": jti,
            "org": organization,
            "scope": " ".join(scopes),
            "purposes": list(purposes),
            **extra,
        }
        token = await self._signer.sign(claims)
        return token, jti, datetime.fromtimestamp(expires, now.tzinfo)

    def _issued(self, token: str, scopes: Sequence[str]) -> IssuedToken:
        return IssuedToken(token, int(self._policy.lifetime.total_seconds()), " ".join(scopes))

    async def client_credentials(
        self, assertion_type: str, assertion: str, scope: str, audience: str
    ) -> IssuedToken:
        problems: list[FieldViolation] = []
        if assertion_type != ASSERTION_TYPE:
            problems.append(
                FieldViolation(
                    "client_credentials.client_assertion_type", f"must be {ASSERTION_TYPE}"
                )
            )
        if not assertion:
            problems.append(FieldViolation("client_credentials.client_assertion", "is required"))
        if not scope.strip():
            problems.append(FieldViolation("client_credentials.scope", "is required"))
        if audience not in ("", self._policy.default_audience):
            # Every medledger service verifies tokens for the one audience; a token for any
            # other would be refused by all of them.
            problems.append(
                FieldViolation(
                    "client_credentials.audience",
                    "must be empty or the audience the medledger services accept",
                )
            )
        if problems:
            raise InvalidArgument(problems)
        accepted = await self._assertions.accept(assertion, self._clock())
        client = accepted.client
        try:
            scopes = _granted(scope, client.allowed_scopes, "client_credentials.scope")
            token, jti, _ = await self._sign(
                subject=client.client_id,
                organization=client.organization,
                audience=audience or self._policy.default_audience,
                scopes=scopes,
                purposes=client.allowed_purposes,
                extra={"client_id": client.client_id},
            )
            # No ledger entry, no token: the ledger must know every token a partner holds.
            await self._events.token_issued(client.client_id, client.organization, jti)
        except MedledgerError:
            # No token came of the assertion: a retry may send it again (gRPC's own retry
            # of an UNAVAILABLE answer does), instead of meeting ASSERTION_REPLAYED.
            with contextlib.suppress(MedledgerError):
                await self._assertions.release(accepted)
            raise
        return self._issued(token, scopes)

    async def password(
        self, username: str, password: str, totp_code: str, scope: str, *, source: str
    ) -> IssuedToken:
        """A user's token for a password (and TOTP code) sent from ``source`` (the caller's
        network address, which the throttle counts by)."""
        problems: list[FieldViolation] = []
        if not username:
            problems.append(FieldViolation("password.username", "is required"))
        elif len(username) > MAX_USERNAME_LENGTH:
            problems.append(FieldViolation("password.username", "is too long"))
        if not password:
            problems.append(FieldViolation("password.password", "is required"))
        elif len(password) > passwords.MAX_PASSWORD_LENGTH:
            problems.append(FieldViolation("password.password", "is too long"))
        if problems:
            raise InvalidArgument(problems)
        began = time.monotonic()
        username = username.lower()
        self._passwords.check_capacity()
        await self._throttle.admit(source, username)
        found = await self._store.credentials(username)
        matches, rehash = await self._passwords.verify(
            found.password_hash if found else None, password
        )
        if found is None or not matches or found.user.disabled:
            await self._refuse(began)
        step = 0
        if found.sealed_totp_secret or found.user.kind in SECOND_FACTOR_KINDS:
            step = await self._totp_step(found, totp_code)
            if not step:
                await self._refuse(began)
        user = found.user
        policy = USER_POLICIES[user.kind]
        scopes = _granted(scope, policy.scopes, "password.scope")
        new_hash = await self._passwords.hash(password) if rehash else None
        if not await self._store.login_succeeded(
            user.user_id, totp_step=step, password_hash=new_hash
        ):
            await self._refuse(began)  # the same code, used by a login that just won a race
        await self._throttle.succeeded(source, username)
        extra: dict[str, object] = {"user_kind": user.kind}
        if user.patient_id:
            extra["patient"] = user.patient_id
        token, jti, _ = await self._sign(
            subject=user.user_id,
            organization=user.organization,
            audience=self._policy.default_audience,
            scopes=scopes,
            purposes=policy.purposes,
            extra=extra,
        )
        # As for clients: no ledger entry, no token.
        await self._events.user_login(
            user.user_id, user.organization, jti, patient_id=user.patient_id
        )
        return self._issued(token, scopes)

    async def _totp_step(self, found: Credentials, code: str) -> int:
        """The time step of a valid, unused TOTP code; 0 when there is none (a user who
        must have a second factor but is not enrolled has none)."""
        if not found.sealed_totp_secret or not code:
            return 0
        secret = (await self._sealer.unseal(found.sealed_totp_secret)).decode()
        matched = passwords.matching_step(secret, code, self._clock())
        if matched is None or matched <= found.last_totp_step:
            return 0
        return matched

    async def _refuse(self, began: float) -> NoReturn:
        remaining = self._policy.failed_login_floor.total_seconds() - (time.monotonic() - began)
        if remaining > 0:
            await asyncio.sleep(remaining)
        raise Unauthenticated(
            "wrong username, password or one-time code", reason="INVALID_CREDENTIALS"
        )

    async def jwks(self) -> str:
        return await self._signer.jwks()

    async def rotate_signing_key(self, principal: Principal | None) -> str:
        """Makes current the signing key version an operator created in Vault (identity's
        own Vault policy cannot rotate it); returns its kid. The rotation is ledgered first
        (idempotently, by that version), so none goes unrecorded."""
        caller = require_admin(principal)
        async with self._rotation:
            version = await self._signer.next_version()
            await self._events.key_rotated(
                caller.subject,
                caller.organization or self._policy.service_organization,
                self._signer.key_name,
                version,
            )
            return await self._signer.rotate()

    async def service_token(self) -> str:
        """identity's own token for the ledger, reused until a minute before it expires."""
        margin = min(timedelta(minutes=1), self._policy.lifetime / 2)
        cached = self._service_token
        # Not once the key has moved on: after two rotations the JWKS no longer lists the
        # version that signed it, and the ledger would refuse it (TOKEN_KID_UNKNOWN) until
        # it expired. A ledger missing a kid asks GetJwks, which brings this signer's
        # versions up to date, so the next call here signs anew.
        if (
            cached is not None
            and self._clock() < cached[1] - margin
            and cached[2] == await self._signer.current_version()
        ):
            return cached[0]
        token, _, expires = await self._sign(
            subject=SERVICE_PRINCIPAL,
            organization=self._policy.service_organization,
            audience=self._policy.default_audience,
            scopes=[LEDGER_APPEND],
            purposes=[],
            extra={"client_id": SERVICE_PRINCIPAL},
        )
        self._service_token = (token, expires, await self._signer.current_version())
        return token
