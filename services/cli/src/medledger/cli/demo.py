"""``medledger demo seed``: the demo the local stack starts with (``dev up`` runs it).

Two hospitals, each with a partner app (its own Ed25519 key pair under ``.medledger/keys/``),
the two witnesses' organisations, an admin user of the operators' organisation, and one
patient of hospital A (identity learns a patient's organisation from their user account, and
only that organisation may record the patient's consents). Everything is created through
identity's API with the bootstrap admin client's token, so the seeding works against any
identity that holds that client. What exists is left as it is: seeding twice is safe.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.cli.calls import UNREACHABLE, CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.token import DEFAULT_IDENTITY, IdentityOption, request_token
from medledger.common.keyfiles import (
    KeyFileError,
    KeyPair,
    ensure_key_pair,
    ensure_secret,
    write_private,
)
from medledger.common.scopes import ADMIN
from medledger.devstack.paths import StackPaths
from medledger.devstack.services import BOOTSTRAP_ADMIN_CLIENT

T = TypeVar("T")

OPERATORS: Final = "medledger"  # identity's IDENTITY_OPERATOR_ORGANIZATION default
ORGANIZATIONS: Final = {
    "hospital-a": "Hospital A",
    "hospital-b": "Hospital B",
    "witness-org-a": "Witness organisation A (runs witness-a)",
    "witness-org-b": "Witness organisation B (runs witness-b)",
}
PARTNER_CLIENTS: Final = {"hospital-a-app": "hospital-a", "hospital-b-app": "hospital-b"}
PARTNER_SCOPES: Final = (
    "system/*.rs",
    "system/Observation.cruds",
    "system/Patient.rs",
    "system/Consent.cruds",
    "ledger.read",
)
PARTNER_PURPOSES: Final = (
    purpose_pb2.PURPOSE_OF_USE_TREAT,
    purpose_pb2.PURPOSE_OF_USE_HPAYMT,
    purpose_pb2.PURPOSE_OF_USE_HRESCH,
)
ADMIN_USER: Final = "admin"


@dataclass(frozen=True)
class DemoPatient:
    username: str
    patient_id: str
    organization: str


DEMO_PATIENT: Final = DemoPatient("patient-a", "patient-a-1", "hospital-a")
# The bootstrap admin client appears a little after identity serves; wait this long for it.
ADMIN_TOKEN_WAIT_SECONDS: Final = 30.0
ADMIN_TOKEN_RETRY_REASONS: Final = frozenset({"CLIENT_UNKNOWN"})


class SeedError(Exception):
    """A step of the seeding failed; the message names the step and why."""


@dataclass(frozen=True)
class Seeded:
    """One thing the demo holds: what it is, its id, whether this run created it, and where
    its credentials are (or a note)."""

    kind: str
    name: str
    created: bool
    detail: str = ""


Say = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _password() -> str:
    return secrets.token_urlsafe(24)


def _same_key(registered_jwks: str, pair: KeyPair) -> bool:
    """Whether identity holds the public half of ``pair`` for the client."""
    try:
        document = json.loads(registered_jwks)
    except json.JSONDecodeError:
        return False
    keys = document.get("keys", [document]) if isinstance(document, dict) else []
    ours = pair.key.as_dict(private=False)
    members = ("kty", "crv", "x", "y", "n", "e")
    return any(isinstance(k, dict) and all(k.get(m) == ours.get(m) for m in members) for k in keys)


class DemoSeeder:
    def __init__(self, identity: str, paths: StackPaths, *, say: Say = _quiet) -> None:
        self.identity = identity
        self.paths = paths
        self.say = say
        self.seeded: list[Seeded] = []

    async def _call(self, what: str, call: str, pending: Awaitable[T]) -> T:
        """The answer, or SeedError naming the step (``what``) and identity's reason."""
        try:
            return await checked(call, self.identity, pending)
        except CallFailed as failure:
            raise SeedError(f"{what}: {failure}") from None

    async def _create(self, what: str, call: str, pending: Awaitable[T]) -> T | None:
        """The call's answer when it created its object, None when it existed already."""
        try:
            return await checked(call, self.identity, pending)
        except CallFailed as failure:
            if failure.code is grpc.StatusCode.ALREADY_EXISTS:
                return None
            raise SeedError(f"{what}: {failure}") from None

    async def admin_token(self) -> str:
        client = BOOTSTRAP_ADMIN_CLIENT
        key_file = self.paths.client_key(client)
        try:
            pair = ensure_key_pair(client, key_file, self.paths.client_jwks(client))
        except (OSError, KeyFileError) as error:
            raise SeedError(f"the {client} key: {error}") from None
        if pair.created:
            raise SeedError(
                f"the {client} key did not exist, so identity cannot know it: a new one is in "
                f"{key_file}; restart identity (`medledger dev down` then `medledger dev up`) "
                "so that it registers the client"
            )
        deadline = asyncio.get_running_loop().time() + ADMIN_TOKEN_WAIT_SECONDS
        while True:
            try:
                reply = await request_token(self.identity, client, pair.key, ADMIN)
            except CallFailed as failure:
                waiting = failure.code in UNREACHABLE or failure.reason in ADMIN_TOKEN_RETRY_REASONS
                if waiting and asyncio.get_running_loop().time() < deadline:
                    await asyncio.sleep(0.5)
                    continue
                hint = ""
                if failure.reason in {"ASSERTION_KEY_UNKNOWN", "ASSERTION_SIGNATURE"}:
                    hint = (
                        f" (identity registered {client} with another key than {key_file}: "
                        "was the key file replaced after the first start?)"
                    )
                elif failure.reason == "CLIENT_UNKNOWN":
                    hint = (
                        f" (identity has no {client}: start it with "
                        f"IDENTITY_BOOTSTRAP_CLIENT_ID={client} and "
                        "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE, as `medledger dev up` does)"
                    )
                raise SeedError(f"admin token for {client}: {failure}{hint}") from None
            return reply.access_token

    async def organizations(
        self, stub: identity_pb2_grpc.IdentityServiceAsyncStub, md: Metadata
    ) -> None:
        for organization, display in ORGANIZATIONS.items():
            request = identity_pb2.CreateOrganizationRequest(
                organization_id=organization, display_name=display
            )
            created = await self._create(
                f"organisation {organization}",
                "CreateOrganization",
                stub.CreateOrganization(request, metadata=md),
            )
            self.seeded.append(Seeded("organisation", organization, created is not None, display))

    async def user(
        self,
        stub: identity_pb2_grpc.IdentityServiceAsyncStub,
        md: Metadata,
        request: identity_pb2.CreateUserRequest,
        label: str,
    ) -> None:
        password_file = self.paths.password(request.username)
        try:
            password, new_file = ensure_secret(password_file, _password)
        except OSError as error:
            raise SeedError(f"{label} {request.username}: {password_file}: {error}") from None
        request.password = password
        created = await self._create(
            f"{label} {request.username}", "CreateUser", stub.CreateUser(request, metadata=md)
        )
        detail = f"password in {_relative(password_file)}"
        if created is None and new_file:
            # The user predates this file, so the password in it is not theirs: drop it.
            password_file.unlink(missing_ok=True)
            detail = "password not kept here (the user was created earlier)"
        totp_file = self.paths.totp(request.username)
        if created is not None and created.totp_provisioning_uri:
            # Admins log in with a second factor; identity shows the enrolment only now.
            try:
                write_private(totp_file, created.totp_provisioning_uri + "\n")
            except OSError as error:
                raise SeedError(f"{label} {request.username}: {totp_file}: {error}") from None
        if totp_file.exists():
            detail += f", TOTP enrolment (otpauth URI) in {_relative(totp_file)}"
        self.seeded.append(Seeded(label, request.username, created is not None, detail))

    async def partner(
        self,
        stub: identity_pb2_grpc.IdentityServiceAsyncStub,
        md: Metadata,
        client_id: str,
        organization: str,
    ) -> None:
        try:
            pair = ensure_key_pair(
                client_id, self.paths.client_key(client_id), self.paths.client_jwks(client_id)
            )
        except (OSError, KeyFileError) as error:
            raise SeedError(f"the {client_id} key: {error}") from None
        request = identity_pb2.RegisterClientRequest(
            client_id=client_id,
            organization=organization,
            jwks_json=pair.jwks_json,
            allowed_scopes=PARTNER_SCOPES,
            allowed_purposes=PARTNER_PURPOSES,
            display_name=f"{ORGANIZATIONS[organization]} partner app (demo)",
        )
        what = f"partner client {client_id}"
        created = await self._create(
            what, "RegisterClient", stub.RegisterClient(request, metadata=md)
        )
        if created is None:
            found = await self._call(
                what,
                "GetClient",
                stub.GetClient(identity_pb2.GetClientRequest(client_id=client_id), metadata=md),
            )
            if not _same_key(found.client.jwks_json, pair):
                raise SeedError(
                    f"{what}: identity holds another public key for it than "
                    f"{pair.private_file} (was the key file replaced?); tokens signed with "
                    "this file will be refused"
                )
        self.seeded.append(
            Seeded(
                "partner client",
                client_id,
                created is not None,
                f"key {_relative(pair.private_file)}",
            )
        )

    async def run(self) -> list[Seeded]:
        self.say("seeding the demo (organisations, partner clients, users)")
        token = await self.admin_token()
        self.seeded.append(
            Seeded(
                "admin client",
                BOOTSTRAP_ADMIN_CLIENT,
                False,
                f"key {_relative(self.paths.client_key(BOOTSTRAP_ADMIN_CLIENT))}",
            )
        )
        metadata = bearer(token)
        async with open_channel(self.identity) as channel:
            stub: identity_pb2_grpc.IdentityServiceAsyncStub = (
                identity_pb2_grpc.IdentityServiceStub(channel)
            )
            await self.organizations(stub, metadata)
            admin = identity_pb2.CreateUserRequest(
                username=ADMIN_USER, kind=identity_pb2.USER_KIND_ADMIN, organization=OPERATORS
            )
            await self.user(stub, metadata, admin, "admin user")
            for client_id, organization in PARTNER_CLIENTS.items():
                await self.partner(stub, metadata, client_id, organization)
            patient = identity_pb2.CreateUserRequest(
                username=DEMO_PATIENT.username,
                kind=identity_pb2.USER_KIND_PATIENT,
                organization=DEMO_PATIENT.organization,
                patient_id=DEMO_PATIENT.patient_id,
            )
            await self.user(stub, metadata, patient, "patient user")
        return self.seeded


def seed_demo(identity: str, paths: StackPaths, *, say: Say = _quiet) -> list[Seeded]:
    """Seeds the demo (idempotent); :class:`SeedError` names the step that failed."""
    return asyncio.run(DemoSeeder(identity, paths, say=say).run())


def seeded_table(seeded: list[Seeded]) -> Table:
    table = Table(title="demo (medledger demo seed)")
    table.add_column("kind")
    table.add_column("id")
    table.add_column("state")
    table.add_column("credentials / notes", overflow="fold")
    for item in seeded:
        name = item.name
        if item.kind == "patient user":
            name += f" (Patient {DEMO_PATIENT.patient_id}, {DEMO_PATIENT.organization})"
        elif item.kind == "partner client":
            name += f" ({PARTNER_CLIENTS[item.name]})"
        state = "[green]created[/green]" if item.created else "exists"
        table.add_row(item.kind, name, state, item.detail)
    return table


app = typer.Typer(help="The demo data of the local stack.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


@app.command("seed")
def seed_command(
    identity: IdentityOption = DEFAULT_IDENTITY,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            file_okay=False,
            help="The stack's state folder holding keys/ (default: MEDLEDGER_HOME or "
            "./.medledger).",
        ),
    ] = None,
) -> None:
    """Create the demo organisations, partner clients (with key pairs), admin and patient
    users; what exists is kept. Needs identity running with the ops-admin client."""
    paths = StackPaths(home.resolve()) if home is not None else StackPaths.from_env()
    try:
        seeded = seed_demo(identity, paths)
    except SeedError as error:
        errors.print(f"[red bold]✗ demo seeding failed:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    console.print(seeded_table(seeded))
