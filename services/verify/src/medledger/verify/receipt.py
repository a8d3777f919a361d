"""Offline verification of a ledger receipt with public keys only.

Three checks, in order, each needing the one before: the checkpoint is signed by the log and
cosigned by a quorum of witnesses; the inclusion proof leads from the leaf hash at its index to
the checkpoint's root (RFC 9162 §2.1.3.2, ``medledger.tlog.verify``); and, given the entry's
exact bytes, the leaf hash is ``SHA-256(0x00 || entry)``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from medledger.api.ledger.v1 import ledger_pb2
from medledger.tlog.errors import TlogError
from medledger.tlog.hashing import HASH_SIZE, leaf_hash
from medledger.tlog.verify import verify_inclusion
from medledger.verify.trust import TrustPolicy, VerifiedCheckpoint


class ReceiptInvalid(Exception):
    """A check failed: ``check`` names it, the message says precisely what differs."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(message)
        self.check = check
        self.message = message


@dataclass(frozen=True)
class VerifiedReceipt:
    checkpoint: VerifiedCheckpoint
    leaf_index: int
    leaf_hash: bytes
    proof_length: int
    entry_checked: bool


def verify_receipt(
    receipt: ledger_pb2.Receipt, policy: TrustPolicy, entry: bytes | None = None
) -> VerifiedReceipt:
    """Runs every check; raises ``ReceiptInvalid`` for the first that fails."""
    try:
        checkpoint = policy.open(receipt.checkpoint)
    except TlogError as error:
        raise ReceiptInvalid("checkpoint", str(error)) from None
    if len(receipt.leaf_hash) != HASH_SIZE:
        raise ReceiptInvalid(
            "leaf hash", f"leaf_hash is {len(receipt.leaf_hash)} bytes, not {HASH_SIZE}"
        )
    try:
        verify_inclusion(
            receipt.leaf_hash,
            receipt.leaf_index,
            checkpoint.size,
            list(receipt.inclusion_proof),
            checkpoint.root,
        )
    except TlogError as error:
        raise ReceiptInvalid(
            "inclusion proof",
            f"leaf {receipt.leaf_index} with hash {receipt.leaf_hash.hex()} is not proven in "
            f"the tree of size {checkpoint.size}: {error}",
        ) from None
    if entry is not None:
        computed = leaf_hash(entry)
        if not hmac.compare_digest(computed, receipt.leaf_hash):
            raise ReceiptInvalid(
                "entry",
                f"SHA-256(0x00 || entry) of the {len(entry)}-byte entry is {computed.hex()}, "
                f"the receipt's leaf_hash is {receipt.leaf_hash.hex()}",
            )
    return VerifiedReceipt(
        checkpoint,
        receipt.leaf_index,
        receipt.leaf_hash,
        len(receipt.inclusion_proof),
        entry is not None,
    )
