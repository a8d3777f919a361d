"""Addresses of the perfect subtrees of an append-only Merkle tree.

A node id ``(level, index)`` names the perfect subtree of ``2**level`` leaves that starts at leaf
``index * 2**level``. Such a subtree never changes once its last leaf is appended, whatever the
tree size, so its hash can be stored once and read for every later proof. Nodes of the RFC 9162
tree that are not perfect (on the right border of a tree whose size is not a power of two) have
no id: they are computed from a run of perfect ones (``hashing.border_hash``).
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """The perfect subtree of ``2**level`` leaves starting at leaf ``index * 2**level``."""

    level: int
    index: int

    @property
    def begin(self) -> int:
        """Index of its first leaf."""
        return self.index << self.level

    @property
    def end(self) -> int:
        """Index one past its last leaf."""
        return (self.index + 1) << self.level


def range_nodes(begin: int, end: int) -> list[NodeId]:
    """The fewest perfect subtrees that exactly cover leaves ``[begin, end)``, left to right.

    Each step takes the largest subtree that starts at ``begin`` (it must be aligned to its own
    size) and does not pass ``end``.
    """
    if not 0 <= begin <= end:
        raise ValueError(f"invalid leaf range [{begin}, {end})")
    nodes: list[NodeId] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        nodes.append(NodeId(level, begin >> level))
        begin += 1 << level
    return nodes


def root_nodes(size: int) -> list[NodeId]:
    """The perfect subtrees covering a tree of ``size`` leaves, largest (leftmost) first.

    There is one per set bit of ``size``; ``hashing.border_hash`` of their hashes is the tree's
    root hash, so any historical root is a handful of stored reads.
    """
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    return range_nodes(0, size)
