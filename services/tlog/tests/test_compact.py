"""The sequencer's compact range: its root is the RFC root, and it reports every stored node."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.tlog import (
    EMPTY_ROOT,
    CompactRange,
    NodeId,
    range_nodes,
    reference,
    root_nodes,
)

Store = dict[NodeId, bytes]


def test_root_after_each_append_is_the_reference_root_up_to_300(leaves: list[bytes]) -> None:
    compact = CompactRange()
    assert compact.root() == EMPTY_ROOT
    for size in range(1, 301):
        compact.append(leaves[size - 1])
        assert compact.size == size
        assert compact.root() == reference.root_hash(leaves[:size])


def test_callback_reports_every_perfect_node_once_with_its_hash(
    leaves: list[bytes], store: Store
) -> None:
    reported: dict[NodeId, bytes] = {}

    def record(level: int, index: int, value: bytes) -> None:
        node = NodeId(level, index)
        assert node not in reported
        reported[node] = value

    compact = CompactRange()
    compact.extend(leaves, record)
    assert reported == store


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 5000), st.integers(0, 300))
def test_rebuilt_from_stored_border_it_carries_on(
    leaves: list[bytes], store: Store, size: int, more: int
) -> None:
    more = min(more, len(leaves) - size)
    compact = CompactRange.from_border(size, [store[node] for node in root_nodes(size)])
    assert compact.root() == reference.root_hash(leaves[:size])
    assert [node for node, _ in compact.nodes()] == root_nodes(size)
    compact.extend(leaves[size : size + more])
    assert compact.root() == reference.root_hash(leaves[: size + more])
    assert compact.hashes == tuple(store[node] for node in root_nodes(size + more))


def test_copy_is_independent(leaves: list[bytes]) -> None:
    compact = CompactRange()
    compact.extend(leaves[:5])
    other = compact.copy()
    other.append(leaves[5])
    assert (compact.size, other.size) == (5, 6)
    assert compact.root() == reference.root_hash(leaves[:5])


def test_bad_input_is_refused(leaves: list[bytes]) -> None:
    with pytest.raises(ValueError, match="has 2 border nodes, not 1"):
        CompactRange.from_border(3, [leaves[0]])
    with pytest.raises(ValueError, match="is 3 bytes"):
        CompactRange.from_border(1, [b"abc"])
    with pytest.raises(ValueError, match="leaf hash is 1 bytes"):
        CompactRange().append(b"x")


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 12))
def test_range_nodes_cover_exactly_with_aligned_perfect_subtrees(begin: int, length: int) -> None:
    nodes = range_nodes(begin, begin + length)
    position = begin
    for node in nodes:
        assert node.begin == position
        position = node.end
    assert position == begin + length
    assert len(nodes) <= 2 * max(1, length.bit_length())


@given(st.integers(0, 1 << 62))
def test_root_nodes_are_one_per_set_bit_largest_first(size: int) -> None:
    nodes = root_nodes(size)
    assert [node.level for node in nodes] == [
        level for level in reversed(range(size.bit_length())) if size >> level & 1
    ]
