"""``medledger demo seed``: the demo the local stack starts with (``dev up`` runs it).

Two hospitals, each with a partner app (its own Ed25519 key pair under ``.medledger/keys/``),
the two witnesses' organisations and an admin user of the operators' organisation.
Everything is created through identity's API with the bootstrap admin client's token, so the
seeding works against any identity that holds that client. What exists is left as it is:
seeding twice is safe.

With a record service (``--record``; ``dev up`` passes the stack's), each hospital's app then
writes its demo patients' records (:mod:`medledger.cli.demo_records`: synthetic FHIR R4 from
carebundle, a fixed seed per patient) with a token of its own, and the patients'
server-assigned ids are written to ``<home>/demo/patients.json`` (``medledger demo patients``).
The record service tells identity which organisation holds each Patient it creates, so that
organisation may record the patient's consents. Last comes the patient user ``patient-a``: the
login of the demo patient ``hospital-a-1``, whose ``patient_id`` is that Patient's server id
(so it needs the records; without ``--record`` it is left out).
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import grpc
import typer
from rich.console import Console
from rich.table import Table

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.record.v1 import record_pb2_grpc
from medledger.cli.calls import UNREACHABLE, CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.demo_records import (
    DEMO_RECORDS,
    RECORD_SCOPE,
    RecordSeedError,
    RecordStub,
    SeededPatient,
    read_patients,
    seed_records,
    write_patients,
)
from medledger.cli.token import DEFAULT_IDENTITY, IdentityOption, request_token
from medledger.common.keyfiles import (
    KeyFileError,
    KeyPair,
    ensure_key_pair,
    ensure_secret,
    load_private_key,
    write_private,
)
from medledger.common.scopes import ADMIN, INFERENCE_PREDICT, LEDGER_READ
from medledger.devstack.mllp import DEMO_HL7_FEEDS, HL7_CLIENT_SCOPES
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
# A hospital's own app: it writes and reads its own patients' records (and their consents);
# another organisation's patients only as their consents allow (identity's CheckAccess); and
# it scores them with the registered models (`medledger predict`, the README's step 9).
PARTNER_SCOPES: Final = (RECORD_SCOPE, LEDGER_READ, INFERENCE_PREDICT)
# PATRQT: the app also acts on its patients' own requests (erasing a record, `record erase`).
PARTNER_PURPOSES: Final = (
    purpose_pb2.PURPOSE_OF_USE_TREAT,
    purpose_pb2.PURPOSE_OF_USE_HPAYMT,
    purpose_pb2.PURPOSE_OF_USE_HRESCH,
    purpose_pb2.PURPOSE_OF_USE_PATRQT,
)
ADMIN_USER: Final = "admin"
HL7_FEED: Final = "HL7 feed client"
FRESH_STACK: Final = "`make down && rm -rf .medledger && make up`"
"""How to start over (it deletes the stack's data and keys): what identity cannot change."""


@dataclass(frozen=True)
class DemoPatient:
    """The demo's patient user: the login of the record service's demo patient
    ``record_key`` (their ``patient_id`` is that Patient's server id)."""

    username: str
    record_key: str
    organization: str


DEMO_PATIENT: Final = DemoPatient("patient-a", "hospital-a-1", "hospital-a")
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
    skipped: bool = False  # not seeded this run (it needs what the run did not seed)


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


def _purpose_codes(purposes: Iterable[purpose_pb2.PurposeOfUse.ValueType]) -> str:
    return ", ".join(
        purpose_pb2.PurposeOfUse.Name(p).removeprefix("PURPOSE_OF_USE_") for p in purposes
    )


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


def patients_file(paths: StackPaths) -> Path:
    """Where ``demo seed`` lists the demo patients' server-assigned ids."""
    return paths.home / "demo" / "patients.json"


class DemoSeeder:
    def __init__(
        self, identity: str, paths: StackPaths, *, record: str | None = None, say: Say = _quiet
    ) -> None:
        self.identity = identity
        self.record = record
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
    ) -> Seeded:
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
        return Seeded(label, request.username, created is not None, detail)

    async def _patient_link(
        self,
        stub: identity_pb2_grpc.IdentityServiceAsyncStub,
        md: Metadata,
        username: str,
        organization: str,
    ) -> str | None:
        """The patient_id of the existing user ``username`` of ``organization``."""
        token = ""
        while True:
            page = await self._call(
                f"patient user {username}",
                "ListUsers",
                stub.ListUsers(
                    identity_pb2.ListUsersRequest(organization=organization, page_token=token),
                    metadata=md,
                ),
            )
            for user in page.users:
                if user.username == username:
                    return str(user.patient_id)
            token = page.next_page_token
            if not token:
                return None

    async def patient_user(
        self,
        stub: identity_pb2_grpc.IdentityServiceAsyncStub,
        md: Metadata,
        patient_ids: Mapping[str, str] | None,
    ) -> None:
        """The demo patient user, the login of the record's Patient ``DEMO_PATIENT.record_key``
        (``patient_ids``: each demo patient's server id; None when no records were seeded)."""
        username, key = DEMO_PATIENT.username, DEMO_PATIENT.record_key
        patient_id = (patient_ids or {}).get(key)
        if patient_id is None:
            self.seeded.append(
                Seeded(
                    "patient user",
                    username,
                    False,
                    f"left out: the login of the demo patient {key}, whose id the record "
                    "service assigns (seed with --record)",
                    skipped=True,
                )
            )
            return
        request = identity_pb2.CreateUserRequest(
            username=username,
            kind=identity_pb2.USER_KIND_PATIENT,
            organization=DEMO_PATIENT.organization,
            patient_id=patient_id,
        )
        seeded = await self.user(stub, md, request, "patient user")
        linked = patient_id
        if not seeded.created:
            linked = await self._patient_link(stub, md, username, DEMO_PATIENT.organization) or ""
        name = f"{username} (Patient/{linked}, {DEMO_PATIENT.organization})"
        if linked == patient_id:
            name = f"{username} ({key}: Patient/{linked}, {DEMO_PATIENT.organization})"
            self.seeded.append(replace(seeded, name=name))
            return
        # An older demo linked the user to a Patient id the record service does not hold,
        # and identity cannot relink a user.
        note = (
            f"{username} is Patient {linked or '(none)'}, not the demo patient {key} "
            f"(Patient/{patient_id}): an older demo created it, and identity cannot relink a "
            f"user; for the README's patient steps start a fresh stack with {FRESH_STACK}"
        )
        self.say(note)
        self.seeded.append(replace(seeded, name=name, detail=f"{seeded.detail}; {note}"))

    async def partner(
        self,
        stub: identity_pb2_grpc.IdentityServiceAsyncStub,
        md: Metadata,
        client_id: str,
        organization: str,
        *,
        kind: str = "partner client",
        scopes: tuple[str, ...] = PARTNER_SCOPES,
        purposes: tuple[purpose_pb2.PurposeOfUse.ValueType, ...] = PARTNER_PURPOSES,
        display_name: str = "",
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
            allowed_scopes=scopes,
            allowed_purposes=purposes,
            display_name=display_name or f"{ORGANIZATIONS[organization]} partner app (demo)",
        )
        what = f"{kind} {client_id}"
        created = await self._create(
            what, "RegisterClient", stub.RegisterClient(request, metadata=md)
        )
        detail = f"key {_relative(pair.private_file)}"
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
            lacking = [s for s in scopes if s not in found.client.allowed_scopes]
            if lacking:
                # Registered by an older demo; identity cannot change a client's scopes.
                note = (
                    f"{client_id} may not ask for {', '.join(lacking)} (an older demo "
                    "registered it, and identity cannot change a client's scopes): for the "
                    f"README's predictions step start a fresh stack with {FRESH_STACK}"
                )
                self.say(note)
                detail += f"; {note}"
            missing = [p for p in purposes if p not in found.client.allowed_purposes]
            if missing:
                # Registered by an older demo; identity cannot change a client's purposes.
                note = (
                    f"{client_id} may not state {_purpose_codes(missing)} (an older demo "
                    "registered it, and identity cannot change a client's purposes): for the "
                    f"README's erasure step start a fresh stack with {FRESH_STACK}"
                )
                self.say(note)
                detail += f"; {note}"
        self.seeded.append(Seeded(kind, client_id, created is not None, detail))

    async def run(self) -> list[Seeded]:
        self.say("seeding the demo (organisations, partner clients, users, records)")
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
            self.seeded.append(await self.user(stub, metadata, admin, "admin user"))
            for client_id, organization in PARTNER_CLIENTS.items():
                await self.partner(stub, metadata, client_id, organization)
            for feed in DEMO_HL7_FEEDS:
                # The MLLP listener (127.0.0.1:2575) writes each hospital's HL7 v2 feed as it.
                await self.partner(
                    stub,
                    metadata,
                    feed.client_id,
                    feed.organization,
                    kind=HL7_FEED,
                    scopes=HL7_CLIENT_SCOPES,
                    purposes=(purpose_pb2.PURPOSE_OF_USE_TREAT,),
                    display_name=f"{ORGANIZATIONS[feed.organization]} HL7 v2 feed (demo)",
                )
            patient_ids = None if self.record is None else await self.records(self.record)
            await self.patient_user(stub, metadata, patient_ids)
        return self.seeded

    async def hospital_records(
        self, record: str, client_id: str, organization: str
    ) -> list[SeededPatient]:
        """The demo patients of ``organization``, written by its own app ``client_id``."""
        key_file = self.paths.client_key(client_id)
        try:
            key = load_private_key(key_file)
        except KeyFileError as error:
            raise SeedError(f"the {client_id} key: {error}") from None
        try:
            reply = await request_token(self.identity, client_id, key, RECORD_SCOPE)
        except CallFailed as failure:
            hint = ""
            if failure.reason == "SCOPE_NOT_ALLOWED":
                hint = (
                    f" ({client_id} was registered by an older demo without {RECORD_SCOPE}, "
                    "and identity cannot change a client's scopes: start a fresh stack with "
                    "`make down && rm -rf .medledger && make up`)"
                )
            raise SeedError(f"records token for {client_id}: {failure}{hint}") from None
        records = [r for r in DEMO_RECORDS if r.organization == organization]
        async with open_channel(record) as channel:
            stub: RecordStub = record_pb2_grpc.RecordServiceStub(channel)
            try:
                return await seed_records(
                    record, stub, bearer(reply.access_token), client_id, records
                )
            except RecordSeedError as error:
                raise SeedError(f"records of {organization} ({client_id}): {error}") from None

    async def records(self, record: str) -> dict[str, str]:
        """Seeds the demo patients' records; each demo patient's server id, by key."""
        self.say("seeding the demo patients' records (carebundle) through the record service")
        started = asyncio.get_running_loop().time()
        hospitals = await asyncio.gather(
            *(
                self.hospital_records(record, client_id, organization)
                for client_id, organization in PARTNER_CLIENTS.items()
            )
        )
        patients = [
            (client_id, patient)
            for client_id, seeded in zip(PARTNER_CLIENTS, hospitals, strict=True)
            for patient in seeded
        ]
        path = patients_file(self.paths)
        try:
            write_patients(path, patients)
        except OSError as error:
            raise SeedError(f"the demo patients' list {path}: {error}") from None
        written = sum(p.created for _, p in patients)
        held = sum(sum(p.counts.values()) for _, p in patients)
        elapsed = asyncio.get_running_loop().time() - started
        self.say(
            f"demo records: {written} resources written, {held - written} there already "
            f"({elapsed:.1f}s); ids in {_relative(path)}"
        )
        for client_id, patient in patients:
            self.seeded.append(
                Seeded(
                    "patient record",
                    patient.record.key,
                    patient.created > 0,
                    f"Patient/{patient.patient_id} of {patient.record.organization} "
                    f"(written by {client_id}): {patient.record.profile}, "
                    f"{patient.counts.get('Observation', 0)} Observations, "
                    f"{sum(patient.counts.values())} resources",
                )
            )
        return {patient.record.key: patient.patient_id for _, patient in patients}


def seed_demo(
    identity: str, paths: StackPaths, *, record: str | None = None, say: Say = _quiet
) -> list[Seeded]:
    """Seeds the demo (idempotent), the patients' records too when ``record`` (the record
    service's address) is given; :class:`SeedError` names the step that failed."""
    return asyncio.run(DemoSeeder(identity, paths, record=record, say=say).run())


def seeded_table(seeded: list[Seeded]) -> Table:
    table = Table(title="demo (medledger demo seed)")
    table.add_column("kind")
    table.add_column("id", overflow="fold")
    table.add_column("state")
    table.add_column("credentials / notes", overflow="fold")
    for item in seeded:
        name = item.name
        if item.kind == "partner client":
            name += f" ({PARTNER_CLIENTS[item.name]})"
        elif item.kind == HL7_FEED:
            feed = next(f for f in DEMO_HL7_FEEDS if f.client_id == item.name)
            name += f" ({feed.organization}; MSH-4 {', '.join(feed.sending_facilities)})"
        state = "[green]created[/green]" if item.created else "exists"
        if item.skipped:
            state = "[yellow]skipped[/yellow]"
        table.add_row(item.kind, name, state, item.detail)
    return table


app = typer.Typer(help="The demo data of the local stack.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        file_okay=False,
        help="The stack's state folder holding keys/ (default: MEDLEDGER_HOME or ./.medledger).",
    ),
]


def _say(message: str) -> None:
    errors.print(f"[dim]•[/dim] {message}", highlight=False, soft_wrap=True)


def _paths(home: Path | None) -> StackPaths:
    return StackPaths(home.resolve()) if home is not None else StackPaths.from_env()


@app.command("seed")
def seed_command(
    identity: IdentityOption = DEFAULT_IDENTITY,
    record: Annotated[
        str | None,
        typer.Option(
            "--record",
            metavar="HOST:PORT",
            help="Also write the demo patients' records through this record service "
            "(`medledger dev up` passes the stack's, 127.0.0.1:50052).",
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Create the demo organisations, partner clients (with key pairs), admin and patient
    users, and with --record the demo patients' records; what exists is kept. Needs identity
    running with the ops-admin client."""
    paths = _paths(home)
    try:
        seeded = seed_demo(identity, paths, record=record, say=_say)
    except SeedError as error:
        errors.print(f"[red bold]✗ demo seeding failed:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    console.print(seeded_table(seeded))


def _seeded_patients(paths: StackPaths) -> list[dict[str, Any]]:
    path = patients_file(paths)
    try:
        return read_patients(path)
    except FileNotFoundError:
        errors.print(
            f"[red bold]✗ no demo patients yet[/red bold] ({_relative(path)} is missing): run "
            "`make up`, or `./medledger demo seed --record 127.0.0.1:50052` on a running stack",
            highlight=False,
        )
    except (OSError, ValueError) as error:
        errors.print(f"[red bold]✗ {_relative(path)}:[/red bold] {error}", highlight=False)
    raise typer.Exit(1)


@app.command("patients")
def patients_command(
    home: HomeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the demo patients and their ids in the record service (they differ per stack)."""
    paths = _paths(home)
    patients = _seeded_patients(paths)
    if as_json:
        typer.echo(json.dumps({"patients": patients}, indent=2, ensure_ascii=False))
        return
    table = Table(title=f"demo patients ({_relative(patients_file(paths))}; --json for more)")
    table.add_column("key", no_wrap=True)
    table.add_column("patient", no_wrap=True)  # whole, to copy
    table.add_column("holder", overflow="fold")
    table.add_column("profile", overflow="fold")
    for p in patients:
        table.add_row(
            str(p.get("key")),
            str(p.get("patient")),
            str(p.get("organization")),
            str(p.get("profile")),
        )
    console.print(table)


@app.command("patient")
def patient_command(
    key: Annotated[
        str, typer.Argument(metavar="KEY", help="A demo patient's key, e.g. hospital-a-1.")
    ],
    observation: Annotated[
        str | None,
        typer.Option(
            "--observation",
            metavar="LOINC",
            help="Print the reference of the patient's Observation with this LOINC code "
            "instead (e.g. 39156-5 BMI, 2345-7 glucose).",
        ),
    ] = None,
    bare_id: Annotated[
        bool,
        typer.Option(
            "--id",
            help="Print the bare id, without the type (what --patient and the record "
            "export, access-log and erase commands take).",
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Print a demo patient's reference (Patient/<id>), for scripts:
    PATIENT=$(./medledger demo patient hospital-a-1), or its id alone:
    PATIENT_ID=$(./medledger demo patient hospital-a-1 --id)."""
    patients = {str(p.get("key")): p for p in _seeded_patients(_paths(home))}
    found = patients.get(key)
    if found is None:
        errors.print(
            f"[red bold]✗ no demo patient {key}[/red bold] (there are {', '.join(patients)})",
            highlight=False,
        )
        raise typer.Exit(1)
    reference = (
        found.get("patient")
        if observation is None
        else found.get("observations", {}).get(observation)
    )
    if not isinstance(reference, str):
        what = "Patient" if observation is None else f"Observation with LOINC code {observation}"
        errors.print(f"[red bold]✗ {key} has no {what}[/red bold]", highlight=False)
        raise typer.Exit(1)
    typer.echo(reference.partition("/")[2] if bare_id else reference)
