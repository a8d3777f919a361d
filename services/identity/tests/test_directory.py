"""Organisations, partner clients and users: admin-only changes, organisation-scoped
listings, pagination, and bad input named field by field."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from joserfc.jwk import ECKey, OctKey, RSAKey

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


async def test_organizations_create_get_and_page(identity: Any) -> None:
    admin = await identity.admin()
    for n in range(5):
        created = await identity.stub.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(
                organization_id=f"hospital-{n}", display_name=f"Hospital {n}"
            ),
            metadata=admin,
        )
        assert created.organization.HasField("create_time")
    got = await identity.stub.GetOrganization(
        identity_pb2.GetOrganizationRequest(organization_id="hospital-3"), metadata=admin
    )
    assert got.organization.display_name == "Hospital 3"
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await identity.stub.CreateOrganization(
            identity_pb2.CreateOrganizationRequest(organization_id="hospital-3"), metadata=admin
        )
    assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await identity.stub.ListOrganizations(
            identity_pb2.ListOrganizationsRequest(page_size=2, page_token=token), metadata=admin
        )
        assert len(page.organizations) <= 2
        seen.extend(o.organization_id for o in page.organizations)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(["medledger", *(f"hospital-{n}" for n in range(5))])
    assert pages == 3
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await identity.stub.GetOrganization(
            identity_pb2.GetOrganizationRequest(organization_id="nowhere"), metadata=admin
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_page_tokens_and_sizes_are_checked(identity: Any) -> None:
    admin = await identity.admin()
    for n in range(3):
        await identity.partner(f"app-{n}", "st-marys", ["system/*.rs"])
    first = await identity.stub.ListClients(
        identity_pb2.ListClientsRequest(page_size=1), metadata=admin
    )
    assert first.next_page_token
    # A token continues only the listing it came from.
    for request in (
        identity_pb2.ListUsersRequest(page_token=first.next_page_token),
        identity_pb2.ListClientsRequest(organization="st-marys", page_token=first.next_page_token),
        identity_pb2.ListClientsRequest(page_token="garbage!"),
    ):
        method = (
            identity.stub.ListUsers
            if isinstance(request, identity_pb2.ListUsersRequest)
            else identity.stub.ListClients
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await method(request, metadata=admin)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert identity.bad_fields(bad.value) == ["page_token"]
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await identity.stub.ListClients(
            identity_pb2.ListClientsRequest(page_size=-1), metadata=admin
        )
    assert identity.bad_fields(negative.value) == ["page_size"]
    huge = await identity.stub.ListClients(
        identity_pb2.ListClientsRequest(page_size=100000), metadata=admin
    )
    assert [c.client_id for c in huge.clients] == ["app-0", "app-1", "app-2", "ops-admin"]


async def test_admin_rpcs_need_the_admin_scope(identity: Any) -> None:
    key = await identity.partner("lab-app", "st-marys", ["system/*.rs", "identity.read"])
    member = identity.bearer(await identity.client_token("lab-app", key, "identity.read"))
    calls = [
        (identity.stub.CreateOrganization, identity_pb2.CreateOrganizationRequest()),
        (identity.stub.RegisterClient, identity_pb2.RegisterClientRequest()),
        (identity.stub.CreateUser, identity_pb2.CreateUserRequest()),
        (identity.stub.DisableClient, identity_pb2.DisableClientRequest(client_id="lab-app")),
        (identity.stub.RotateSigningKey, identity_pb2.RotateSigningKeyRequest()),
    ]
    for method, request in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await method(request, metadata=member)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert identity.reason(refused.value) == "SCOPE_MISSING"


async def test_members_need_identity_read_to_see_the_directory(identity: Any) -> None:
    key = await identity.partner("lab-app", "st-marys", ["ledger.read", "system/*.rs"])
    for scope in ("ledger.read", "system/*.rs"):
        token = identity.bearer(await identity.client_token("lab-app", key, scope))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.GetClient(
                identity_pb2.GetClientRequest(client_id="lab-app"), metadata=token
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert identity.reason(refused.value) == "SCOPE_MISSING"


async def test_members_list_only_their_own_organization(identity: Any) -> None:
    key = await identity.partner("lab-app", "st-marys", ["identity.read"])
    await identity.partner("other-app", "city-lab", ["identity.read"])
    member = identity.bearer(await identity.client_token("lab-app", key, "identity.read"))
    own = await identity.stub.ListClients(identity_pb2.ListClientsRequest(), metadata=member)
    assert [c.client_id for c in own.clients] == ["lab-app"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.ListClients(
            identity_pb2.ListClientsRequest(organization="city-lab"), metadata=member
        )
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Users are listed by admins only, even those of one's own organisation.
    with pytest.raises(grpc.aio.AioRpcError) as users:
        await identity.stub.ListUsers(
            identity_pb2.ListUsersRequest(organization="st-marys"), metadata=member
        )
    assert users.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await identity.stub.GetClient(
            identity_pb2.GetClientRequest(client_id="other-app"), metadata=member
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    mine = await identity.stub.GetClient(
        identity_pb2.GetClientRequest(client_id="lab-app"), metadata=member
    )
    assert mine.client.allowed_purposes == [purpose_pb2.PURPOSE_OF_USE_TREAT]


def jwk(key: Any, private: bool = False) -> str:
    return json.dumps(key.as_dict(private=private))


async def test_register_client_refuses_bad_input_by_field(identity: Any) -> None:
    admin = await identity.admin()
    good = identity.new_key()
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"client_id": "x"}, ["client_id"]),
        ({"organization": "Not An Id"}, ["organization"]),
        ({"jwks_json": jwk(good, private=True)}, ["jwks_json"]),  # private key
        ({"jwks_json": jwk(OctKey.generate_key(256))}, ["jwks_json"]),  # symmetric
        ({"jwks_json": jwk(RSAKey.generate_key(1024))}, ["jwks_json"]),  # too short
        ({"jwks_json": jwk(ECKey.generate_key("P-384"))}, ["jwks_json"]),  # other curve
        ({"jwks_json": "{not json"}, ["jwks_json"]),
        (
            {"allowed_scopes": ["system/Observation.rs", "patient/observation.read"]},
            ["allowed_scopes[1]"],
        ),
        ({"allowed_scopes": ["system/*.rr"]}, ["allowed_scopes[0]"]),
        ({"allowed_scopes": []}, ["allowed_scopes"]),
        ({"allowed_purposes": [99]}, ["allowed_purposes"]),
        ({"client_id": "", "jwks_json": ""}, ["client_id", "jwks_json"]),
    ]
    for overrides, fields in cases:
        request: dict[str, Any] = {
            "client_id": "lab-app",
            "organization": "medledger",
            "jwks_json": identity.public_jwks(good),
            "allowed_scopes": ["system/Observation.rs"],
            **overrides,
        }
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await identity.stub.RegisterClient(
                identity_pb2.RegisterClientRequest(**request), metadata=admin
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
        assert identity.bad_fields(bad.value) == fields, overrides
    with pytest.raises(grpc.aio.AioRpcError) as no_org:
        await identity.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id="lab-app",
                organization="nowhere",
                jwks_json=identity.public_jwks(good),
                allowed_scopes=["system/Observation.rs"],
            ),
            metadata=admin,
        )
    assert no_org.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # One JWK or a JWKS; stored as a JWKS; v1 scopes stored as v2.
    registered = await identity.stub.RegisterClient(
        identity_pb2.RegisterClientRequest(
            client_id="lab-app",
            organization="medledger",
            jwks_json=jwk(good),
            allowed_scopes=["patient/Observation.read", "system/*.*", "admin"],
        ),
        metadata=admin,
    )
    assert json.loads(registered.client.jwks_json)["keys"][0]["x"] == good.as_dict()["x"]
    assert list(registered.client.allowed_scopes) == [
        "patient/Observation.rs",
        "system/*.cruds",
        "admin",
    ]
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await identity.stub.RegisterClient(
            identity_pb2.RegisterClientRequest(
                client_id="lab-app",
                organization="medledger",
                jwks_json=jwk(good),
                allowed_scopes=["admin"],
            ),
            metadata=admin,
        )
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_create_user_refuses_bad_input_by_field(identity: Any) -> None:
    admin = await identity.admin()
    base: dict[str, Any] = {
        "username": "dr.who",
        "password": "correct horse battery",
        "kind": identity_pb2.USER_KIND_PRACTITIONER,
        "organization": "medledger",
    }
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"username": "a"}, ["username"]),
        ({"password": "short"}, ["password"]),
        ({"kind": identity_pb2.USER_KIND_UNSPECIFIED}, ["kind"]),
        ({"organization": ""}, ["organization"]),
        ({"kind": identity_pb2.USER_KIND_PATIENT}, ["patient_id"]),
        ({"patient_id": "p-1"}, ["patient_id"]),
    ]
    for overrides, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await identity.stub.CreateUser(
                identity_pb2.CreateUserRequest(**{**base, **overrides}), metadata=admin
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, overrides
        assert identity.bad_fields(bad.value) == fields, overrides
    created = await identity.stub.CreateUser(identity_pb2.CreateUserRequest(**base), metadata=admin)
    assert created.totp_provisioning_uri.startswith("otpauth://totp/")  # practitioners: always
    assert created.user.totp_enabled
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await identity.stub.CreateUser(
            identity_pb2.CreateUserRequest(**{**base, "username": "DR.WHO"}), metadata=admin
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_users_page_by_username(identity: Any) -> None:
    admin = await identity.admin()
    for name in ("carol", "alice", "bob"):
        await identity.stub.CreateUser(
            identity_pb2.CreateUserRequest(
                username=name,
                password="correct horse battery",
                kind=identity_pb2.USER_KIND_PRACTITIONER,
                organization="medledger",
            ),
            metadata=admin,
        )
    first = await identity.stub.ListUsers(
        identity_pb2.ListUsersRequest(page_size=2), metadata=admin
    )
    second = await identity.stub.ListUsers(
        identity_pb2.ListUsersRequest(page_size=2, page_token=first.next_page_token),
        metadata=admin,
    )
    assert [u.username for u in first.users] == ["alice", "bob"]
    assert [u.username for u in second.users] == ["carol"]
    assert second.next_page_token == ""


async def test_users_see_only_themselves_and_listings_tell_totp(identity: Any) -> None:
    """A patient's token once listed every user of their hospital (other patients' usernames
    and patient ids), and listings said totp_enabled=false for everyone."""
    admin = await identity.admin()
    users = {}
    for name, kind, patient_id in (
        ("pat.a", identity_pb2.USER_KIND_PATIENT, "p-a"),
        ("pat.b", identity_pb2.USER_KIND_PATIENT, "p-b"),
        ("dr.c", identity_pb2.USER_KIND_PRACTITIONER, ""),
    ):
        created = await identity.stub.CreateUser(
            identity_pb2.CreateUserRequest(
                username=name,
                password="correct horse battery",
                kind=kind,
                organization="medledger",
                patient_id=patient_id,
            ),
            metadata=admin,
        )
        users[name] = created.user
    listed = await identity.stub.ListUsers(identity_pb2.ListUsersRequest(), metadata=admin)
    assert {u.username: u.totp_enabled for u in listed.users} == {
        "dr.c": True,
        "pat.a": False,
        "pat.b": False,
    }
    login = await identity.stub.IssueToken(
        identity_pb2.IssueTokenRequest(
            password=identity_pb2.PasswordGrant(username="pat.a", password="correct horse battery")
        )
    )
    patient = identity.bearer(login.access_token)
    for request in (
        identity_pb2.ListUsersRequest(),
        identity_pb2.ListUsersRequest(organization="medledger"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity.stub.ListUsers(request, metadata=patient)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    me = await identity.stub.GetUser(
        identity_pb2.GetUserRequest(user_id=users["pat.a"].user_id), metadata=patient
    )
    assert me.user == users["pat.a"]
    for other in (users["pat.b"].user_id, users["dr.c"].user_id, "u-none"):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await identity.stub.GetUser(
                identity_pb2.GetUserRequest(user_id=other), metadata=patient
            )
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        assert identity.reason(hidden.value) == "USER_NOT_FOUND"
    seen = await identity.stub.GetUser(
        identity_pb2.GetUserRequest(user_id=users["dr.c"].user_id), metadata=admin
    )
    assert seen.user.totp_enabled
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await identity.stub.GetUser(identity_pb2.GetUserRequest(), metadata=admin)
    assert identity.bad_fields(bad.value) == ["user_id"]
