"""``medledger demo seed`` against a live identity: it creates the demo once, a second run
changes nothing, the credentials it writes are the owner's only, and a failure names its step.
Without a record service the patient user (the login of a record's demo patient) is left out:
``services/cli/tests/test_demo_records_live.py`` seeds it with the records."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pyotp

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.calls import bearer
from medledger.cli.demo import (
    FRESH_STACK,
    ORGANIZATIONS,
    PARTNER_CLIENTS,
    PARTNER_PURPOSES,
    PARTNER_SCOPES,
)
from medledger.cli.token import request_token
from medledger.common.keyfiles import ensure_key_pair, new_client_key, write_private
from medledger.devstack.mllp import DEMO_HL7_FEEDS, HL7_CLIENT_SCOPES

HL7_CLIENTS = [feed.client_id for feed in DEMO_HL7_FEEDS]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _secrets(identity: Any) -> list[Path]:
    paths = identity.paths
    return [
        *(paths.client_key(client) for client in (*PARTNER_CLIENTS, *HL7_CLIENTS, "ops-admin")),
        paths.password("admin"),
        paths.totp("admin"),
    ]


async def test_seeding_twice_creates_once(identity: Any) -> None:
    first = await identity.cli("demo", "seed", "--identity", identity.address)
    assert first.code == 0, first.output
    for name in (*ORGANIZATIONS, *PARTNER_CLIENTS, *HL7_CLIENTS, "admin", "patient-a"):
        assert name in first.output
    assert first.output.count("created") == (
        len(ORGANIZATIONS) + len(PARTNER_CLIENTS) + len(HL7_CLIENTS) + 1
    )
    assert "skipped" in first.output  # the patient user: no records, no Patient id
    assert not identity.paths.password("patient-a").exists()
    assert ".jwk" in first.output
    assert "admin-password" in first.output
    assert "admin-totp" in first.output
    assert not identity.paths.totp("patient-a").exists()  # patients: no second factor asked

    secrets = _secrets(identity)
    for path in secrets:
        assert _mode(path) == 0o600, path
    assert _mode(identity.paths.keys) == 0o700
    contents = {path: path.read_text() for path in secrets}

    second = await identity.cli("demo", "seed", "--identity", identity.address)
    assert second.code == 0, second.output
    assert "created" not in second.output
    assert second.output.count("exists") == first.output.count("created") + 1  # + ops-admin
    assert {path: path.read_text() for path in secrets} == contents

    admin = await request_token(identity.address, "ops-admin", identity.admin.key, "admin")
    metadata = bearer(admin.access_token)
    organizations = await identity.stub.ListOrganizations(
        identity_pb2.ListOrganizationsRequest(), metadata=metadata
    )
    assert sorted(o.organization_id for o in organizations.organizations) == sorted(
        [*ORGANIZATIONS, "medledger"]
    )
    for client_id, organization in PARTNER_CLIENTS.items():
        client = (
            await identity.stub.GetClient(
                identity_pb2.GetClientRequest(client_id=client_id), metadata=metadata
            )
        ).client
        assert client.organization == organization
        assert list(client.allowed_scopes) == list(PARTNER_SCOPES)
        assert list(client.allowed_purposes) == [
            purpose_pb2.PURPOSE_OF_USE_TREAT,
            purpose_pb2.PURPOSE_OF_USE_HPAYMT,
            purpose_pb2.PURPOSE_OF_USE_HRESCH,
            purpose_pb2.PURPOSE_OF_USE_PATRQT,  # to erase a record at the patient's request
        ]
        assert "d" not in json.loads(client.jwks_json)["keys"][0]
    # The HL7 v2 feed the MLLP listener writes as: ADT and ORU resources, treatment only.
    for feed in DEMO_HL7_FEEDS:
        client = (
            await identity.stub.GetClient(
                identity_pb2.GetClientRequest(client_id=feed.client_id), metadata=metadata
            )
        ).client
        assert client.organization == feed.organization
        assert list(client.allowed_scopes) == list(HL7_CLIENT_SCOPES)
        assert list(client.allowed_purposes) == [purpose_pb2.PURPOSE_OF_USE_TREAT]
    users = await identity.stub.ListUsers(identity_pb2.ListUsersRequest(), metadata=metadata)
    kinds = {u.username: (u.kind, u.organization, u.patient_id) for u in users.users}
    assert kinds == {"admin": (identity_pb2.USER_KIND_ADMIN, "medledger", "")}

    # The admin's stored password and TOTP enrolment log in.
    totp = pyotp.parse_uri(identity.paths.totp("admin").read_text().strip())
    login = await identity.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(
                username="admin",
                password=identity.paths.password("admin").read_text().strip(),
                totp_code=totp.now(),
                scope="admin",
            )
        )
    )
    assert login.access_token

    # A partner's key file gets its token, which the ledger records (TOKEN_ISSUED).
    token = await identity.cli(
        "token",
        "--client-id",
        "hospital-a-app",
        "--key",
        identity.paths.client_key("hospital-a-app"),
        "--scope",
        "system/*.rs ledger.read",
    )
    assert token.code == 0, token.output
    entries = await identity.ledger.ListEntries(ledger_pb2.ListEntriesRequest(page_size=1000))
    assert any(
        e.entry.kind == ledger_pb2.EVENT_KIND_TOKEN_ISSUED
        and e.entry.actor == "hospital-a-app"
        and e.entry.organization == "hospital-a"
        for e in entries.entries
    )


async def test_a_client_of_an_older_demo_is_kept_and_named(identity: Any) -> None:
    # An older demo registered hospital-a-app without PATRQT; identity cannot change a
    # client's purposes, so seeding keeps it and says how to start afresh.
    admin = bearer(
        (
            await request_token(identity.address, "ops-admin", identity.admin.key, "admin")
        ).access_token
    )
    await identity.stub.CreateOrganization(
        identity_pb2.CreateOrganizationRequest(organization_id="hospital-a", display_name="A"),
        metadata=admin,
    )
    older = ensure_key_pair(
        "hospital-a-app",
        identity.paths.client_key("hospital-a-app"),
        identity.paths.client_jwks("hospital-a-app"),
    )
    await identity.stub.RegisterClient(
        identity_pb2.RegisterClientRequest(
            client_id="hospital-a-app",
            organization="hospital-a",
            jwks_json=older.jwks_json,
            allowed_scopes=PARTNER_SCOPES,
            allowed_purposes=[
                p for p in PARTNER_PURPOSES if p != purpose_pb2.PURPOSE_OF_USE_PATRQT
            ],
        ),
        metadata=admin,
    )
    seeded = await identity.cli("demo", "seed", "--identity", identity.address)
    assert seeded.code == 0, seeded.output
    assert "hospital-a-app may not state PATRQT" in seeded.output
    assert FRESH_STACK in seeded.output
    assert "hospital-b-app may not" not in seeded.output


async def test_a_replaced_key_file_is_named(identity: Any) -> None:
    assert (await identity.cli("demo", "seed", "--identity", identity.address)).code == 0
    replaced = identity.paths.client_key("hospital-b-app")
    write_private(replaced, json.dumps(new_client_key().as_dict(private=True)))
    result = await identity.cli("demo", "seed", "--identity", identity.address)
    assert result.code == 1
    assert "demo seeding failed: partner client hospital-b-app" in result.output
    assert "another public key" in result.output


async def test_an_admin_key_identity_does_not_hold_is_named(identity: Any) -> None:
    admin_key = identity.paths.client_key("ops-admin")
    write_private(admin_key, json.dumps(new_client_key().as_dict(private=True)))
    result = await identity.cli("demo", "seed", "--identity", identity.address)
    assert result.code == 1
    assert "admin token for ops-admin" in result.output
    assert "ASSERTION_KEY_UNKNOWN" in result.output
    assert "was the key file replaced" in result.output
