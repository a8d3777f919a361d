"""Consents through the whole identity server (real MongoDB, OpenBao, ledger; real tokens):
the grantor is the caller, recorded with its role; a grantee that does not exist is refused;
tokens are issued only for an audience the services accept; a revocation denies the very next
check; bad input is named field by field, never echoed."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2

PATIENT_ID = "pat-integrity-1"
CONSENT_SCOPES = "system/Consent.cruds"
B_SCOPES = "system/Consent.cruds system/Observation.rs"


@dataclass
class Hospitals:
    """hospital-a holds the patient's record; hospital-b is another provider."""

    a_app: list[tuple[str, str]]
    b_app: list[tuple[str, str]]
    patient: list[tuple[str, str]]
    patient_user: str


@pytest.fixture
async def hospitals(identity: Any) -> Hospitals:
    a_key = await identity.partner("hospital-a-app", "hospital-a", [CONSENT_SCOPES])
    b_key = await identity.partner("hospital-b-app", "hospital-b", B_SCOPES.split())
    created = await identity.stub.CreateUser(
        identity_pb2.CreateUserRequest(
            username="pat.integrity",
            password="correct horse battery",
            kind=identity_pb2.USER_KIND_PATIENT,
            organization="hospital-a",
            patient_id=PATIENT_ID,
        ),
        metadata=await identity.admin(),
    )
    login = await identity.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(
                username="pat.integrity", password="correct horse battery"
            )
        )
    )
    return Hospitals(
        a_app=identity.bearer(await identity.client_token("hospital-a-app", a_key, CONSENT_SCOPES)),
        b_app=identity.bearer(await identity.client_token("hospital-b-app", b_key, B_SCOPES)),
        patient=identity.bearer(login.access_token),
        patient_user=created.user.user_id,
    )


def grant(**overrides: Any) -> identity_pb2.GrantConsentRequest:
    fields: dict[str, Any] = {
        "patient_id": PATIENT_ID,
        "grantee": identity_pb2.Grantee(organization="hospital-b"),
        "resource_types": ["Observation"],
        "purposes": [purpose_pb2.PURPOSE_OF_USE_TREAT],
    }
    fields.update(overrides)
    return identity_pb2.GrantConsentRequest(**fields)


def check(**overrides: Any) -> identity_pb2.CheckAccessRequest:
    """hospital-b-app, asking about itself, reads the patient's Observations."""
    fields: dict[str, Any] = {
        "principal_id": "hospital-b-app",
        "organization": "hospital-b",
        "client_id": "hospital-b-app",
        "scopes": ["system/Observation.rs"],
        "patient_id": PATIENT_ID,
        "resource_type": "Observation",
        "action": identity_pb2.ACTION_READ,
        "purpose": purpose_pb2.PURPOSE_OF_USE_TREAT,
        "purposes": [purpose_pb2.PURPOSE_OF_USE_TREAT],  # as its token says
    }
    fields.update(overrides)
    return identity_pb2.CheckAccessRequest(**fields)


async def refused(identity: Any, call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), identity.reason(caught.value)


async def test_the_grantor_is_the_caller(
    identity: Any, hospitals: Hospitals, ledger_stub: Any
) -> None:
    # hospital-a-app may enter its patient's consents, but not in another principal's name.
    for someone_else in ("hospital-b-app", hospitals.patient_user):
        code, reason = await refused(
            identity,
            identity.stub.GrantConsent(grant(granted_by=someone_else), metadata=hospitals.a_app),
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "GRANTOR_MISMATCH")

    # The record holder entering a signed form is the grantor, recorded as such.
    entered = await identity.stub.GrantConsent(
        grant(proxy_relationship="GUARD"), metadata=hospitals.a_app
    )
    assert entered.consent.granted_by == "hospital-a-app"
    assert entered.consent.grantor_role == identity_pb2.GRANTOR_ROLE_RECORD_HOLDER
    assert entered.consent.proxy_relationship == "GUARD"
    entry = await ledger_stub.GetEntry(
        ledger_pb2.GetEntryRequest(leaf_index=entered.receipt.leaf_index)
    )
    assert entry.entry.kind == ledger_pb2.EVENT_KIND_CONSENT_GRANTED
    assert (entry.entry.actor, entry.entry.organization) == ("hospital-a-app", "hospital-a")
    again = await identity.stub.GetConsent(
        identity_pb2.GetConsentRequest(consent_id=entered.consent.consent_id),
        metadata=hospitals.a_app,
    )
    assert again.consent.grantor_role == identity_pb2.GRANTOR_ROLE_RECORD_HOLDER

    # The patient grants as themself (naming themself or no one), never for a proxy.
    for granted_by in ("", hospitals.patient_user):
        own = await identity.stub.GrantConsent(
            grant(granted_by=granted_by), metadata=hospitals.patient
        )
        assert own.consent.granted_by == hospitals.patient_user
        assert own.consent.grantor_role == identity_pb2.GRANTOR_ROLE_PATIENT
        entry = await ledger_stub.GetEntry(
            ledger_pb2.GetEntryRequest(leaf_index=own.receipt.leaf_index)
        )
        assert entry.entry.actor.startswith("patient:")  # the patient's account, blinded
    code, reason = await refused(
        identity,
        identity.stub.GrantConsent(grant(proxy_relationship="GUARD"), metadata=hospitals.patient),
    )
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "GRANTOR_MISMATCH")


async def test_a_grantee_that_does_not_exist_is_refused(
    identity: Any, hospitals: Hospitals
) -> None:
    for missing in (
        identity_pb2.Grantee(organization="no-such-hospital"),
        identity_pb2.Grantee(client_id="no-such-app"),
        identity_pb2.Grantee(user_id="u-no-such-user"),
    ):
        code, reason = await refused(
            identity, identity.stub.GrantConsent(grant(grantee=missing), metadata=hospitals.a_app)
        )
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "GRANTEE_NOT_FOUND"), missing
        # Only a caller allowed to grant learns whether a grantee exists.
        code, _ = await refused(
            identity, identity.stub.GrantConsent(grant(grantee=missing), metadata=hospitals.b_app)
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
    for existing in (
        identity_pb2.Grantee(organization="hospital-b"),
        identity_pb2.Grantee(client_id="hospital-b-app"),
        identity_pb2.Grantee(user_id=hospitals.patient_user),
    ):
        granted = await identity.stub.GrantConsent(
            grant(grantee=existing), metadata=hospitals.a_app
        )
        assert granted.consent.grantee == existing


def _audience(token: str) -> Any:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["aud"]


async def test_tokens_only_for_an_audience_that_exists(identity: Any) -> None:
    key = await identity.partner("lab-app", "st-marys", ["system/Observation.rs"])
    for unknown in ("record", "https://elsewhere.example", "medledger2"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.stub.IssueToken(
                identity.grant(
                    identity.assertion("lab-app", key), "system/Observation.rs", audience=unknown
                )
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, unknown
        assert identity.bad_fields(caught.value) == ["client_credentials.audience"]
    for accepted in ("", identity.config.default_audience):
        issued = await identity.stub.IssueToken(
            identity.grant(
                identity.assertion("lab-app", key), "system/Observation.rs", audience=accepted
            )
        )
        assert _audience(issued.access_token) == identity.config.default_audience


async def test_revocation_denies_the_very_next_check(identity: Any, hospitals: Hospitals) -> None:
    """As record sees it: < 1 s from revoking to denial."""
    stub = identity.stub
    granted = await stub.GrantConsent(grant(idempotency_key="grant-1"), metadata=hospitals.patient)
    decision = await stub.CheckAccess(check(), metadata=hospitals.b_app)
    assert decision.decision == identity_pb2.DECISION_PERMIT
    started = time.perf_counter()
    revoked = await stub.RevokeConsent(
        identity_pb2.RevokeConsentRequest(consent_id=granted.consent.consent_id),
        metadata=hospitals.patient,
    )
    decision = await stub.CheckAccess(check(), metadata=hospitals.b_app)
    elapsed = time.perf_counter() - started
    assert (decision.decision, decision.reason) == (identity_pb2.DECISION_DENY, "NO_CONSENT")
    assert elapsed < 1.0, f"revocation took {elapsed:.3f} s to deny"
    assert revoked.consent.status == identity_pb2.CONSENT_STATUS_REVOKED
    assert revoked.consent.HasField("revoke_time")


async def test_bad_inputs_name_the_field(identity: Any, hospitals: Hospitals) -> None:
    secret = "Jane Doe born 1970"
    cases = [
        ("GrantConsent", grant(resource_types=["Observation", secret]), ["resource_types[1]"]),
        ("GrantConsent", grant(purposes=[], patient_id=secret), ["patient_id", "purposes"]),
        (
            "CheckAccess",
            check(
                action=identity_pb2.ACTION_UNSPECIFIED,
                resource_type="observation",
                principal_id="hospital-a-app",
                organization="hospital-a",
                client_id="hospital-a-app",
                scopes=[],
            ),
            ["action", "resource_type"],
        ),
        ("RevokeConsent", identity_pb2.RevokeConsentRequest(consent_id=secret), ["consent_id"]),
        (
            "ListConsents",
            identity_pb2.ListConsentsRequest(grantee=identity_pb2.Grantee(user_id=secret)),
            ["grantee.user_id"],
        ),
        ("ListConsents", identity_pb2.ListConsentsRequest(page_size=-1), ["page_size"]),
    ]
    for method, message, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(identity.stub, method)(message, metadata=hospitals.a_app)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert identity.bad_fields(caught.value) == fields, method
        assert secret not in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.GetConsent(
            identity_pb2.GetConsentRequest(consent_id="missing"), metadata=hospitals.a_app
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_page_tokens_are_bound_to_their_filters(
    identity: Any, hospitals: Hospitals
) -> None:
    for organization in ("hospital-a", "hospital-b", "medledger"):
        await identity.stub.GrantConsent(
            grant(grantee=identity_pb2.Grantee(organization=organization)),
            metadata=hospitals.a_app,
        )
    listed: list[str] = []
    token = ""
    while True:
        page = await identity.stub.ListConsents(
            identity_pb2.ListConsentsRequest(patient_id=PATIENT_ID, page_size=2, page_token=token),
            metadata=hospitals.a_app,
        )
        listed.extend(c.grantee.organization for c in page.consents)
        token = page.next_page_token
        if not token:
            break
    assert listed == ["hospital-a", "hospital-b", "medledger"]
    first = await identity.stub.ListConsents(
        identity_pb2.ListConsentsRequest(patient_id=PATIENT_ID, page_size=1),
        metadata=hospitals.a_app,
    )
    for other in (
        identity_pb2.ListConsentsRequest(
            patient_id=PATIENT_ID,
            status=identity_pb2.CONSENT_STATUS_ACTIVE,
            page_token=first.next_page_token,
        ),
        identity_pb2.ListConsentsRequest(  # the consents granted to hospital-a itself
            grantee=identity_pb2.Grantee(organization="hospital-a"),
            page_token=first.next_page_token,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await identity.stub.ListConsents(other, metadata=hospitals.a_app)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert identity.bad_fields(caught.value) == ["page_token"]
    # Nor does a token of another listing work here.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await identity.stub.ListClients(
            identity_pb2.ListClientsRequest(page_token=first.next_page_token),
            metadata=await identity.admin(),
        )
    assert identity.bad_fields(caught.value) == ["page_token"]
