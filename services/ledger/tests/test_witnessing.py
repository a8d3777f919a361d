"""The ledger sends each checkpoint to its witnesses and publishes their cosignatures:
GetCheckpoint then satisfies a verifier that demands both witnesses (quorum 2)."""

from __future__ import annotations

from typing import Any

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerEvent
from medledger.testkit.witnessed import witnessed_ledger

ORIGIN = "witnessed.test/ledger"


async def test_checkpoints_are_cosigned_by_both_witnesses(
    mongo_server: Any, vault_server: Any
) -> None:
    async with witnessed_ledger(mongo_server, vault_server, ORIGIN) as ledger:
        for round_ in range(3):
            receipt = await ledger.append(
                LedgerEvent(
                    kind=ledger_pb2.EVENT_KIND_RECORD_READ, actor="client-1", organization="org-a"
                )
            )
            assert receipt.leaf_index == round_
            # Witnessing is in the background: wait for the cosigned checkpoint.
            await ledger.cosigned_checkpoint(round_ + 1)
