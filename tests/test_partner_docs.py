"""docs/partners.md states what the code does: its RPC table is the services' declarations
(``scripts/rpc-table.py``), and its constants, error example and signed-note test vector
are recomputed here from the code that a partner's client must agree with."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import importlib.util
from pathlib import Path
from types import ModuleType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.common.auth import DEFAULT_AUDIENCE, DEFAULT_ISSUER
from medledger.common.errors import FieldViolation, InvalidArgument, to_rpc_status
from medledger.common.paging import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from medledger.common.service_tokens import DEFAULT_TOKEN_ENDPOINT
from medledger.identity.domain.assertions import ASSERTION_TYPE
from medledger.identity.domain.client_keys import ALGORITHMS_BY_KEY_TYPE
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.cosignature import Cosigner, verify_checkpoint
from medledger.tlog.note import Ed25519Signer, sign_note

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "partners.md"


def _rpc_table_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rpc_table", ROOT / "scripts" / "rpc-table.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rpc_table_is_the_declarations() -> None:
    script = _rpc_table_script()
    documented = script.documented_table(DOC.read_text(encoding="utf-8"))
    assert documented == script.rpc_table(), (
        "docs/partners.md's RPC table differs from the services' *_ACCESS declarations: "
        "run `.venv/bin/python scripts/rpc-table.py --write`"
    )


def test_every_declared_method_is_in_the_table() -> None:
    script = _rpc_table_script()
    table = script.rpc_table()
    for access in script.DECLARATIONS:
        for method in access.service.methods:
            assert f"`{access.service.full_name}/{method.name}`" in table


def test_token_rules_are_the_code_s() -> None:
    doc = DOC.read_text(encoding="utf-8")
    assert f"`{ASSERTION_TYPE}`" in doc
    assert f"`{DEFAULT_TOKEN_ENDPOINT}`" in doc
    assert f"`iss` `{DEFAULT_ISSUER}`, `aud`\n`{DEFAULT_AUDIENCE}`" in doc
    for algorithms in ALGORITHMS_BY_KEY_TYPE.values():
        for algorithm in algorithms:
            assert f"`{algorithm}`" in doc, algorithm
    assert f"`page_size` 0 means {DEFAULT_PAGE_SIZE}, anything above {MAX_PAGE_SIZE}" in doc


def test_status_details_example_is_what_the_ledger_sends() -> None:
    status = to_rpc_status(
        InvalidArgument([FieldViolation("page_size", "must not be negative")]), service="ledger"
    )
    trailer = base64.b64encode(status.SerializeToString()).decode().rstrip("=")
    assert f"\n{trailer}\n" in DOC.read_text(encoding="utf-8")


def test_signed_note_vector_verifies() -> None:
    log = Ed25519Signer("example.org/log", Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32))
    witness = Cosigner(
        "witness.example",
        Ed25519PrivateKey.from_private_bytes(bytes([0x6C]) * 32),
        clock=lambda: 1767225600,
    )
    body = Checkpoint("example.org/log", 3, hashlib.sha256(b"medledger example").digest()).body()
    note = asyncio.run(sign_note(body, [log, witness])).decode()
    log_vkey, witness_vkey = str(log.verifier_key), str(witness.verifier_key)
    doc = DOC.read_text(encoding="utf-8")
    assert f"{log_vkey}\n{witness_vkey}\n" in doc
    assert f"```text\n{note}```" in doc
    # Both vkeys hold a '+' in their base64, which is why the doc splits on the first two.
    assert all("+" in vkey.split("+", 2)[2] for vkey in (log_vkey, witness_vkey))
    assert verify_checkpoint(note, [log_vkey], [witness_vkey], quorum=1).size == 3


def test_readme_links_the_guide() -> None:
    assert "(docs/partners.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
