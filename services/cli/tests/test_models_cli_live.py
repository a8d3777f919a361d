"""``medledger models`` and the registration ``dev up`` runs, against the real inference
service: its own bootstrap over the testkit platform's identity and ledger, secantusdb,
OpenBao and one tritonserver for the module serving freshly built models. Nothing is faked:
register (its receipt verifies with ``medledger verify receipt``), register again (a no-op),
list, show, and the refusals.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from medledger.cli.demo_models import RegisteredDemoModel, model_versions, register_models
from medledger.cli.main import app
from medledger.common.config import MongoSettings, PeerSettings, VaultSettings
from medledger.common.server import ServiceServer
from medledger.devstack.triton import TritonServer
from medledger.inference.adapters.triton import TritonSettings
from medledger.inference.config import InferenceConfig, InferenceSettings
from medledger.inference.runtime import from_settings
from medledger.testkit.models import serving_models
from medledger.testkit.platform import ADMIN_CLIENT, Platform

pytestmark = pytest.mark.triton

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "MEDLEDGER_TOKEN": None})
DIABETES, BREAST = "diabetes-progression", "breast-cancer-malignancy"


@dataclass
class LiveModels:
    repository: Path
    triton: TritonServer
    address: str  # an inference service whose registry this module's CLI tests fill
    fresh: str  # another, on a database of its own, for the registration `dev up` runs
    ledger_address: str
    admin: str
    predictor: str
    reader: str

    async def cli(self, *args: str) -> Result:
        """``medledger ARGS`` in a thread (the command runs its own event loop; the
        services run on the test's)."""
        return await asyncio.to_thread(runner.invoke, app, list(args))

    async def models(self, *args: str, token: str | None = None) -> Result:
        return await self.cli(
            "models", *args, "--inference", self.address, "--token", token or self.admin
        )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TritonServer]]:
    with serving_models(tmp_path_factory, "cli") as served:
        yield served


@pytest.fixture(scope="module")
async def live(
    served: tuple[Path, TritonServer], auth_platform: Platform, mongo_server: Any, vault_server: Any
) -> AsyncIterator[LiveModels]:
    repository, triton = served
    servers = [
        ServiceServer(
            from_settings(
                InferenceSettings(grpc_port=0),
                InferenceConfig(model_repository=repository),
                TritonSettings(url=triton.grpc_url),
                MongoSettings(
                    MONGODB_URI=mongo_server.uri,
                    MEDLEDGER_MONGODB_DATABASE=f"modelscli{uuid.uuid4().hex[:8]}",
                ),
                VaultSettings(addr=vault_server.addr, token=vault_server.token_for("inference")),
                PeerSettings(
                    identity_addr=auth_platform.identity_address,
                    ledger_addr=auth_platform.ledger_address,
                ),
            )
        )
        for _ in range(2)
    ]
    for server in servers:
        await server.start()
    try:
        yield LiveModels(
            repository=repository,
            triton=triton,
            address=f"127.0.0.1:{servers[0].port}",
            fresh=f"127.0.0.1:{servers[1].port}",
            ledger_address=auth_platform.ledger_address,
            admin=await auth_platform._issue(ADMIN_CLIENT, auth_platform.admin_key, "admin"),
            predictor=await auth_platform.token("inference.predict", "hospital-a"),
            reader=await auth_platform.token("ledger.read", "hospital-a"),
        )
    finally:
        for server in servers:
            await server.stop(0)


async def test_register_list_show(live: LiveModels, tmp_path: Path) -> None:
    receipt = tmp_path / "diabetes.receipt"
    registered = await live.models(
        "register",
        DIABETES,
        "--version",
        "1",
        "--repository",
        str(live.repository),
        "--receipt-out",
        str(receipt),
    )
    assert registered.exit_code == 0, registered.output
    assert f"{DIABETES} version 1 registered" in registered.stderr
    assert "ledgered at leaf index" in registered.stderr
    vkey = await live.cli("ledger", "vkey", "--ledger", live.ledger_address, "--token", live.reader)
    assert vkey.exit_code == 0, vkey.output
    verified = await live.cli("verify", "receipt", str(receipt), "--vkey", vkey.stdout.strip())
    assert verified.exit_code == 0, verified.output

    # Registering again is a no-op: the same registration, the same entry.
    again = await live.models(
        "register", DIABETES, "--version", "1", "--repository", str(live.repository), "--json"
    )
    assert again.exit_code == 0, again.output
    first_leaf = registered.stderr.split("leaf index ")[1].split(";")[0].strip()
    assert json.loads(again.stdout)["receipt"]["leafIndex"] == first_leaf

    # --card and --onnx name the files themselves.
    folder = live.repository / BREAST / "1"
    by_files = await live.models(
        "register",
        BREAST,
        "--version",
        "1",
        "--card",
        str(folder / "model-card.json"),
        "--onnx",
        str(folder / "model.onnx"),
    )
    assert by_files.exit_code == 0, by_files.output

    listed = await live.models("list", "--json", token=live.predictor)
    assert listed.exit_code == 0, listed.output
    assert [(m["name"], m["version"]) for m in json.loads(listed.stdout)["models"]] == [
        (BREAST, "1"),
        (DIABETES, "1"),
    ]
    table = await live.models("list", token=live.predictor)
    assert "2 registered model version(s)" in table.stdout
    assert DIABETES in table.stdout

    shown = await live.models("show", DIABETES, token=live.predictor)
    assert shown.exit_code == 0, shown.output
    assert "Diabetes disease progression at one year" in shown.stdout
    assert "LOINC 39156-5" in shown.stdout  # BMI
    assert "kg/m2" in shown.stdout
    assert "(coded)" in shown.stdout  # sex
    as_json = await live.models("show", BREAST, "--version", "1", "--json", token=live.predictor)
    model = json.loads(as_json.stdout)["model"]
    assert model["features"][0]["codeSystem"] == (
        "https://medledger.dev/fhir/CodeSystem/fna-cytology"
    )
    assert json.loads(model["modelCardJson"])["model"]["name"] == BREAST


async def test_refusals_exit_1_with_the_reason(live: LiveModels) -> None:
    refused = await live.models(
        "register",
        DIABETES,
        "--version",
        "2",
        "--repository",
        str(live.repository),
        token=live.predictor,
    )
    assert refused.exit_code == 1, refused.output
    assert "PERMISSION_DENIED" in refused.stderr
    missing = await live.models("show", "no-such-model", token=live.predictor)
    assert missing.exit_code == 1
    assert "NOT_FOUND MODEL_NOT_FOUND" in missing.stderr
    unbuilt = await live.models(
        "register", DIABETES, "--version", "7", "--repository", str(live.repository)
    )
    assert unbuilt.exit_code == 2
    words = " ".join(unbuilt.output.replace("│", " ").split())  # unwrapped from rich's box
    assert "cannot read the model's files" in words
    assert "run `make models`?" in words


async def test_dev_up_registers_every_model_of_the_repository_once(live: LiveModels) -> None:
    versions = [(DIABETES, 1), (DIABETES, 2), (BREAST, 1)]
    assert model_versions(live.repository) == sorted(versions)
    first = await register_models(live.fresh, live.admin, live.repository)
    assert [(m.name, m.version, m.created) for m in first] == [
        (name, version, True) for name, version in sorted(versions)
    ]
    assert all(m.leaf_index is not None for m in first)
    second = await register_models(live.fresh, live.admin, live.repository)
    assert second == [
        RegisteredDemoModel(name, version, created=False) for name, version in sorted(versions)
    ]
