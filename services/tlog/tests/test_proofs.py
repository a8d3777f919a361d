"""Proofs built from stored nodes verify with the independent verifier, for every shape of tree.

The store is a plain dict of every perfect node of a 5000-leaf tree (conftest); a perfect node
never changes as the tree grows, so the same store serves every tree size up to 5000.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.tlog import (
    HASH_SIZE,
    NodeId,
    ProofError,
    ProofPlan,
    border_hash,
    consistency_nodes,
    inclusion_nodes,
    reference,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)

Store = dict[NodeId, bytes]
EXHAUSTIVE = 300
LARGEST = 5000


@pytest.fixture(scope="module")
def roots(leaves: list[bytes]) -> list[bytes]:
    """Reference roots of every tree size up to EXHAUSTIVE, from the RFC's recursive MTH."""
    return [reference.root_hash(leaves[:size]) for size in range(EXHAUSTIVE + 1)]


def inclusion_proof(store: Store, index: int, size: int) -> list[bytes]:
    plan = inclusion_nodes(index, size)
    return plan.rehash([store[node] for node in plan.nodes])


def consistency_proof(store: Store, size1: int, size2: int) -> list[bytes]:
    plan = consistency_nodes(size1, size2)
    return plan.rehash([store[node] for node in plan.nodes])


def flip(value: bytes, bit: int) -> bytes:
    bit %= len(value) * 8
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def test_every_inclusion_proof_up_to_300_leaves_verifies(
    store: Store, leaves: list[bytes], roots: list[bytes]
) -> None:
    for size in range(1, EXHAUSTIVE + 1):
        for index in range(size):
            proof = inclusion_proof(store, index, size)
            verify_inclusion(leaves[index], index, size, proof, roots[size])


def test_every_consistency_proof_up_to_300_leaves_verifies(
    store: Store, roots: list[bytes]
) -> None:
    for size2 in range(1, EXHAUSTIVE + 1):
        for size1 in range(1, size2 + 1):
            proof = consistency_proof(store, size1, size2)
            verify_consistency(size1, size2, proof, roots[size1], roots[size2])


def test_root_nodes_fold_to_every_root_up_to_300(store: Store, roots: list[bytes]) -> None:
    for size in range(1, EXHAUSTIVE + 1):
        assert border_hash([store[node] for node in root_nodes(size)]) == roots[size]


@st.composite
def index_and_size(draw: st.DrawFn, largest: int = LARGEST) -> tuple[int, int]:
    size = draw(st.integers(1, largest))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw: st.DrawFn, largest: int = LARGEST) -> tuple[int, int]:
    size2 = draw(st.integers(1, largest))
    return draw(st.integers(1, size2)), size2


@settings(max_examples=150, deadline=None)
@given(index_and_size())
def test_inclusion_proofs_equal_the_rfc_path(
    store: Store, leaves: list[bytes], case: tuple[int, int]
) -> None:
    index, size = case
    proof = inclusion_proof(store, index, size)
    assert proof == reference.inclusion_proof(index, leaves[:size])
    root = reference.root_hash(leaves[:size])
    assert root_from_inclusion_proof(leaves[index], index, size, proof) == root


@settings(max_examples=150, deadline=None)
@given(two_sizes())
def test_consistency_proofs_equal_the_rfc_proof(
    store: Store, leaves: list[bytes], sizes: tuple[int, int]
) -> None:
    size1, size2 = sizes
    proof = consistency_proof(store, size1, size2)
    assert proof == reference.consistency_proof(size1, leaves[:size2])
    root1 = reference.root_hash(leaves[:size1])
    root2 = reference.root_hash(leaves[:size2])
    assert root_from_consistency_proof(size1, size2, proof, root1) == root2


@settings(max_examples=300, deadline=None)
@given(index_and_size(), st.integers(0, 3), st.integers(0, 255), st.integers(0, 63))
def test_any_flipped_bit_breaks_an_inclusion_proof(
    store: Store, leaves: list[bytes], case: tuple[int, int], target: int, bit: int, pick: int
) -> None:
    index, size = case
    root = border_hash([store[node] for node in root_nodes(size)])
    proof = inclusion_proof(store, index, size)
    leaf = leaves[index]
    if target == 0 and proof:
        position = pick % len(proof)
        proof[position] = flip(proof[position], bit)
    elif target == 1:
        leaf = flip(leaf, bit)
    elif target == 2:
        index ^= 1 << (bit % max(1, size.bit_length()))
    else:  # the root, or the proof when it is empty
        root = flip(root, bit)
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, root)


@settings(max_examples=300, deadline=None)
@given(two_sizes(), st.integers(0, 2), st.integers(0, 255), st.integers(0, 63))
def test_any_flipped_bit_breaks_a_consistency_proof(
    store: Store, sizes: tuple[int, int], target: int, bit: int, pick: int
) -> None:
    size1, size2 = sizes
    root1 = border_hash([store[node] for node in root_nodes(size1)])
    root2 = border_hash([store[node] for node in root_nodes(size2)])
    proof = consistency_proof(store, size1, size2)
    if target == 0 and proof:
        position = pick % len(proof)
        proof[position] = flip(proof[position], bit)
    elif target == 1:
        root1 = flip(root1, bit)
    else:  # the second root, or the proof when it is empty
        root2 = flip(root2, bit)
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, proof, root1, root2)


@settings(max_examples=100, deadline=None)
@given(index_and_size(), st.booleans())
def test_a_proof_one_hash_too_long_or_short_fails(
    store: Store, leaves: list[bytes], case: tuple[int, int], longer: bool
) -> None:
    index, size = case
    root = border_hash([store[node] for node in root_nodes(size)])
    proof = inclusion_proof(store, index, size)
    if longer:
        proof.append(root)
    elif proof:
        proof.pop()
    else:
        return
    with pytest.raises(ProofError, match="hashes"):
        verify_inclusion(leaves[index], index, size, proof, root)


def test_verifier_messages_say_what_is_wrong(store: Store, leaves: list[bytes]) -> None:
    root = border_hash([store[node] for node in root_nodes(5)])
    proof = inclusion_proof(store, 2, 5)
    with pytest.raises(ProofError, match="leaf index 5 is outside a tree of size 5"):
        verify_inclusion(leaves[5], 5, 5, proof, root)
    with pytest.raises(ProofError, match="proof hash 1 is 31 bytes"):
        verify_inclusion(leaves[2], 2, 5, [proof[0], proof[1][:-1], *proof[2:]], root)
    with pytest.raises(ProofError, match="does not match the expected"):
        verify_inclusion(leaves[3], 2, 5, proof, root)
    with pytest.raises(ProofError, match="empty tree is meaningless"):
        verify_consistency(0, 5, [], root, root)
    with pytest.raises(ProofError, match=r"size1 6 must be in 0\.\.size2"):
        verify_consistency(6, 5, [], root, root)
    with pytest.raises(ProofError, match="empty proof"):
        verify_consistency(3, 5, [], root, root)


def test_plan_rehash_checks_its_input() -> None:
    plan = inclusion_nodes(0, 7)
    assert len(plan.nodes) == 4
    with pytest.raises(ValueError, match="got 3 hashes for a plan of 4 nodes"):
        plan.rehash([b"\x00" * HASH_SIZE] * 3)
    with pytest.raises(ValueError, match="hash 1 is 3 bytes"):
        plan.rehash([b"\x00" * HASH_SIZE, b"abc", b"\x00" * HASH_SIZE, b"\x00" * HASH_SIZE])
    with pytest.raises(ValueError, match="fold run"):
        ProofPlan((NodeId(0, 1),), 0, 2)
