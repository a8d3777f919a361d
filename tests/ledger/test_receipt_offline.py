"""A receipt from the live ledger verifies offline, after the ledger has stopped; every kind
of tampering with it, or a policy it does not meet, makes ``medledger verify receipt`` exit 1."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.main import app
from medledger.tlog import Checkpoint, Cosigner, Ed25519Signer, parse_note
from medledger.verify.receipts import read_receipt, write_receipt

runner = CliRunner()
INDEX = 23


@dataclass(frozen=True)
class Saved:
    """What a partner keeps: the receipt file, the entry bytes, the log's verifier keys."""

    receipt: Path
    fetched: Path
    entry: Path
    other_entry: Path
    vkeys: list[str]
    origin: str
    address: str


@pytest.fixture(scope="module")
async def saved(serve_ledger: Any, run_cli: Any, tmp_path_factory: pytest.TempPathFactory) -> Saved:
    folder = tmp_path_factory.mktemp("partner")
    async with serve_ledger() as ledger:
        receipts = await ledger.append(40, rounds=4)
        # Appends of one wave are concurrent: the leaf order is not the request order, so
        # the receipt is found by its own leaf index.
        (receipt,) = [r for r in receipts if r.leaf_index == INDEX]
        write_receipt(folder / "receipt.json", receipt)
        (folder / "entry.bin").write_bytes(await ledger.entry_bytes(INDEX))
        (folder / "other.bin").write_bytes(await ledger.entry_bytes(INDEX + 1))
        vkeys = await ledger.vkeys()
        code, output = await run_cli(
            "ledger", "receipt", "--ledger", ledger.address, "--index", str(INDEX),
            "--out", str(folder / "fetched.json"), "--entry-out", str(folder / "fetched.bin"),
        )  # fmt: skip
        assert code == 0, output
    return Saved(
        folder / "receipt.json",
        folder / "fetched.json",
        folder / "entry.bin",
        folder / "other.bin",
        vkeys,
        ledger.origin,
        ledger.address,
    )


def verify(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", "receipt", *(str(a) for a in args)])
    return result.exit_code, " ".join(result.output.split())


def vkey_options(saved: Saved) -> list[str]:
    return [option for vkey in saved.vkeys for option in ("--vkey", vkey)]


def altered(saved: Saved, tmp_path: Path, change: Any) -> Path:
    receipt = read_receipt(saved.receipt)
    change(receipt)
    path = tmp_path / "altered.json"
    write_receipt(path, receipt)
    return path


async def test_the_ledger_is_gone(saved: Saved, run_cli: Any) -> None:
    """Everything below runs with the ledger stopped: verification needs no network."""
    code, output = await run_cli(
        "ledger", "receipt", "--ledger", saved.address, "--index", "0", "--out", "/dev/null",
        "--timeout", "2",
    )  # fmt: skip
    assert code == 1
    assert "UNAVAILABLE" in output


def test_live_receipt_verifies_offline(saved: Saved) -> None:
    code, output = verify(
        saved.receipt, *vkey_options(saved), "--entry", saved.entry, "--origin", saved.origin
    )
    assert code == 0, output
    receipt = read_receipt(saved.receipt)
    size = Checkpoint.parse(parse_note(receipt.checkpoint).text).size
    assert f"origin {saved.origin}" in output
    assert f"tree size {size}" in output
    assert f"leaf index {INDEX}" in output
    # Which request's entry became leaf 23 depends on how the concurrent wave was batched.
    entry = ledger_pb2.LedgerEntry.FromString(saved.entry.read_bytes())
    assert f"RECORD_CREATED Observation/{entry.resource.id} v1 by client-1 (org-a)" in output


def test_fetched_receipt_verifies_against_the_latest_checkpoint(saved: Saved) -> None:
    fetched_entry = saved.fetched.with_name("fetched.bin")
    assert fetched_entry.read_bytes() == saved.entry.read_bytes()
    code, output = verify(saved.fetched, *vkey_options(saved), "--entry", fetched_entry)
    assert code == 0, output
    assert "tree size 40" in output


def test_wrong_vkey(saved: Saved) -> None:
    stranger = str(Ed25519Signer.generate(saved.origin).verifier_key)
    code, output = verify(saved.receipt, "--vkey", stranger)
    assert code == 1
    assert "checkpoint check failed" in output
    assert "no valid signature from a known key" in output


def test_flipped_bit_in_the_proof(saved: Saved, tmp_path: Path) -> None:
    def flip(receipt: ledger_pb2.Receipt) -> None:
        first = receipt.inclusion_proof[0]
        receipt.inclusion_proof[0] = first[:5] + bytes([first[5] ^ 0x10]) + first[6:]

    code, output = verify(altered(saved, tmp_path, flip), *vkey_options(saved))
    assert code == 1
    assert "inclusion proof check failed" in output
    assert f"leaf {INDEX} with hash" in output
    assert "does not match the expected" in output


def test_wrong_leaf_index(saved: Saved, tmp_path: Path) -> None:
    def move(receipt: ledger_pb2.Receipt) -> None:
        receipt.leaf_index = INDEX - 1

    code, output = verify(altered(saved, tmp_path, move), *vkey_options(saved))
    assert code == 1
    assert "inclusion proof check failed" in output
    assert f"leaf {INDEX - 1}" in output


def test_mismatching_entry(saved: Saved) -> None:
    code, output = verify(saved.receipt, *vkey_options(saved), "--entry", saved.other_entry)
    assert code == 1
    assert "entry check failed" in output
    assert "SHA-256(0x00 || entry)" in output


def test_quorum_the_note_does_not_meet(saved: Saved) -> None:
    witness = str(Cosigner.generate("witness.org-b.example").verifier_key)
    code, output = verify(
        saved.receipt, *vkey_options(saved), "--witness-vkey", witness, "--quorum", "1"
    )
    assert code == 1
    assert "0 valid witness cosignatures, the quorum is 1" in output


def test_another_logs_origin(saved: Saved) -> None:
    code, output = verify(saved.receipt, *vkey_options(saved), "--origin", "other.example/log")
    assert code == 1
    assert "checkpoint check failed" in output
