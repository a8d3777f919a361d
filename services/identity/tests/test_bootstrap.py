"""The first admin comes from the deployment's settings, once, without overwriting."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pyotp
import pytest

from medledger.api.identity.v1 import identity_pb2
from medledger.common.config import ConfigError, load_settings
from medledger.identity.bootstrap import BootstrapPlan, plan_from_config
from medledger.identity.config import IdentityConfig

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def login(username: str, password: str, code: str) -> identity_pb2.IssueTokenRequest:
    return identity_pb2.IssueTokenRequest(
        password=identity_pb2.PasswordGrant(username=username, password=password, totp_code=code)
    )


def scopes_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=="))["scope"])


async def test_bootstrap_admin_user_is_created_once(make_identity: Any) -> None:
    """With the password and the TOTP secret the operator put in files (admins always log in
    with a second factor)."""
    secret, other = pyotp.random_base32(), pyotp.random_base32()
    plan = BootstrapPlan(
        organization="operators",
        admin_username="root-admin",
        admin_password="first password!",
        admin_totp_secret=secret,
    )
    first = await make_identity(bootstrap=plan)
    now = pyotp.TOTP(secret).now()
    token = (await first.stub.IssueToken(login("root-admin", "first password!", now))).access_token
    assert scopes_of(token) == "admin ledger.read"
    # A restart with another password and secret in the settings changes nothing.
    changed = BootstrapPlan(
        organization="operators",
        admin_username="root-admin",
        admin_password="second password!",
        admin_totp_secret=other,
    )
    second = await make_identity(bootstrap=changed, database=first.database)
    later = pyotp.TOTP(secret).at(time.time() + 30)  # the next step: each code logs in once
    await second.stub.IssueToken(login("root-admin", "first password!", later))
    for password, code in (
        ("second password!", pyotp.TOTP(secret).at(time.time() - 30)),
        ("first password!", pyotp.TOTP(other).now()),
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await second.stub.IssueToken(login("root-admin", password, code))


def test_bootstrap_settings_are_checked_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_BOOTSTRAP_CLIENT_ID", "ops-admin")
    with pytest.raises(ConfigError, match="IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE"):
        load_settings(IdentityConfig)
    private = tmp_path / "private.json"
    private.write_text(json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "A" * 43, "d": "B" * 43}))
    monkeypatch.setenv("IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE", str(private))
    monkeypatch.setenv("IDENTITY_BOOTSTRAP_ADMIN_USERNAME", "root-admin")
    password = tmp_path / "password"
    password.write_text("short\n")
    monkeypatch.setenv("IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE", str(password))
    with pytest.raises(ConfigError, match="IDENTITY_BOOTSTRAP_ADMIN_TOTP_SECRET_FILE"):
        load_settings(IdentityConfig)
    totp = tmp_path / "totp"
    totp.write_text("NOT-BASE32!\n")
    monkeypatch.setenv("IDENTITY_BOOTSTRAP_ADMIN_TOTP_SECRET_FILE", str(totp))
    (config,) = load_settings(IdentityConfig)
    with pytest.raises(ConfigError) as bad:
        plan_from_config(config)
    assert "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE: must hold public keys only" in str(bad.value)
    assert "IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE" in str(bad.value)
    assert "IDENTITY_BOOTSTRAP_ADMIN_TOTP_SECRET_FILE" in str(bad.value)
    password.write_text("a long enough password\n")
    secret = pyotp.random_base32()
    totp.write_text(secret + "\n")
    private.write_text(json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}))
    plan = plan_from_config(config)
    assert plan.admin_password == "a long enough password"
    assert plan.admin_totp_secret == secret
    assert json.loads(plan.client_jwks_json)["keys"][0]["x"] == "A" * 43
