"""The first admin comes from the deployment's settings, once, without overwriting."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from medledger.api.identity.v1 import identity_pb2
from medledger.common.config import ConfigError, load_settings
from medledger.identity.bootstrap import BootstrapPlan, plan_from_config
from medledger.identity.config import IdentityConfig

pytestmark = pytest.mark.filterwarnings("ignore::joserfc.errors.SecurityWarning")


def login(username: str, password: str) -> identity_pb2.IssueTokenRequest:
    return identity_pb2.IssueTokenRequest(
        password=identity_pb2.PasswordGrant(username=username, password=password)
    )


def scopes_of(token: str) -> str:
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=="))["scope"])


async def test_bootstrap_admin_user_is_created_once(make_identity: Any) -> None:
    plan = BootstrapPlan(
        organization="operators", admin_username="root-admin", admin_password="first password!"
    )
    first = await make_identity(bootstrap=plan)
    token = (await first.stub.IssueToken(login("root-admin", "first password!"))).access_token
    assert scopes_of(token) == "admin ledger.read"
    # A restart with another password in the settings changes nothing.
    changed = BootstrapPlan(
        organization="operators", admin_username="root-admin", admin_password="second password!"
    )
    second = await make_identity(bootstrap=changed, database=first.database)
    await second.stub.IssueToken(login("root-admin", "first password!"))
    with pytest.raises(grpc.aio.AioRpcError):
        await second.stub.IssueToken(login("root-admin", "second password!"))


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
    (config,) = load_settings(IdentityConfig)
    with pytest.raises(ConfigError) as bad:
        plan_from_config(config)
    assert "IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE: must hold public keys only" in str(bad.value)
    assert "IDENTITY_BOOTSTRAP_ADMIN_PASSWORD_FILE" in str(bad.value)
    password.write_text("a long enough password\n")
    private.write_text(json.dumps({"kty": "OKP", "crv": "Ed25519", "x": "A" * 43}))
    plan = plan_from_config(config)
    assert plan.admin_password == "a long enough password"
    assert json.loads(plan.client_jwks_json)["keys"][0]["x"] == "A" * 43
