"""``medledger verify receipt`` on receipts built here with in-memory keys (no servers).

The live ledger's receipts are verified in ``tests/ledger``; these cover what the ledger cannot
produce on demand: witness cosignatures, a bad cosignature, every malformed input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import json_format
from typer.testing import CliRunner

from medledger.api.identity.v1 import identity_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.main import app
from medledger.tlog import (
    Checkpoint,
    Cosigner,
    Ed25519Signer,
    NoteSignature,
    format_note,
    leaf_hash,
)
from medledger.tlog.reference import inclusion_proof, root_hash
from medledger.verify.receipts import (
    ReceiptFormatError,
    parse_receipt,
    read_receipt,
    receipt_json,
    write_receipt,
)

ORIGIN = "test.example/ledger"
TIME = 1_750_000_000
runner = CliRunner()


@dataclass
class Log:
    entries: list[bytes]
    log_key: str
    other_log_key: str
    witnesses: list[Cosigner]
    signer: Ed25519Signer
    private_key: Ed25519PrivateKey

    def note(self, cosigners: list[Cosigner], size: int | None = None) -> bytes:
        size = len(self.entries) if size is None else size
        body = Checkpoint(ORIGIN, size, root_hash(self.leaf_hashes[:size])).body()
        signatures = [
            NoteSignature(self.signer.name, self.signer.key_id, self.private_key.sign(body))
        ]
        signatures += [NoteSignature(w.name, w.key_id, w.cosign(body, TIME)) for w in cosigners]
        return format_note(body, signatures)

    @property
    def leaf_hashes(self) -> list[bytes]:
        return [leaf_hash(entry) for entry in self.entries]

    def receipt(self, index: int, cosigners: list[Cosigner] | None = None) -> ledger_pb2.Receipt:
        return ledger_pb2.Receipt(
            leaf_index=index,
            leaf_hash=self.leaf_hashes[index],
            checkpoint=self.note(cosigners or []),
            inclusion_proof=inclusion_proof(index, self.leaf_hashes),
        )

    def witness_options(self) -> list[str]:
        return [arg for w in self.witnesses for arg in ("--witness-vkey", str(w.verifier_key))]


@pytest.fixture(scope="module")
def log() -> Log:
    key = Ed25519PrivateKey.generate()
    signer = Ed25519Signer(ORIGIN, key)
    entries = [
        ledger_pb2.LedgerEntry(
            kind=ledger_pb2.EVENT_KIND_RECORD_READ, actor=f"client-{n}", organization="org-a"
        ).SerializeToString(deterministic=True)
        for n in range(13)
    ]
    return Log(
        entries=entries,
        log_key=str(signer.verifier_key),
        other_log_key=str(Ed25519Signer.generate(ORIGIN).verifier_key),
        witnesses=[Cosigner.generate(f"witness-{n}.example") for n in range(3)],
        signer=signer,
        private_key=key,
    )


def verify(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, ["verify", "receipt", *(str(a) for a in args)])
    return result.exit_code, " ".join(result.output.split())


def save(tmp_path: Path, receipt: ledger_pb2.Receipt, name: str = "receipt.json") -> Path:
    path = tmp_path / name
    write_receipt(path, receipt)
    return path


def test_a_valid_receipt_verifies_and_is_summarised(log: Log, tmp_path: Path) -> None:
    entry = tmp_path / "entry.bin"
    entry.write_bytes(log.entries[6])
    path = save(tmp_path, log.receipt(6))
    code, output = verify(path, "--vkey", log.log_key, "--entry", entry, "--origin", ORIGIN)
    assert code == 0, output
    assert "verifies" in output
    for expected in (ORIGIN, "tree size 13", "leaf index 6", "RECORD_READ", "client-6"):
        assert expected in output


def test_every_leaf_of_every_tree_size_verifies(log: Log, tmp_path: Path) -> None:
    for index in (0, 7, 11, 12):
        code, output = verify(save(tmp_path, log.receipt(index)), "--vkey", log.log_key)
        assert code == 0, output


def test_a_key_given_twice_counts_once(log: Log, tmp_path: Path) -> None:
    path = save(tmp_path, log.receipt(3, log.witnesses[:1]))
    witness = str(log.witnesses[0].verifier_key)
    code, output = verify(
        path, "--vkey", log.log_key, "--vkey", log.log_key, "--witness-vkey", witness,
        "--witness-vkey", witness, "--quorum", "1",
    )  # fmt: skip
    assert code == 0, output
    assert "1 of 1 known witnesses (quorum 1)" in output


def test_witness_quorum_met(log: Log, tmp_path: Path) -> None:
    path = save(tmp_path, log.receipt(3, log.witnesses[:2]))
    code, output = verify(path, "--vkey", log.log_key, *log.witness_options(), "--quorum", "2")
    assert code == 0, output
    assert "2 of 3 known witnesses (quorum 2)" in output


def test_witness_quorum_not_met(log: Log, tmp_path: Path) -> None:
    path = save(tmp_path, log.receipt(3, log.witnesses[:2]))
    code, output = verify(path, "--vkey", log.log_key, *log.witness_options(), "--quorum", "3")
    assert code == 1
    assert "checkpoint check failed" in output
    assert "2 valid witness cosignatures, the quorum is 3" in output


def test_a_forged_cosignature_fails(log: Log, tmp_path: Path) -> None:
    impostor = Cosigner(log.witnesses[0].name, Ed25519PrivateKey.generate())
    # Same name, another key: a different key id, so it does not count, and quorum 1 fails.
    path = save(tmp_path, log.receipt(3, [impostor]))
    code, output = verify(path, "--vkey", log.log_key, *log.witness_options(), "--quorum", "1")
    assert code == 1
    assert "0 valid witness cosignatures" in output


def test_a_corrupted_cosignature_from_a_known_witness_fails(log: Log, tmp_path: Path) -> None:
    receipt = log.receipt(3, log.witnesses[:1])
    lines = receipt.checkpoint.decode().split("\n")
    name, signature = lines[-2].rsplit(" ", 1)
    flipped = signature[:20] + ("A" if signature[20] != "A" else "B") + signature[21:]
    receipt.checkpoint = "\n".join([*lines[:-2], f"{name} {flipped}", ""]).encode()
    code, output = verify(save(tmp_path, receipt), "--vkey", log.log_key, *log.witness_options())
    assert code == 1
    assert "invalid signature by key witness-0.example" in output


def test_wrong_log_key_fails(log: Log, tmp_path: Path) -> None:
    code, output = verify(save(tmp_path, log.receipt(2)), "--vkey", log.other_log_key)
    assert code == 1
    assert "checkpoint check failed" in output
    assert "no valid signature from a known key" in output


def test_flipped_proof_bit_fails(log: Log, tmp_path: Path) -> None:
    receipt = log.receipt(5)
    hashes = list(receipt.inclusion_proof)
    hashes[1] = bytes([hashes[1][0] ^ 0x01]) + hashes[1][1:]
    del receipt.inclusion_proof[:]
    receipt.inclusion_proof.extend(hashes)
    code, output = verify(save(tmp_path, receipt), "--vkey", log.log_key)
    assert code == 1
    assert "inclusion proof check failed" in output
    assert "leaf 5" in output


def test_wrong_leaf_index_fails(log: Log, tmp_path: Path) -> None:
    receipt = log.receipt(5)
    receipt.leaf_index = 4
    code, output = verify(save(tmp_path, receipt), "--vkey", log.log_key)
    assert code == 1
    assert "inclusion proof check failed" in output


def test_leaf_index_outside_the_tree_fails(log: Log, tmp_path: Path) -> None:
    receipt = log.receipt(5)
    receipt.leaf_index = 13
    code, output = verify(save(tmp_path, receipt), "--vkey", log.log_key)
    assert code == 1
    assert "leaf index 13 is outside a tree of size 13" in output


def test_mismatching_entry_fails(log: Log, tmp_path: Path) -> None:
    entry = tmp_path / "entry.bin"
    entry.write_bytes(log.entries[4])
    code, output = verify(save(tmp_path, log.receipt(5)), "--vkey", log.log_key, "--entry", entry)
    assert code == 1
    assert "entry check failed" in output
    assert log.leaf_hashes[5].hex() in output


def test_other_origin_fails(log: Log, tmp_path: Path) -> None:
    path = save(tmp_path, log.receipt(5))
    code, output = verify(path, "--vkey", log.log_key, "--origin", "other.example/log")
    assert code == 1
    assert "not 'other.example/log'" in output


def test_binary_receipts(log: Log, tmp_path: Path) -> None:
    path = tmp_path / "receipt.pb"
    write_receipt(path, log.receipt(9), binary=True)
    code, output = verify(path, "--vkey", log.log_key, "--binary")
    assert code == 0, output
    code, output = verify(path, "--vkey", log.log_key)
    assert code == 1
    assert "not a receipt" in output


def test_grpcurl_append_response_is_read(log: Log, tmp_path: Path) -> None:
    response = ledger_pb2.AppendResponse(receipt=log.receipt(1))
    path = tmp_path / "append.json"
    path.write_text(json_format.MessageToJson(response))
    code, output = verify(path, "--vkey", log.log_key)
    assert code == 0, output


def test_any_response_carrying_one_receipt_is_read(log: Log, tmp_path: Path) -> None:
    granted = identity_pb2.GrantConsentResponse(receipt=log.receipt(2))
    granted.consent.consent_id = "consent-1"
    path = tmp_path / "grant.json"
    path.write_text(json_format.MessageToJson(granted))
    code, output = verify(path, "--vkey", log.log_key)
    assert code == 0, output


def test_a_response_with_several_receipts_names_them(log: Log, tmp_path: Path) -> None:
    document = {
        "first": {"receipt": json_format.MessageToDict(log.receipt(1))},
        "second": {"receipt": json_format.MessageToDict(log.receipt(2))},
    }
    with pytest.raises(ReceiptFormatError, match=r"first\.receipt, second\.receipt"):
        parse_receipt(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--vkey", "not-a-key"], "is not a C2SP verifier key"),
        (["--vkey", "{log}", "--witness-vkey", "{log}"], "expected 0x04"),
        (["--vkey", "{witness}"], "expected 0x01"),
        (["--vkey", "{log}", "--witness-vkey", "{witness}", "--quorum", "2"], "not in 0..1"),
        ([], "Missing option"),
    ],
)
def test_usage_errors_exit_2(log: Log, tmp_path: Path, args: list[str], message: str) -> None:
    path = save(tmp_path, log.receipt(1))
    filled = [a.format(log=log.log_key, witness=str(log.witnesses[0].verifier_key)) for a in args]
    code, output = verify(path, *filled)
    assert code == 2, output
    assert message in output


def test_missing_receipt_file_is_a_usage_error(log: Log, tmp_path: Path) -> None:
    code, _ = verify(tmp_path / "absent.json", "--vkey", log.log_key)
    assert code == 2


def test_receipt_file_format(log: Log, tmp_path: Path) -> None:
    receipt = log.receipt(8)
    path = save(tmp_path, receipt)
    assert path.read_text() == json_format.MessageToJson(receipt) + "\n" == receipt_json(receipt)
    document = json.loads(path.read_text())
    assert document["leafIndex"] == "8"
    assert read_receipt(path) == receipt
    assert [p.name for p in tmp_path.iterdir()] == ["receipt.json"]  # no temporary file left


@pytest.mark.parametrize(
    "data",
    [
        b"[]",
        b'{"leafIndex": "x"}',
        b'{"unknown": 1}',
        b'{"receipt": {"unknown": 1}}',
        b"\x00\x01binary",
        b"not json",
    ],
)
def test_malformed_receipts_are_refused(data: bytes) -> None:
    with pytest.raises(ReceiptFormatError):
        parse_receipt(data)
