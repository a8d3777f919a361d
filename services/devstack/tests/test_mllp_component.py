"""The MLLP listener as a component of the local stack: its port, its environment (no Vault,
no Mongo), its facilities file and the demo feed's key pair, and its place in the start and
stop order."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from medledger.common.keyfiles import load_private_key
from medledger.devstack.devstack import DevStack
from medledger.devstack.mllp import DEMO_HL7_FEEDS, HL7_CLIENT_SCOPES, MLLP_PORT
from medledger.devstack.paths import StackPaths, private_files


def test_the_stack_runs_the_listener_on_2575_after_the_services(tmp_path: Path) -> None:
    stack = DevStack(StackPaths(tmp_path / "home"))
    names = [c.component for c in stack.components()]
    assert names[-1] == "mllp"
    assert names.index("mllp") > names.index("record") > names.index("identity")
    assert stack.mllp.address == f"127.0.0.1:{MLLP_PORT}" == "127.0.0.1:2575"
    assert "mllp" not in [c.component for c in stack.components(deps_only=True)]


def test_its_environment_names_the_services_and_no_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_TOKEN", "root-token-of-the-shell")
    monkeypatch.setenv("MONGODB_URI", "mongodb://user:secret@127.0.0.1:27018/")
    stack = DevStack(StackPaths(tmp_path / "home"))
    env = stack.mllp.env()
    assert env["MEDLEDGER_MLLP_HOST"] == "127.0.0.1"
    assert env["MEDLEDGER_MLLP_PORT"] == "2575"
    assert env["MEDLEDGER_RECORD_ADDR"] == "127.0.0.1:50052"
    assert env["MEDLEDGER_IDENTITY_ADDR"] == "127.0.0.1:50051"
    assert env["MEDLEDGER_MLLP_FACILITIES_FILE"] == str(stack.mllp.facilities_file)
    assert env["OTEL_SERVICE_NAME"] == "mllp"
    for secret in ("VAULT_TOKEN", "MONGODB_URI"):
        assert secret not in env


def test_prepare_writes_the_facilities_and_keeps_the_feed_key(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    stack = DevStack(paths)
    paths.make_home()
    with private_files():
        stack.mllp.prepare()
    (feed,) = DEMO_HL7_FEEDS
    key_file = paths.client_key(feed.client_id)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    document = json.loads(stack.mllp.facilities_file.read_text())
    (entry,) = document["facilities"]
    assert entry == {
        "id": "hospital-a",
        "client_id": "hospital-a-hl7",
        "key_file": str(key_file),
        "sending_facilities": ["HOSP-A"],
        "scope": " ".join(HL7_CLIENT_SCOPES),
    }
    thumbprint = load_private_key(key_file).thumbprint()
    with private_files():
        stack.mllp.prepare()  # a second `dev up`: the key identity registered is kept
    assert load_private_key(key_file).thumbprint() == thumbprint
