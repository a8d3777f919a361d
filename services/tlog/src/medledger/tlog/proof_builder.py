"""Which stored nodes make up an RFC 9162 proof, and how to turn their hashes into the proof.

Proof elements are hashes of RFC 9162 subtrees. All but at most one are perfect subtrees, whose
hashes are stored (``nodes.NodeId``). The exception is the sibling of the path where it meets the
right border of a tree whose size is not a power of two: that "ephemeral" node is computed from
the run of perfect subtrees covering it. A ``ProofPlan`` lists the node ids to fetch, in order,
and which contiguous run of them folds into the ephemeral node.

This module decides nothing about validity of proofs: ``verify`` checks them independently.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from medledger.tlog.hashing import HASH_SIZE, border_hash
from medledger.tlog.nodes import NodeId, range_nodes


@dataclass(frozen=True, slots=True)
class ProofPlan:
    """Node ids whose hashes make up a proof; ``nodes[fold_begin:fold_end]`` fold into one.

    ``nodes`` are in proof order (bottom up), except that the fold run lists its subtrees left
    to right, largest first, as ``hashing.border_hash`` takes them. Every id is a perfect
    subtree, so its hash can be read from storage (see ``tiles``).
    """

    nodes: tuple[NodeId, ...]
    fold_begin: int = 0
    fold_end: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.fold_begin <= self.fold_end <= len(self.nodes):
            raise ValueError(
                f"fold run [{self.fold_begin}, {self.fold_end}) is outside {len(self.nodes)} nodes"
            )

    def rehash(self, hashes: Sequence[bytes]) -> list[bytes]:
        """The RFC 9162 proof from the hashes of ``nodes``, given in the same order."""
        if len(hashes) != len(self.nodes):
            raise ValueError(f"got {len(hashes)} hashes for a plan of {len(self.nodes)} nodes")
        for position, value in enumerate(hashes):
            if len(value) != HASH_SIZE:
                raise ValueError(f"hash {position} is {len(value)} bytes, not {HASH_SIZE}")
        if self.fold_end - self.fold_begin < 2:
            return list(hashes)
        return [
            *hashes[: self.fold_begin],
            border_hash(hashes[self.fold_begin : self.fold_end]),
            *hashes[self.fold_end :],
        ]


def _path_plan(node: NodeId, size: int) -> ProofPlan:
    """The nodes that hash ``node`` up to the root of a tree of ``size`` leaves, bottom up.

    Below the level where the paths to ``node`` and to the last leaf diverge, every sibling is a
    perfect subtree. At that level the sibling is the rest of the tree, ``[start, size)``, which
    may be ragged: it is the ephemeral run. Above it the path runs along the right border, where
    only left siblings exist, and they are perfect.
    """
    first = node.begin
    diverge = (first ^ (size - 1)).bit_length() - 1  # -1: ``node`` holds the last leaf
    inner = [NodeId(level, (first >> level) ^ 1) for level in range(node.level, diverge)]
    run: list[NodeId] = []
    if diverge >= node.level:
        run = range_nodes(((first >> diverge) + 1) << diverge, size)
    border = [
        NodeId(level, (first >> level) ^ 1)
        for level in range(max(diverge + 1, node.level), first.bit_length())
        if (first >> level) & 1
    ]
    return ProofPlan((*inner, *run, *border), len(inner), len(inner) + len(run))


def inclusion_nodes(index: int, size: int) -> ProofPlan:
    """The plan for the inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    return _path_plan(NodeId(0, index), size)


def consistency_nodes(size1: int, size2: int) -> ProofPlan:
    """The plan for the consistency proof from tree size ``size1`` to ``size2``.

    The proof is the path from the largest perfect subtree ending at ``size1`` (the last node of
    ``root_nodes(size1)``) up to the root of ``size2``, preceded by that subtree itself unless it
    is the whole old tree (``size1`` a power of two), whose hash the verifier already holds.
    """
    if not 0 < size1 <= size2:
        raise ValueError(f"consistency needs 0 < size1 <= size2, got {size1} and {size2}")
    if size1 == size2:
        return ProofPlan(())
    level = (size1 & -size1).bit_length() - 1
    start = NodeId(level, (size1 >> level) - 1)
    path = _path_plan(start, size2)
    if start.index == 0:
        return path
    return ProofPlan((start, *path.nodes), path.fold_begin + 1, path.fold_end + 1)
