"""The first admin: every admin RPC needs an admin token, so the first one comes from the
deployment itself.

When configured (``IDENTITY_BOOTSTRAP_*``), identity makes sure at start-up that the
operators' organisation exists, with an admin client that authenticates with the public
key the operator supplied (its private key stays with the operator, e.g. under
``.medledger/`` for ``make up`` or in a Kubernetes Secret of the CLI job) and/or an admin
user whose password and TOTP secret the operator supplied in files. It only creates what is
missing and never overwrites anything, so restarting, or removing the settings later, changes
nothing; the one exception is the services' own clients, which belong to the release: one
registered by an earlier release gets this release's scopes (``SERVICE_CLIENT_SCOPES``),
since the service now asks for them. Dependencies may not be up yet when the process starts,
so it retries in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from medledger.common.config import ConfigError
from medledger.common.errors import AlreadyExists, InvalidArgument, MedledgerError
from medledger.common.interceptors import Principal
from medledger.common.scopes import SERVICE_CLIENT_SCOPES, service_client_id
from medledger.identity.config import IdentityConfig
from medledger.identity.domain.client_keys import validate_client_jwks
from medledger.identity.domain.directory import (
    CLIENT_ID,
    USERNAME,
    Directory,
    NewClient,
    NewUser,
)
from medledger.identity.domain.passwords import MIN_PASSWORD_LENGTH, valid_totp_secret
from medledger.identity.domain.purposes import CODE_BY_PURPOSE, HOPERAT
from medledger.identity.domain.scopes import ADMIN, LEDGER_READ

log = logging.getLogger("medledger.identity.bootstrap")

BOOTSTRAP_PRINCIPAL: Final = Principal(
    subject="medledger-identity-bootstrap", scopes=frozenset({ADMIN})
)
ADMIN_CLIENT_SCOPES: Final = (ADMIN, LEDGER_READ)
# Services act for their callers, whatever the purpose of the call.
ALL_PURPOSES: Final = tuple(sorted(CODE_BY_PURPOSE.values()))


@dataclass(frozen=True)
class BootstrapPlan:
    organization: str
    client_id: str = ""
    client_jwks_json: str = ""
    admin_username: str = ""
    admin_password: str = ""
    admin_totp_secret: str = ""
    service_clients: tuple[str, ...] = ()

    @property
    def wanted(self) -> bool:
        return bool(self.client_id or self.admin_username or self.service_clients)


ServiceJwks = Callable[[str], Awaitable[str]]


async def _no_service_keys(service: str) -> str:
    raise ConfigError(f"no Vault key source for service client {service}")


async def apply(
    directory: Directory, plan: BootstrapPlan, service_jwks: ServiceJwks = _no_service_keys
) -> list[str]:
    """Creates what the plan names and does not exist yet, and brings the services' clients'
    scopes up to date; returns what it created or updated."""
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        (
            "organization",
            lambda: directory.create_organization(
                BOOTSTRAP_PRINCIPAL, plan.organization, "medledger operators"
            ),
        )
    ]
    if plan.client_id:
        client = NewClient(
            client_id=plan.client_id,
            organization=plan.organization,
            jwks_json=plan.client_jwks_json,
            allowed_scopes=ADMIN_CLIENT_SCOPES,
            allowed_purposes=(HOPERAT,),
            display_name="bootstrap admin client",
        )
        steps.append(
            ("admin client", lambda: directory.register_client(BOOTSTRAP_PRINCIPAL, client))
        )
    if plan.admin_username:
        user = NewUser(
            username=plan.admin_username,
            password=plan.admin_password,
            kind="admin",
            organization=plan.organization,
            totp_secret=plan.admin_totp_secret,
        )
        steps.append(("admin user", lambda: directory.create_user(BOOTSTRAP_PRINCIPAL, user)))
    for service in plan.service_clients:

        async def register(service: str = service) -> object:
            client = NewClient(
                client_id=service_client_id(service),
                organization=plan.organization,
                jwks_json=await service_jwks(service),
                allowed_scopes=SERVICE_CLIENT_SCOPES[service],
                allowed_purposes=ALL_PURPOSES,
                display_name=f"medledger {service} service",
            )
            try:
                return await directory.register_client(BOOTSTRAP_PRINCIPAL, client)
            except AlreadyExists:
                if not await directory.set_client_scopes(
                    BOOTSTRAP_PRINCIPAL, client.client_id, client.allowed_scopes
                ):
                    raise  # already as this release has it: nothing done
                return client

        steps.append((f"{service} service client", register))
    created: list[str] = []
    for what, step in steps:
        try:
            await step()
        except AlreadyExists:
            continue
        created.append(what)
    return created


def plan_from_config(config: IdentityConfig) -> BootstrapPlan:
    """The plan the settings describe, checked now so a mistake stops the start (exit 2)."""
    jwks = ""
    password = ""
    totp_secret = ""
    problems: list[str] = []
    if config.bootstrap_client_jwks_file is not None:
        try:
            jwks = validate_client_jwks(
                config.bootstrap_client_jwks_file.read_text(), "bootstrap_client_jwks_file"
            )
        except InvalidArgument as exc:
            problems.append(
                f"  - IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE: {exc.violations[0].description}"
            )
        if not CLIENT_ID.fullmatch(config.bootstrap_client_id):
            problems.append(f"  - IDENTITY_BOOTSTRAP_CLIENT_ID: must match {CLIENT_ID.pattern}")
    if config.bootstrap_admin_password_file is not None:
        password = config.bootstrap_admin_password_file.read_text().rstrip("\r\n")
        if len(password) < MIN_PASSWORD_LENGTH:
            problems.append(
                f"  - IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE: the password needs at least "
                f"{MIN_PASSWORD_LENGTH} characters"
            )
        if not USERNAME.fullmatch(config.bootstrap_admin_username.lower()):
            problems.append(f"  - IDENTITY_BOOTSTRAP_ADMIN_USERNAME: must match {USERNAME.pattern}")
    if config.bootstrap_admin_totp_secret_file is not None:
        totp_secret = config.bootstrap_admin_totp_secret_file.read_text().strip()
        if not valid_totp_secret(totp_secret):
            problems.append(
                "  - IDENTITY_BOOTSTRAP_ADMIN_TOTP_SECRET_FILE: must hold a base32 secret of "
                "128 bits or more"
            )
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(problems))
    return BootstrapPlan(
        organization=config.operator_organization,
        client_id=config.bootstrap_client_id,
        client_jwks_json=jwks,
        admin_username=config.bootstrap_admin_username,
        admin_password=password,
        admin_totp_secret=totp_secret,
        service_clients=tuple(s for s in config.service_clients.split(",") if s),
    )


class Bootstrapper:
    """Applies the plan in the background until it succeeds once."""

    def __init__(
        self,
        directory: Directory,
        plan: BootstrapPlan,
        *,
        service_jwks: ServiceJwks = _no_service_keys,
        retry_seconds: float = 2.0,
    ):
        self._directory = directory
        self._plan = plan
        self._service_jwks = service_jwks
        self._retry = retry_seconds
        self._task: asyncio.Task[None] | None = None
        self.done = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                created = await apply(self._directory, self._plan, self._service_jwks)
            except MedledgerError as exc:
                log.warning("bootstrap postponed", extra={"reason": exc.reason})
                await asyncio.sleep(self._retry)
                continue
            if created:
                log.info("bootstrap applied", extra={"steps": created})
            self.done.set()
            return

    async def start(self) -> None:
        if self._plan.wanted:
            self._task = asyncio.create_task(self._run(), name="identity-bootstrap")
        else:
            self.done.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
