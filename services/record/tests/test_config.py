"""The record service's settings: ``python -m medledger.record`` refuses to start on any
wrong setting, naming every one at once."""

from __future__ import annotations

import os

import pytest

from medledger.common.config import ConfigError
from medledger.record.__main__ import build

BASE = {
    "MONGODB_URI": "mongodb://127.0.0.1:1/?directConnection=true",
    "VAULT_ADDR": "http://127.0.0.1:8201",
    "VAULT_TOKEN": "t",
}


def environment(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in list(os.environ):
        if name.startswith(("MEDLEDGER_", "VAULT_", "MONGODB_", "RECORD_")):
            monkeypatch.delenv(name)
    for name, value in {**BASE, **values}.items():
        monkeypatch.setenv(name, value)


async def test_every_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    environment(
        monkeypatch,
        MONGODB_URI="",
        MEDLEDGER_IDENTITY_ADDR="identity",
        MEDLEDGER_LEDGER_ADDR="ledger:port",
        RECORD_CLIENT_KEY="no/such key",
        RECORD_KEY_CACHE_SIZE="0",
        RECORD_KEY_CACHE_TTL_SECONDS="-1",
    )
    with pytest.raises(ConfigError) as refused:
        build()
    for name in (
        "MONGODB_URI",
        "MEDLEDGER_IDENTITY_ADDR",
        "MEDLEDGER_LEDGER_ADDR",
        "RECORD_CLIENT_KEY",
        "RECORD_KEY_CACHE_SIZE",
        "RECORD_KEY_CACHE_TTL_SECONDS",
    ):
        assert name in str(refused.value), name


async def test_a_pending_version_outlives_a_write(monkeypatch: pytest.MonkeyPatch) -> None:
    environment(
        monkeypatch, RECORD_LEDGER_TIMEOUT_SECONDS="30", RECORD_PENDING_TIMEOUT_SECONDS="45"
    )
    with pytest.raises(ConfigError) as refused:
        build()
    assert "RECORD_PENDING_TIMEOUT_SECONDS" in str(refused.value)


async def test_defaults_build_a_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    environment(monkeypatch)
    runtime = build()
    assert runtime.name == "record"
    await runtime.aclose()
