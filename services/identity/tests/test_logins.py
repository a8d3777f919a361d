"""Password logins against real MongoDB, OpenBao and an in-process ledger: the throttle by
source (no account lockout), answers that do not tell which check failed, the second factor
of staff, the USER_LOGIN ledger entry, and the admin RPCs on users.

Identity runs here with 127.0.0.1 as a trusted proxy where a test needs several sources: each
call then comes from the address its ``x-forwarded-for`` names, as behind an ingress."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import grpc
import pyotp
import pytest
from pymongo import AsyncMongoClient

from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.errors import from_rpc_error
from medledger.common.ledger_client import LedgerClient
from medledger.common.patient_log import PatientLog
from medledger.common.patient_log_mongo import MongoPatientLeafStore
from medledger.common.subject import SubjectHasher
from medledger.common.vault import VaultTransit

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")

PASSWORD = "correct horse battery"
BEHIND_PROXY = {"trusted_proxies": "127.0.0.1/32"}


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def login(username: str, password: str = PASSWORD, **fields: Any) -> Any:
    return identity_pb2.IssueTokenRequest(
        password=identity_pb2.PasswordGrant(username=username, password=password, **fields)
    )


def source(address: str) -> list[tuple[str, str]]:
    return [("x-forwarded-for", address)]


def code(totp: pyotp.TOTP, steps_ahead: int = 0) -> str:
    """A TOTP code of this step or a later one (each code logs in once)."""
    return str(totp.at(time.time() + 30 * steps_ahead))


async def create_user(identity: Any, username: str, **fields: Any) -> Any:
    request = identity_pb2.CreateUserRequest(
        username=username,
        password=fields.pop("password", PASSWORD),
        kind=fields.pop("kind", identity_pb2.USER_KIND_PATIENT),
        organization=fields.pop("organization", "medledger"),
        **fields,
    )
    if request.kind == identity_pb2.USER_KIND_PATIENT and not request.patient_id:
        request.patient_id = f"p-{username.replace('.', '-')}"
    return await identity.stub.CreateUser(request, metadata=await identity.admin())


async def outcome(identity: Any, request: Any, address: str = "") -> tuple[str, float]:
    """The reason a login failed ("TOKEN" when it did not) and how long it took."""
    began = time.monotonic()
    try:
        await identity.stub.IssueToken(request, metadata=source(address) if address else None)
    except grpc.aio.AioRpcError as error:
        return identity.reason(error), time.monotonic() - began
    return "TOKEN", time.monotonic() - began


async def test_parallel_attempts_are_checked_only_up_to_the_free_failures(
    make_identity: Any,
) -> None:
    """200 wrong passwords at once, the right one among them: the attempts are counted before
    any hash runs, so only the first five are checked (they were 76, and the right password
    inside the burst got a token). The account itself stays open to other sources."""
    identity = await make_identity(
        login_first_delay_seconds=120,
        login_source_attempts_per_minute=10_000,
        failed_login_seconds=0,
        **BEHIND_PROXY,
    )
    await create_user(identity, "pat.race")
    burst = [login("pat.race", f"wrong password {i}") for i in range(200)]
    burst[100] = login("pat.race")
    results = await asyncio.gather(
        *(identity.stub.IssueToken(r, metadata=source("203.0.113.7")) for r in burst),
        return_exceptions=True,
    )
    reasons = [
        "TOKEN" if isinstance(r, identity_pb2.IssueTokenResponse) else identity.reason(r)
        for r in results
    ]
    checked = reasons.count("TOKEN") + reasons.count("INVALID_CREDENTIALS")
    assert checked == 5, reasons
    assert reasons.count("LOGIN_THROTTLED") == 195
    throttled = next(
        r
        for r in results
        if isinstance(r, grpc.aio.AioRpcError) and identity.reason(r) == "LOGIN_THROTTLED"
    )
    assert throttled.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 100 <= (from_rpc_error(throttled).retry_delay_seconds or 0) <= 121
    # The right password from the same source waits too; from elsewhere it logs in at once.
    assert (await outcome(identity, login("pat.race"), "203.0.113.7"))[0] == "LOGIN_THROTTLED"
    assert (await outcome(identity, login("pat.race"), "198.51.100.20"))[0] == "TOKEN"


async def test_a_source_waits_longer_after_each_failure_until_it_logs_in(
    make_identity: Any,
) -> None:
    identity = await make_identity(
        login_free_failures=2, login_first_delay_seconds=2, failed_login_seconds=0
    )
    await create_user(identity, "pat.slow")
    wrong = login("pat.slow", "not the password")
    for _ in range(2):
        assert (await outcome(identity, wrong))[0] == "INVALID_CREDENTIALS"
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await identity.stub.IssueToken(login("pat.slow"))
    assert identity.reason(held.value) == "LOGIN_THROTTLED"
    assert from_rpc_error(held.value).retry_delay_seconds in (1, 2)
    await asyncio.sleep(2.1)
    third = time.monotonic()
    assert (await outcome(identity, wrong))[0] == "INVALID_CREDENTIALS"
    # Now twice as long: still held after more than the first wait...
    await asyncio.sleep(max(0.0, third + 2.8 - time.monotonic()))
    with pytest.raises(grpc.aio.AioRpcError) as longer:
        await identity.stub.IssueToken(login("pat.slow"))
    assert identity.reason(longer.value) == "LOGIN_THROTTLED"
    assert from_rpc_error(longer.value).retry_delay_seconds in (1, 2)
    # ...and let through once it has passed.
    await asyncio.sleep(max(0.0, third + 4.2 - time.monotonic()))
    assert (await outcome(identity, login("pat.slow")))[0] == "TOKEN"
    # A login clears the count: the next failures are free again.
    for _ in range(2):
        assert (await outcome(identity, wrong))[0] == "INVALID_CREDENTIALS"


async def test_a_source_trying_many_usernames_is_throttled(make_identity: Any) -> None:
    identity = await make_identity(
        login_source_attempts_per_minute=10, failed_login_seconds=0, **BEHIND_PROXY
    )
    results = await asyncio.gather(
        *(outcome(identity, login(f"nobody-{i}"), "192.0.2.1") for i in range(14))
    )
    reasons = [reason for reason, _ in results]
    assert reasons.count("INVALID_CREDENTIALS") == 10
    assert reasons.count("LOGIN_THROTTLED") == 4
    with pytest.raises(grpc.aio.AioRpcError) as held:
        await identity.stub.IssueToken(login("nobody-x"), metadata=source("192.0.2.1"))
    assert 0 < (from_rpc_error(held.value).retry_delay_seconds or 0) <= 60
    assert (await outcome(identity, login("nobody-y"), "192.0.2.2"))[0] == "INVALID_CREDENTIALS"


async def test_failed_logins_answer_alike_whatever_failed(make_identity: Any) -> None:
    """Unknown user, wrong password, missing or wrong TOTP code with the right password, a
    disabled user: one code, reason and message, and one duration (no oracle of existence, of
    a right password, or of a lock). Throttled sources are answered alike too."""
    floor = 1.0
    identity = await make_identity(
        failed_login_seconds=floor,
        login_free_failures=1,
        login_first_delay_seconds=60,
        **BEHIND_PROXY,
    )
    staff = await create_user(identity, "dr.alike", kind=identity_pb2.USER_KIND_PRACTITIONER)
    totp = pyotp.parse_uri(staff.totp_provisioning_uri)
    wrong_code = f"{(int(code(totp)) + 1) % 1_000_000:06d}"
    gone = await create_user(identity, "pat.gone")
    await identity.stub.DisableUser(
        identity_pb2.DisableUserRequest(user_id=gone.user.user_id), metadata=await identity.admin()
    )
    cases = {
        "unknown user": login("nobody.here"),
        "wrong password": login("dr.alike", "a wrong password", totp_code=code(totp)),
        "no code": login("dr.alike"),
        "wrong code": login("dr.alike", totp_code=wrong_code),
        "disabled": login("pat.gone"),
    }
    answers: dict[str, tuple[Any, ...]] = {}
    for n, (case, request) in enumerate(cases.items()):
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await identity.stub.IssueToken(request, metadata=source(f"192.0.2.{n + 10}"))
        took = time.monotonic() - began
        error = failed.value
        answers[case] = (error.code(), identity.reason(error), error.details())
        # Every failure waits out the floor (the hash costs far less than it when idle); the
        # upper bound is loose because a loaded CI machine stretches any single call.
        assert floor <= took < floor + 3.0, (case, took)
    assert len(set(answers.values())) == 1, answers
    assert answers["unknown user"][:2] == (grpc.StatusCode.UNAUTHENTICATED, "INVALID_CREDENTIALS")
    # Locked out? No: a source that failed once on a name waits, whether the name exists.
    throttled = set()
    for name in ("dr.alike", "nobody.here"):
        assert (await outcome(identity, login(name), "192.0.2.50"))[0] == "INVALID_CREDENTIALS"
        with pytest.raises(grpc.aio.AioRpcError) as held:
            await identity.stub.IssueToken(login(name), metadata=source("192.0.2.50"))
        throttled.add((held.value.code(), identity.reason(held.value), held.value.details()))
    assert len(throttled) == 1
    assert next(iter(throttled))[1] == "LOGIN_THROTTLED"
    # And the right password with a fresh code still logs in from elsewhere.
    reason, _ = await outcome(identity, login("dr.alike", totp_code=code(totp)), "192.0.2.99")
    assert reason == "TOKEN"


async def test_practitioners_and_admins_always_log_in_with_a_second_factor(
    identity: Any,
) -> None:
    for name, kind in (
        ("dr.two", identity_pb2.USER_KIND_PRACTITIONER),
        ("ops.two", identity_pb2.USER_KIND_ADMIN),
    ):
        created = await create_user(identity, name, kind=kind)  # enroll_totp not asked for
        assert created.user.totp_enabled
        totp = pyotp.parse_uri(created.totp_provisioning_uri)
        assert isinstance(totp, pyotp.TOTP)
        assert (await outcome(identity, login(name)))[0] == "INVALID_CREDENTIALS"
        issued = await identity.stub.IssueToken(login(name, totp_code=code(totp)))
        assert claims_of(issued.access_token)["sub"] == created.user.user_id
    patient = await create_user(identity, "pat.one")
    assert not patient.user.totp_enabled
    assert patient.totp_provisioning_uri == ""
    assert (await outcome(identity, login("pat.one")))[0] == "TOKEN"


async def test_totp_codes_are_single_use_and_secrets_stay_sealed(identity: Any) -> None:
    created = await create_user(identity, "pat.house", enroll_totp=True)
    totp = pyotp.parse_uri(created.totp_provisioning_uri)
    now = code(totp)
    assert (await outcome(identity, login("pat.house", totp_code=now)))[0] == "TOKEN"
    replay = await outcome(identity, login("pat.house", totp_code=now))
    assert replay[0] == "INVALID_CREDENTIALS"
    stored = await identity.runtime.mongo[identity.database]["identity_users"].find_one(
        {"username": "pat.house"}
    )
    assert stored["totp_secret"].startswith("vault:v")
    assert totp.secret not in json.dumps(stored, default=str)
    assert stored["password_hash"].startswith("$argon2id$")


async def test_user_logins_are_ledgered(
    identity: Any, ledger_stub: Any, mongo_server: Any, vault_server: Any
) -> None:
    """Staff by their user id, as clients by theirs; a patient's login blinded like every entry
    about them, and listed in their own log (identity's patient log)."""
    staff = await create_user(identity, "dr.ledgered", kind=identity_pb2.USER_KIND_PRACTITIONER)
    totp = pyotp.parse_uri(staff.totp_provisioning_uri)
    issued = await identity.stub.IssueToken(login("dr.ledgered", totp_code=code(totp)))
    jti = claims_of(issued.access_token)["jti"]
    entry = (await identity.ledger_entry(ledger_stub, ledger_pb2.EVENT_KIND_USER_LOGIN, jti))[-1]
    assert entry.entry.actor == staff.user.user_id
    assert entry.entry.organization == "medledger"
    assert entry.entry.resource.type == "AccessToken"
    assert entry.entry.subject == b""
    assert b"dr.ledgered" not in entry.entry_bytes

    patient = await create_user(identity, "pat.ledgered", patient_id="p-ledgered-1")
    issued = await identity.stub.IssueToken(login("pat.ledgered"))
    jti = claims_of(issued.access_token)["jti"]
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_server.uri, tz_aware=True)
    vault = VaultTransit(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    )
    ledger = LedgerClient(f"127.0.0.1:{identity.ledger_port}", ServiceSettings())
    try:
        patients = PatientLog(
            ledger,
            SubjectHasher(vault),
            MongoPatientLeafStore(mongo, identity.database, "identity"),
            vault,
            identity.config.secrets_key,
        )
        (leaf,) = (await patients.leaves("p-ledgered-1")).items
    finally:
        await ledger.aclose()
        await mongo.close()
        vault.close()
    assert leaf.kind == ledger_pb2.EVENT_KIND_USER_LOGIN
    assert leaf.leaf_index is not None
    for _ in range(50):  # readers see a new checkpoint within a fraction of a second
        found = await ledger_stub.ListEntries(
            ledger_pb2.ListEntriesRequest(start_index=leaf.leaf_index, page_size=1)
        )
        if found.entries:
            break
        await asyncio.sleep(0.1)
    (blinded,) = found.entries
    assert blinded.leaf_index == leaf.leaf_index
    assert blinded.entry.kind == ledger_pb2.EVENT_KIND_USER_LOGIN
    assert blinded.entry.actor.startswith("patient:")
    assert len(blinded.entry.subject) == 32
    for clear in (
        patient.user.user_id.encode(),
        b"pat.ledgered",
        b"p-ledgered-1",
        jti.encode(),
        issued.access_token.encode(),
    ):
        assert clear not in blinded.entry_bytes


async def test_admins_disable_enable_and_reset_users(identity: Any) -> None:
    admin = await identity.admin()
    created = await create_user(identity, "dr.reset", kind=identity_pb2.USER_KIND_PRACTITIONER)
    user_id = created.user.user_id
    old_totp = pyotp.parse_uri(created.totp_provisioning_uri)

    disabled = await identity.stub.DisableUser(
        identity_pb2.DisableUserRequest(user_id=user_id), metadata=admin
    )
    assert disabled.user.disabled
    assert disabled.user.HasField("disable_time")
    refused = await outcome(identity, login("dr.reset", totp_code=code(old_totp)))
    assert refused[0] == "INVALID_CREDENTIALS"
    enabled = await identity.stub.EnableUser(
        identity_pb2.EnableUserRequest(user_id=user_id), metadata=admin
    )
    assert not enabled.user.disabled
    assert not enabled.user.HasField("disable_time")
    back = await outcome(identity, login("dr.reset", totp_code=code(old_totp, 1)))
    assert back[0] == "TOKEN"

    await identity.stub.ResetUserPassword(
        identity_pb2.ResetUserPasswordRequest(user_id=user_id, password="a brand new password"),
        metadata=admin,
    )
    reset = await identity.stub.ResetUserTotp(
        identity_pb2.ResetUserTotpRequest(user_id=user_id), metadata=admin
    )
    assert reset.user.totp_enabled
    new_totp = pyotp.parse_uri(reset.totp_provisioning_uri)
    assert new_totp.secret != old_totp.secret
    assert (await outcome(identity, login("dr.reset", totp_code=code(new_totp))))[0] == (
        "INVALID_CREDENTIALS"  # the old password
    )
    with_old_code = login("dr.reset", "a brand new password", totp_code=code(old_totp))
    assert (await outcome(identity, with_old_code))[0] == "INVALID_CREDENTIALS"
    fresh = login("dr.reset", "a brand new password", totp_code=code(new_totp))
    assert (await outcome(identity, fresh))[0] == "TOKEN"

    for request, fields in (
        (identity_pb2.ResetUserPasswordRequest(user_id=user_id, password="short"), ["password"]),
        (identity_pb2.ResetUserPasswordRequest(password="long enough password"), ["user_id"]),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await identity.stub.ResetUserPassword(request, metadata=admin)
        assert identity.bad_fields(bad.value) == fields
    for call, request in (
        (identity.stub.DisableUser, identity_pb2.DisableUserRequest(user_id="u-none")),
        (identity.stub.EnableUser, identity_pb2.EnableUserRequest(user_id="u-none")),
        (identity.stub.ResetUserTotp, identity_pb2.ResetUserTotpRequest(user_id="u-none")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await call(request, metadata=admin)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # Only admins: a patient's token is refused before the handler runs.
    await create_user(identity, "pat.plain")
    patient = identity.bearer((await identity.stub.IssueToken(login("pat.plain"))).access_token)
    for call, request in (
        (identity.stub.DisableUser, identity_pb2.DisableUserRequest(user_id=user_id)),
        (identity.stub.EnableUser, identity_pb2.EnableUserRequest(user_id=user_id)),
        (
            identity.stub.ResetUserPassword,
            identity_pb2.ResetUserPasswordRequest(user_id=user_id, password="pwned pwned pwned"),
        ),
        (identity.stub.ResetUserTotp, identity_pb2.ResetUserTotpRequest(user_id=user_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call(request, metadata=patient)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_user_tokens_follow_the_kind(identity: Any) -> None:
    await create_user(identity, "pat.kind", patient_id="p-123")
    granted = await identity.stub.IssueToken(login("pat.kind", scope="patient/Observation.rs"))
    claims = claims_of(granted.access_token)
    assert claims["patient"] == "p-123"
    assert claims["user_kind"] == "patient"
    assert claims["purposes"] == ["PATRQT"]
    assert "client_id" not in claims
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await identity.stub.IssueToken(login("pat.kind", scope="admin"))
    assert identity.reason(refused.value) == "SCOPE_NOT_ALLOWED"
    staff = await create_user(identity, "Dr.Kind", kind=identity_pb2.USER_KIND_PRACTITIONER)
    totp = pyotp.parse_uri(staff.totp_provisioning_uri)
    issued = await identity.stub.IssueToken(login("DR.KIND", totp_code=code(totp)))
    claims = claims_of(issued.access_token)
    assert claims["user_kind"] == "practitioner"
    assert claims["purposes"] == ["TREAT", "ETREAT", "HOPERAT"]
    assert "patient" not in claims
