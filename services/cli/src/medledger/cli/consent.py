"""``medledger consent grant|revoke|list|get|check``: patients' consents through identity.

Every call carries the caller's access token (``--token`` or ``$MEDLEDGER_TOKEN``, from
``medledger token``); identity decides what it may do. A grant or a revocation is ledgered
before it is answered, so the answer carries the ledger receipt (``--receipt-out`` saves it
for ``medledger verify receipt``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Final, TypeAlias, TypeVar

import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2, identity_pb2_grpc
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.calls import CallFailed, Metadata, bearer, checked, open_channel
from medledger.cli.token import DEFAULT_IDENTITY, IdentityOption, TimeoutOption, unverified_claims
from medledger.verify.receipts import write_receipt

app = typer.Typer(
    help="Grant, revoke, list and read patients' consents; ask identity for an access decision.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

T = TypeVar("T")
# Only in the generated type stubs; the runtime stub class is not generic.
Stub: TypeAlias = "identity_pb2_grpc.IdentityServiceAsyncStub"

PURPOSE_PREFIX: Final = "PURPOSE_OF_USE_"
PURPOSES: Final = tuple(
    name.removeprefix(PURPOSE_PREFIX)
    for name, value in purpose_pb2.PurposeOfUse.items()
    if value != purpose_pb2.PURPOSE_OF_USE_UNSPECIFIED
)
STATUSES: Final = {
    "active": identity_pb2.CONSENT_STATUS_ACTIVE,
    "revoked": identity_pb2.CONSENT_STATUS_REVOKED,
    "expired": identity_pb2.CONSENT_STATUS_EXPIRED,
}
ACTIONS: Final = {
    "read": identity_pb2.ACTION_READ,
    "write": identity_pb2.ACTION_WRITE,
    "delete": identity_pb2.ACTION_DELETE,
    "export": identity_pb2.ACTION_EXPORT,
    "search": identity_pb2.ACTION_SEARCH,
}
LIST_PAGE_SIZE: Final = 100

TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MEDLEDGER_TOKEN",
        show_envvar=True,
        help="Bearer access token (medledger token ...).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the answer as protobuf JSON.")]
ReceiptOutOption = Annotated[
    Path | None,
    typer.Option(
        "--receipt-out",
        dir_okay=False,
        metavar="FILE",
        help="Save the ledger receipt (for medledger verify receipt).",
    ),
]
GranteeOrgOption = Annotated[
    str | None,
    typer.Option("--grantee-org", metavar="ORG", help="Every client and user of organisation ORG."),
]
GranteeClientOption = Annotated[
    str | None, typer.Option("--grantee-client", metavar="CLIENT_ID", help="One partner client.")
]
GranteeUserOption = Annotated[
    str | None, typer.Option("--grantee-user", metavar="USER_ID", help="One user.")
]


# --- input ------------------------------------------------------------------------------------


def require_token(token: str | None) -> str:
    if not token:
        raise typer.BadParameter(
            "an access token is required: --token TOKEN or MEDLEDGER_TOKEN "
            "(get one with `medledger token`)",
            param_hint="--token",
        )
    return token


def purpose_value(text: str) -> purpose_pb2.PurposeOfUse.ValueType:
    """The PurposeOfUse of an HL7 v3 code such as ``TREAT`` (any case)."""
    code = text.strip().upper().removeprefix(PURPOSE_PREFIX)
    if code not in PURPOSES:
        raise typer.BadParameter(f"{text!r} is not one of {', '.join(PURPOSES)}")
    return purpose_pb2.PurposeOfUse.Value(PURPOSE_PREFIX + code)


def parse_when(text: str, *, end_of_day: bool) -> datetime:
    """A date (``2026-12-31``: its start, or with ``end_of_day`` its last second, UTC) or an
    ISO 8601 date and time (UTC unless it names an offset)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        moment = time(23, 59, 59) if end_of_day else time(0, 0)
        return datetime.combine(day, moment, tzinfo=UTC)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a date (2026-12-31) or an ISO 8601 time (2026-12-31T18:00:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _timestamp(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def grantee_of(
    organization: str | None, client_id: str | None, user_id: str | None, *, required: bool
) -> identity_pb2.Grantee | None:
    """The one grantee named by the options (None when none is and none is required)."""
    given = [
        identity_pb2.Grantee(**{name: value})
        for name, value in (
            ("organization", organization),
            ("client_id", client_id),
            ("user_id", user_id),
        )
        if value
    ]
    if len(given) > 1:
        raise typer.BadParameter(
            "name one grantee: --grantee-org, --grantee-client or --grantee-user"
        )
    if not given:
        if required:
            raise typer.BadParameter(
                "a grantee is required: --grantee-org, --grantee-client or --grantee-user"
            )
        return None
    return given[0]


# --- output -----------------------------------------------------------------------------------


def when_text(stamp: Timestamp, has: bool = True) -> str:
    if not has:
        return "-"
    return stamp.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _grantee_text(grantee: identity_pb2.Grantee) -> str:
    kind = grantee.WhichOneof("kind")
    if kind is None:
        return "-"
    label = {"organization": "organisation", "client_id": "client", "user_id": "user"}[kind]
    return f"{label} {getattr(grantee, kind)}"


def _purposes_text(values: Iterable[purpose_pb2.PurposeOfUse.ValueType]) -> str:
    return ", ".join(purpose_pb2.PurposeOfUse.Name(v).removeprefix(PURPOSE_PREFIX) for v in values)


def _status_text(status: identity_pb2.ConsentStatus.ValueType) -> str:
    name = identity_pb2.ConsentStatus.Name(status).removeprefix("CONSENT_STATUS_").lower()
    style = {"active": "green", "revoked": "red", "expired": "yellow"}.get(name, "")
    return f"[{style}]{name}[/{style}]" if style else name


def consent_table(consent: identity_pb2.Consent) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    table.add_row("consent", consent.consent_id)
    table.add_row("status", _status_text(consent.status))
    table.add_row("patient", consent.patient_id)
    table.add_row("grantee", _grantee_text(consent.grantee))
    table.add_row("resource types", ", ".join(consent.resource_types) or "all")
    table.add_row("categories", ", ".join(consent.categories) or "all")
    table.add_row("purposes", _purposes_text(consent.purposes))
    table.add_row(
        "period",
        f"{when_text(consent.period_start)} → "
        + (when_text(consent.period_end) if consent.HasField("period_end") else "no end"),
    )
    granted_by = consent.granted_by
    if consent.proxy_relationship:
        granted_by += f" (proxy: {consent.proxy_relationship})"
    table.add_row("granted by", granted_by)
    table.add_row("created", when_text(consent.create_time))
    if consent.HasField("revoke_time"):
        table.add_row("revoked", when_text(consent.revoke_time))
    return table


def consents_table(consents: list[identity_pb2.Consent]) -> Table:
    table = Table(title=f"{len(consents)} consent(s)")
    for column in ("consent", "status", "patient", "grantee", "resource types", "purposes"):
        table.add_column(column, overflow="fold")
    table.add_column("until", overflow="fold")
    for c in consents:
        table.add_row(
            c.consent_id,
            _status_text(c.status),
            c.patient_id,
            _grantee_text(c.grantee),
            ", ".join(c.resource_types) or "all",
            _purposes_text(c.purposes),
            when_text(c.period_end) if c.HasField("period_end") else "no end",
        )
    return table


def print_json(message: Message) -> None:
    typer.echo(json.dumps(json_format.MessageToDict(message), indent=2))


def save_receipt(receipt: ledger_pb2.Receipt, receipt_out: Path | None) -> str:
    if receipt_out is None:
        return ""
    try:
        write_receipt(receipt_out, receipt)
    except OSError as error:
        errors.print(f"[red bold]✗ cannot save the receipt:[/red bold] {error}", highlight=False)
        raise typer.Exit(1) from None
    return f"; receipt saved to {receipt_out}"


def _ledgered(what: str, receipt: ledger_pb2.Receipt, receipt_out: Path | None) -> None:
    saved = save_receipt(receipt, receipt_out)
    console.print(
        f"[green]•[/green] ledgered as {what} at leaf index {receipt.leaf_index}{saved}",
        highlight=False,
    )


# --- calls ------------------------------------------------------------------------------------


def _run(identity: str, token: str, work: Callable[[Stub, Metadata], Awaitable[T]]) -> T:
    """Runs ``work`` against identity with the token; a refused call exits 1 with the reason."""

    async def main() -> T:
        async with open_channel(identity) as channel:
            return await work(identity_pb2_grpc.IdentityServiceStub(channel), bearer(token))

    try:
        return asyncio.run(main())
    except CallFailed as failure:
        errors.print(f"[red bold]✗ {failure}[/red bold]", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


@app.command("grant")
def grant_command(
    *,
    patient: Annotated[str, typer.Option("--patient", help="The patient's FHIR Patient id.")],
    purpose: Annotated[
        list[str],
        typer.Option(
            "--purpose",
            metavar="CODE",
            help=f"A purpose of use the grantee may access for; repeat for more "
            f"({', '.join(PURPOSES)}).",
        ),
    ],
    grantee_org: GranteeOrgOption = None,
    grantee_client: GranteeClientOption = None,
    grantee_user: GranteeUserOption = None,
    resource_type: Annotated[
        list[str] | None,
        typer.Option(
            "--resource-type",
            metavar="TYPE",
            help="A FHIR resource type covered (e.g. Observation); repeat for more. "
            "At least one --resource-type or --category.",
        ),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option(
            "--category",
            metavar="CODE",
            help="A data category covered (e.g. laboratory); repeat for more.",
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option("--from", metavar="DATE", help="Start of the consent (default: now)."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            metavar="DATE",
            help="End of the consent: a date (through that day, UTC) or an ISO 8601 time. "
            "Default: no end.",
        ),
    ] = None,
    granted_by: Annotated[
        str | None,
        typer.Option(
            "--granted-by",
            metavar="PRINCIPAL",
            help="Who gave the consent: the patient's user id, or a proxy's (default: you).",
        ),
    ] = None,
    proxy_relationship: Annotated[
        str | None,
        typer.Option(
            "--proxy-relationship",
            metavar="ROLE",
            help="HL7 v3 RoleCode of the proxy who consented for the patient (e.g. GUARD).",
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key", help="A retry with the same key returns the first consent."
        ),
    ] = None,
    receipt_out: ReceiptOutOption = None,
    token: TokenOption = None,
    identity: IdentityOption = DEFAULT_IDENTITY,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Record a patient's consent to share their data with a grantee (ledgered)."""
    bearer_token = require_token(token)
    request = identity_pb2.GrantConsentRequest(
        patient_id=patient,
        grantee=grantee_of(grantee_org, grantee_client, grantee_user, required=True),
        resource_types=resource_type or [],
        categories=category or [],
        purposes=[purpose_value(p) for p in purpose],
        granted_by=granted_by or "",
        proxy_relationship=proxy_relationship or "",
        idempotency_key=idempotency_key or "",
    )
    if start is not None:
        request.period_start.CopyFrom(_timestamp(parse_when(start, end_of_day=False)))
    if until is not None:
        request.period_end.CopyFrom(_timestamp(parse_when(until, end_of_day=True)))

    async def grant(stub: Stub, metadata: Metadata) -> identity_pb2.GrantConsentResponse:
        return await checked(
            "GrantConsent",
            identity,
            stub.GrantConsent(request, metadata=metadata, timeout=timeout),
        )

    reply = _run(identity, bearer_token, grant)
    if as_json:
        print_json(reply)
        save_receipt(reply.receipt, receipt_out)
        return
    console.print(consent_table(reply.consent))
    _ledgered("CONSENT_GRANTED", reply.receipt, receipt_out)


@app.command("revoke")
def revoke_command(
    consent_id: Annotated[str, typer.Argument(metavar="CONSENT_ID", help="The consent to end.")],
    *,
    receipt_out: ReceiptOutOption = None,
    token: TokenOption = None,
    identity: IdentityOption = DEFAULT_IDENTITY,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """End a consent at once (ledgered); access it allowed is denied from now on."""
    bearer_token = require_token(token)

    async def revoke(stub: Stub, metadata: Metadata) -> identity_pb2.RevokeConsentResponse:
        return await checked(
            "RevokeConsent",
            identity,
            stub.RevokeConsent(
                identity_pb2.RevokeConsentRequest(consent_id=consent_id),
                metadata=metadata,
                timeout=timeout,
            ),
        )

    reply = _run(identity, bearer_token, revoke)
    if as_json:
        print_json(reply)
        save_receipt(reply.receipt, receipt_out)
        return
    console.print(consent_table(reply.consent))
    _ledgered("CONSENT_REVOKED", reply.receipt, receipt_out)


@app.command("get")
def get_command(
    consent_id: Annotated[str, typer.Argument(metavar="CONSENT_ID", help="The consent to read.")],
    *,
    fhir: Annotated[
        bool, typer.Option("--fhir", help="Print it as a FHIR R4 Consent resource.")
    ] = False,
    token: TokenOption = None,
    identity: IdentityOption = DEFAULT_IDENTITY,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Show one consent."""
    bearer_token = require_token(token)

    async def get(stub: Stub, metadata: Metadata) -> identity_pb2.GetConsentResponse:
        return await checked(
            "GetConsent",
            identity,
            stub.GetConsent(
                identity_pb2.GetConsentRequest(consent_id=consent_id),
                metadata=metadata,
                timeout=timeout,
            ),
        )

    reply = _run(identity, bearer_token, get)
    if fhir:
        typer.echo(json.dumps(json.loads(reply.consent.fhir_json), indent=2))
    elif as_json:
        print_json(reply)
    else:
        console.print(consent_table(reply.consent))


@app.command("list")
def list_command(
    *,
    patient: Annotated[
        str | None, typer.Option("--patient", help="Only this patient's consents.")
    ] = None,
    grantee_org: GranteeOrgOption = None,
    grantee_client: GranteeClientOption = None,
    grantee_user: GranteeUserOption = None,
    status: Annotated[
        str | None,
        typer.Option("--status", metavar="STATUS", help="Only active, revoked or expired ones."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Show at most this many (oldest first).")
    ] = 200,
    token: TokenOption = None,
    identity: IdentityOption = DEFAULT_IDENTITY,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """List consents of a patient (yours to manage) or granted to you (--grantee-...)."""
    bearer_token = require_token(token)
    wanted = (
        STATUSES.get((status or "").lower()) if status else identity_pb2.CONSENT_STATUS_UNSPECIFIED
    )
    if wanted is None:
        raise typer.BadParameter(
            f"{status!r} is not one of {', '.join(STATUSES)}", param_hint="--status"
        )
    grantee = grantee_of(grantee_org, grantee_client, grantee_user, required=False)

    async def walk(stub: Stub, metadata: Metadata) -> list[identity_pb2.Consent]:
        found: list[identity_pb2.Consent] = []
        page_token = ""
        while len(found) < limit:
            request = identity_pb2.ListConsentsRequest(
                patient_id=patient or "",
                grantee=grantee,
                status=wanted,
                page_size=min(LIST_PAGE_SIZE, limit - len(found)),
                page_token=page_token,
            )
            reply = await checked(
                "ListConsents",
                identity,
                stub.ListConsents(request, metadata=metadata, timeout=timeout),
            )
            found.extend(reply.consents)
            page_token = reply.next_page_token
            if not page_token:
                break
        return found[:limit]

    consents = _run(identity, bearer_token, walk)
    if as_json:
        print_json(identity_pb2.ListConsentsResponse(consents=consents))
    else:
        console.print(consents_table(consents))


@app.command("check")
def check_command(
    *,
    resource_type: Annotated[
        str, typer.Option("--resource-type", metavar="TYPE", help="FHIR type (e.g. Observation).")
    ],
    patient: Annotated[
        str | None,
        typer.Option("--patient", help="The patient whose data it is (none: no single one)."),
    ] = None,
    action: Annotated[str, typer.Option("--action", help=f"One of {', '.join(ACTIONS)}.")] = "read",
    purpose: Annotated[
        str, typer.Option("--purpose", metavar="CODE", help="Why (TREAT, HPAYMT, ...).")
    ] = "TREAT",
    break_glass_reason: Annotated[
        str | None,
        typer.Option(
            "--break-glass-reason",
            help="With --purpose ETREAT: ask for emergency access (ledgered as BREAK_GLASS).",
        ),
    ] = None,
    token: TokenOption = None,
    identity: IdentityOption = DEFAULT_IDENTITY,
    as_json: JsonOption = False,
    timeout: TimeoutOption = 10.0,
) -> None:
    """Ask identity whether YOUR token may do ACTION on a patient's data for a purpose
    (CheckAccess with the token's own principal, organisation, scopes and purposes).

    Prints PERMIT or DENY with the reason and the consent that decided; exits 0 either way.
    """
    bearer_token = require_token(token)
    try:
        claims = unverified_claims(bearer_token)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--token") from None
    kind = ACTIONS.get(action.lower())
    if kind is None:
        raise typer.BadParameter(
            f"{action!r} is not one of {', '.join(ACTIONS)}", param_hint="--action"
        )
    scope = claims.get("scope", "")
    # The token's own purposes: identity permits only a purpose among them.
    listed = claims.get("purposes")
    purposes = [p for p in listed if p in PURPOSES] if isinstance(listed, list) else []
    request = identity_pb2.CheckAccessRequest(
        principal_id=str(claims.get("sub", "")),
        organization=str(claims.get("org", "")),
        scopes=scope.split() if isinstance(scope, str) else [],
        client_id=str(claims.get("client_id", "")),
        patient_id=patient or "",
        resource_type=resource_type,
        action=kind,
        purpose=purpose_value(purpose),
        break_glass_reason=break_glass_reason or "",
        purposes=[purpose_value(p) for p in purposes],
    )

    async def check(stub: Stub, metadata: Metadata) -> identity_pb2.CheckAccessResponse:
        return await checked(
            "CheckAccess", identity, stub.CheckAccess(request, metadata=metadata, timeout=timeout)
        )

    reply = _run(identity, bearer_token, check)
    if as_json:
        print_json(reply)
        return
    permitted = reply.decision == identity_pb2.DECISION_PERMIT
    decision = "[green bold]PERMIT[/green bold]" if permitted else "[red bold]DENY[/red bold]"
    details = [reply.reason]
    if reply.consent_id:
        details.append(f"consent {reply.consent_id}")
    if reply.break_glass:
        details.append("break-glass, ledgered")
    console.print(f"{decision} ({', '.join(details)})", highlight=False)
