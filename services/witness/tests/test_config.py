"""The witness's own settings: its identity and the logs it follows, from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medledger.common.config import ConfigError, load_settings
from medledger.tlog import Cosigner, Ed25519Signer
from medledger.witness.config import WitnessSettings

LOG = Ed25519Signer.generate("medledger.local/ledger")
OTHER = Ed25519Signer.generate("other.example/log")


def witness_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in ("WITNESS_NAME", "WITNESS_KEY", "WITNESS_LOG_VKEYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_reads_the_witness_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    witness_env(
        monkeypatch,
        WITNESS_NAME="witness-a.medledger.local",
        WITNESS_KEY="witness-a",
        WITNESS_LOG_VKEYS=f" {LOG.verifier_key} , {OTHER.verifier_key},",
    )
    (settings,) = load_settings(WitnessSettings)
    assert settings.grpc_port == 50055
    assert settings.witness_name == "witness-a.medledger.local"
    assert settings.witness_key == "witness-a"
    assert settings.trusted_logs().origins == ("medledger.local/ledger", "other.example/log")


def test_every_missing_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    witness_env(monkeypatch)
    with pytest.raises(ConfigError) as raised:
        load_settings(WitnessSettings)
    message = str(raised.value)
    for name in ("WITNESS_NAME", "WITNESS_KEY", "WITNESS_LOG_VKEYS"):
        assert f"  - {name}: is required but not set" in message
    assert "MEDLEDGER_WITNESS" not in message


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("WITNESS_NAME", "witness a", "must be a key name"),
        ("WITNESS_NAME", "witness+a", "must be a key name"),
        ("WITNESS_KEY", "../sys/seal", "should match pattern"),
        ("WITNESS_LOG_VKEYS", " , ", "at least one log verifier key"),
        ("WITNESS_LOG_VKEYS", "PRIVATE+KEY+secret+00000000+AAAA", "entry 1 is not a C2SP"),
        ("WITNESS_LOG_VKEYS", f"{LOG.verifier_key},{LOG.verifier_key}", "listed twice"),
        # A witness's cosignature key (type 0x04) cannot sign a log's checkpoints.
        ("WITNESS_LOG_VKEYS", str(Cosigner.generate("w.example").verifier_key), "entry 1"),
    ],
)
def test_a_bad_value_is_named_without_being_quoted(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    good = {
        "WITNESS_NAME": "witness-a.medledger.local",
        "WITNESS_KEY": "witness-a",
        "WITNESS_LOG_VKEYS": str(LOG.verifier_key),
    }
    witness_env(monkeypatch, **(good | {variable: value}))
    with pytest.raises(ConfigError) as raised:
        load_settings(WitnessSettings)
    message = str(raised.value)
    assert f"  - {variable}: " in message
    assert problem in message
    assert "secret" not in message


def test_the_process_exits_2_naming_each_witness_variable() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MEDLEDGER_", "VAULT_", "WITNESS_", "MONGODB_"))
    }
    env |= {"WITNESS_NAME": "has space", "OTEL_SDK_DISABLED": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "medledger.witness"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    for name in ("WITNESS_NAME", "WITNESS_KEY", "WITNESS_LOG_VKEYS", "MONGODB_URI", "VAULT_ADDR"):
        assert f"  - {name}: " in result.stderr
    assert "Traceback" not in result.stderr
