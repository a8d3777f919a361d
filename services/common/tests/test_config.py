"""Configuration: every wrong or missing variable is named in one message, nothing echoed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medledger.common.config import (
    ConfigError,
    MongoSettings,
    ServiceSettings,
    VaultSettings,
    load_settings,
)

SECRET = "s3cr3t-token-value"


def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("MEDLEDGER_", "VAULT_", "MONGODB_", "TRITON_")):
            monkeypatch.delenv(name)


def test_defaults_load(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("MONGODB_URI", "mongodb://127.0.0.1:1/?directConnection=true")
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8201")
    monkeypatch.setenv("VAULT_TOKEN", SECRET)
    service, mongo, vault = load_settings(ServiceSettings, MongoSettings, VaultSettings)
    assert service.listen_address == "127.0.0.1:50050"
    assert mongo.mongodb_database == "medledger"
    assert vault.token == SECRET
    assert SECRET not in repr(vault)


def test_every_mistake_is_named_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("MEDLEDGER_GRPC_PORT", "70000")
    monkeypatch.setenv("MEDLEDGER_LOG_LEVEL", "CHATTY")
    monkeypatch.setenv("MEDLEDGER_TLS_CERT_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("VAULT_ADDR", "vault:8200")
    monkeypatch.setenv("VAULT_TOKEN", SECRET)
    with pytest.raises(ConfigError) as raised:
        load_settings(ServiceSettings, MongoSettings, VaultSettings)
    message = str(raised.value)
    for name in (
        "MEDLEDGER_GRPC_PORT",
        "MEDLEDGER_LOG_LEVEL",
        "MEDLEDGER_TLS_CERT_FILE",
        "MONGODB_URI",
        "VAULT_ADDR",
    ):
        assert name in message
    assert "MONGODB_URI: is required but not set" in message
    assert SECRET not in message


def test_incomplete_vault_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env(monkeypatch)
    monkeypatch.setenv("VAULT_ADDR", "https://vault.example:8200")
    monkeypatch.setenv("VAULT_AUTH_METHOD", "kubernetes")
    with pytest.raises(ConfigError, match="VAULT_K8S_ROLE: is required"):
        load_settings(VaultSettings)


def test_tls_cert_without_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env(monkeypatch)
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    monkeypatch.setenv("MEDLEDGER_TLS_CERT_FILE", str(cert))
    with pytest.raises(ConfigError, match="MEDLEDGER_TLS_KEY_FILE: must be set together"):
        load_settings(ServiceSettings)


@pytest.mark.parametrize("service", ["identity", "record", "ledger", "witness", "inference"])
def test_service_process_exits_non_zero_with_one_clear_message(service: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MEDLEDGER_", "VAULT_"))}
    env |= {"MEDLEDGER_GRPC_PORT": "not-a-port", "VAULT_TOKEN": SECRET, "OTEL_SDK_DISABLED": "true"}
    env.pop("MONGODB_URI", None)
    env.pop("TRITON_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", f"medledger.{service}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid configuration" in result.stderr
    assert "MEDLEDGER_GRPC_PORT" in result.stderr
    expected = "TRITON_URL" if service == "inference" else "MONGODB_URI"
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
