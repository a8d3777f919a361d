"""What the worked examples of docs/export-format.md and docs/prediction-format.md share: the
fixed keys of their log and witness, the log their entry is leaf 1 of (a tree of two, whose
leaf 0 is another event), and how a doc marks its example's JSON. The docs print these keys'
vkeys, so changing one here means changing both docs."""

from __future__ import annotations

import asyncio
import re

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from medledger.api.ledger.v1 import ledger_pb2
from medledger.tlog import Checkpoint, Cosigner, Ed25519Signer, leaf_hash, sign_note
from medledger.tlog.reference import inclusion_proof, root_hash
from medledger.verify.trust import TrustPolicy

__all__ = [
    "COSIGNED_AT",
    "ORIGIN",
    "example_json",
    "example_keys",
    "example_policy",
    "example_receipt",
]

ORIGIN = "example.org/log"
COSIGNED_AT = 1767225600


def example_keys() -> tuple[Ed25519Signer, Cosigner]:
    """The example log's signer and its one witness."""
    log = Ed25519Signer(ORIGIN, Ed25519PrivateKey.from_private_bytes(bytes([8]) * 32))
    witness = Cosigner(
        "witness.example",
        Ed25519PrivateKey.from_private_bytes(bytes([0x6C]) * 32),
        clock=lambda: COSIGNED_AT,
    )
    return log, witness


def example_policy() -> TrustPolicy:
    """Trusts the example log and requires its witness."""
    log, witness = example_keys()
    return TrustPolicy.parse([str(log.verifier_key)], [str(witness.verifier_key)], 1, ORIGIN)


def example_receipt(entry_bytes: bytes) -> ledger_pb2.Receipt:
    """The receipt of ``entry_bytes`` as leaf 1 of a tree of two whose leaf 0 is another
    event, against a checkpoint the log signed and its witness cosigned."""
    leaves = [leaf_hash(b"another event"), leaf_hash(entry_bytes)]
    body = Checkpoint(ORIGIN, 2, root_hash(leaves)).body()
    return ledger_pb2.Receipt(
        leaf_index=1,
        leaf_hash=leaves[1],
        checkpoint=asyncio.run(sign_note(body, example_keys())),
        inclusion_proof=inclusion_proof(1, leaves),
    )


def example_json(doc: str, name: str) -> str:
    """The JSON block a doc marks ``<!-- example <name> -->``."""
    found = re.search(rf"<!-- example {name} -->\n```json\n(.*?)```", doc, re.DOTALL)
    assert found is not None, f"the doc's example {name}"
    return found[1]
