"""What ``dev up`` prepares for identity and the demo: key pairs made once and kept private,
and identity's environment carrying the bootstrap admin client and the service clients."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medledger.common.keyfiles import ensure_key_pair, ensure_secret, load_private_key
from medledger.devstack.devstack import DevStack
from medledger.devstack.paths import StackPaths
from medledger.devstack.services import (
    SERVICE_PORTS,
    IdentityBootstrap,
    StackEndpoints,
    service_env,
)
from medledger.identity.bootstrap import plan_from_config
from medledger.identity.config import IdentityConfig


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_pair_is_made_once_and_private(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    private, public = paths.client_key("hospital-a-app"), paths.client_jwks("hospital-a-app")
    first = ensure_key_pair("hospital-a-app", private, public)
    assert first.created
    assert private == tmp_path / "home" / "keys" / "hospital-a-app.jwk"
    assert _mode(private) == 0o600
    assert _mode(paths.keys) == 0o700
    assert _mode(public) == 0o644
    document = json.loads(private.read_text())
    assert document["kty"] == "OKP"
    assert document["crv"] == "Ed25519"
    assert "d" in document
    assert document["kid"] == first.key.thumbprint()
    jwks = json.loads(public.read_text())
    assert jwks == {"keys": [first.key.as_dict(private=False)]}
    assert "d" not in jwks["keys"][0]

    private.chmod(0o644)  # someone widened it
    public.unlink()
    again = ensure_key_pair("hospital-a-app", private, public)
    assert not again.created
    assert again.key.thumbprint() == first.key.thumbprint()
    assert _mode(private) == 0o600
    assert json.loads(public.read_text()) == jwks
    assert not list(paths.keys.glob(".*.tmp"))


def test_secret_is_made_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "admin-password"
    secret, created = ensure_secret(path, lambda: "correct horse battery staple")
    assert created
    assert secret == "correct horse battery staple"
    assert _mode(path) == 0o600
    assert ensure_secret(path, lambda: "another") == (secret, False)


def test_identity_env_carries_the_bootstrap(tmp_path: Path) -> None:
    jwks = tmp_path / "keys" / "ops-admin.jwks.json"
    endpoints = StackEndpoints(
        mongo_uri="mongodb://127.0.0.1:27018/?directConnection=true",
        vault_addr="http://127.0.0.1:8201",
        vault_tokens={"identity": "s.identity"},
        triton_url="127.0.0.1:8011",
        identity_bootstrap=IdentityBootstrap("ops-admin", jwks),
    )
    shell = {"IDENTITY_BOOTSTRAP_CLIENT_ID": "someone-else", "PATH": "/usr/bin"}
    env = service_env("identity", endpoints, base=shell)
    assert env["IDENTITY_BOOTSTRAP_CLIENT_ID"] == "ops-admin"
    assert env["IDENTITY_BOOTSTRAP_CLIENT_JWKS_FILE"] == str(jwks.resolve())
    assert env["IDENTITY_SERVICE_CLIENTS"] == "ledger,record,inference"
    for other in SERVICE_PORTS:
        if other != "identity":
            assert not any(k.startswith("IDENTITY_") for k in service_env(other, endpoints, {}))
    # Without a bootstrap (the test kit's services), the shell's settings never leak in.
    plain = service_env("identity", StackEndpoints("m", "v", {"identity": "t"}, "x"), base=shell)
    assert "IDENTITY_BOOTSTRAP_CLIENT_ID" not in plain
    assert plain["IDENTITY_SERVICE_CLIENTS"] == "ledger,record,inference"


def test_identity_accepts_what_the_stack_generates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = DevStack(StackPaths(tmp_path / "home"))
    admin = stack.admin_key()
    assert admin.created
    assert admin.client_id == "ops-admin"
    assert _mode(admin.private_file) == 0o600
    assert not stack.admin_key().created
    assert load_private_key(admin.private_file).thumbprint() == admin.key.thumbprint()
    endpoints = StackEndpoints(
        "m", "v", {}, "x", identity_bootstrap=IdentityBootstrap("ops-admin", admin.public_file)
    )
    for name, value in service_env("identity", endpoints, base={}).items():
        if name.startswith("IDENTITY_"):
            monkeypatch.setenv(name, value)
    plan = plan_from_config(IdentityConfig())
    assert plan.client_id == "ops-admin"
    assert plan.organization == "medledger"
    assert json.loads(plan.client_jwks_json)["keys"][0]["x"] == admin.key.as_dict()["x"]
