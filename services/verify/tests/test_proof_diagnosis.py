"""Property tests: the audit's proof diagnosis names the wrong hash, and receipt files
round-trip. Proofs come from ``tlog.reference`` (the RFC's recursive definitions)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.api.ledger.v1 import ledger_pb2
from medledger.tlog import NodeId, leaf_hash
from medledger.tlog.proof_builder import consistency_nodes, inclusion_nodes
from medledger.tlog.reference import consistency_proof, inclusion_proof, root_hash
from medledger.verify.proof_diagnosis import ProofDifference, first_difference, subtree_hashes
from medledger.verify.receipts import parse_receipt, receipt_json

ENTRIES = [b"entry %d" % index for index in range(700)]
LEAVES = [leaf_hash(entry) for entry in ENTRIES]


async def pages(start: int, end: int) -> AsyncIterator[list[tuple[int, bytes]]]:
    """Like ``LedgerApi.entries``, in pages of 7."""
    for first in range(start, end, 7):
        yield [(index, ENTRIES[index]) for index in range(first, min(first + 7, end))]


def flip(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x80]) + value[1:]


@st.composite
def leaf_in_tree(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(2, len(ENTRIES)))
    return draw(st.integers(0, size - 1)), size


@settings(max_examples=60, deadline=None)
@given(leaf_in_tree(), st.data())
def test_inclusion_diagnosis_names_the_changed_hash(
    leaf: tuple[int, int], data: st.DataObject
) -> None:
    index, size = leaf
    proof = inclusion_proof(index, LEAVES[:size])
    plan = inclusion_nodes(index, size)
    assert asyncio.run(first_difference(plan, proof, size, pages)) is None
    position = data.draw(st.integers(0, len(proof) - 1))
    served = [*proof[:position], flip(proof[position]), *proof[position + 1 :]]
    difference = asyncio.run(first_difference(plan, served, size, pages))
    assert isinstance(difference, ProofDifference)
    assert difference.position == position
    assert difference.expected == proof[position]
    # The named subtrees are what the proof hash covers.
    first, last = difference.nodes[0].begin, difference.nodes[-1].end
    assert root_hash(LEAVES[first:last]) == proof[position]
    assert ("tile" in difference.source) or ("border" in difference.source)


@settings(max_examples=60, deadline=None)
@given(leaf_in_tree(), st.data())
def test_consistency_diagnosis_names_the_changed_hash(
    sizes: tuple[int, int], data: st.DataObject
) -> None:
    first, second = sizes
    first += 1  # 1..second
    proof = consistency_proof(first, LEAVES[:second])
    plan = consistency_nodes(first, second)
    assert asyncio.run(first_difference(plan, proof, second, pages)) is None
    if not proof:
        return
    position = data.draw(st.integers(0, len(proof) - 1))
    served = [*proof[:position], flip(proof[position]), *proof[position + 1 :]]
    difference = asyncio.run(first_difference(plan, served, second, pages))
    assert isinstance(difference, ProofDifference)
    assert difference.position == position


def test_a_proof_of_the_wrong_length_is_reported() -> None:
    plan = inclusion_nodes(3, 10)
    proof = inclusion_proof(3, LEAVES[:10])
    result = asyncio.run(first_difference(plan, proof[:-1], 10, pages))
    assert result == f"the ledger served {len(proof) - 1} proof hashes, the proof has {len(proof)}"


def test_subtree_hashes_of_disjoint_nodes() -> None:
    nodes = [NodeId(0, 5), NodeId(2, 4), NodeId(8, 1)]
    hashes = asyncio.run(subtree_hashes(nodes, pages))
    assert hashes == {node: root_hash(LEAVES[node.begin : node.end]) for node in nodes}


hashes32 = st.binary(min_size=32, max_size=32)


@given(
    st.builds(
        ledger_pb2.Receipt,
        leaf_index=st.integers(0, 2**64 - 1),
        leaf_hash=hashes32,
        checkpoint=st.binary(max_size=300),
        inclusion_proof=st.lists(hashes32, max_size=64),
    )
)
def test_receipt_files_round_trip(receipt: ledger_pb2.Receipt) -> None:
    assert parse_receipt(receipt_json(receipt).encode()) == receipt
    assert parse_receipt(receipt.SerializeToString(), binary=True) == receipt
