"""Why a proof the ledger served is wrong: which hash differs, and where the ledger keeps it.

When a proof fails, the auditor recomputes the proof it should have been from the entries
themselves (streamed again, one page at a time) and compares hash by hash. The first hash that
differs names a subtree, and the ledger keeps every subtree hash in exactly one place: a tile
(``tlog.tiles``) or, on the right border of the tree, the border stored with the checkpoint.
If no hash differs, the proof is right and what differs is the leaf itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from medledger.tlog.compact import CompactRange
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.nodes import NodeId, root_nodes
from medledger.tlog.proof_builder import ProofPlan
from medledger.tlog.tiles import tile_span

EntryPages = Callable[[int, int], AsyncIterator[list[tuple[int, bytes]]]]
"""``(start, end)`` -> pages of ``(leaf index, entry bytes)``, as ``LedgerApi.entries``."""


@dataclass(frozen=True)
class ProofDifference:
    """The first proof hash that differs from the one the entries give."""

    position: int
    nodes: tuple[NodeId, ...]
    served: bytes
    expected: bytes
    source: str

    def describe(self) -> str:
        first, last = self.nodes[0].begin, self.nodes[-1].end - 1
        return (
            f"proof hash {self.position} (the subtree of leaves {first}..{last}) is "
            f"{self.served.hex()}, the entries give {self.expected.hex()}: {self.source} "
            "holds a wrong hash"
        )


async def subtree_hashes(nodes: Sequence[NodeId], pages: EntryPages) -> dict[NodeId, bytes]:
    """The hash of each (disjoint) subtree in ``nodes``, from one pass over their entries."""
    ordered = sorted(set(nodes), key=lambda node: node.begin)
    hashes: dict[NodeId, bytes] = {}
    if not ordered:
        return hashes
    position = 0
    compact = CompactRange()
    async for page in pages(ordered[0].begin, ordered[-1].end):
        for index, data in page:
            while position < len(ordered) and index >= ordered[position].end:
                position += 1  # leaves the ledger did not list: that subtree stays unknown
                compact = CompactRange()
            if position == len(ordered):
                return hashes
            node = ordered[position]
            if index < node.begin:
                continue
            compact.append(leaf_hash(data))
            if compact.size == node.end - node.begin:
                hashes[node] = compact.root()
                position += 1
                compact = CompactRange()
    return hashes


def _plan_nodes_at(plan: ProofPlan, position: int) -> tuple[NodeId, ...]:
    """The plan nodes that make proof hash ``position`` (several for the folded one)."""
    run = plan.fold_end - plan.fold_begin
    if run < 2 or position < plan.fold_begin:
        return (plan.nodes[position],)
    if position == plan.fold_begin:
        return plan.nodes[plan.fold_begin : plan.fold_end]
    return (plan.nodes[position + run - 1],)


def _where_stored(nodes: Sequence[NodeId], size: int) -> str:
    border = set(root_nodes(size))
    if all(node in border for node in nodes):
        return f"the right border stored with checkpoint {size}"
    places = []
    for node in nodes:
        if node in border:
            places.append(f"the border of checkpoint {size}")
            continue
        span = tile_span(node)
        last = span.offset + span.count - 1
        row = f"hash {span.offset}" if span.count == 1 else f"hashes {span.offset}..{last}"
        places.append(f"tile {span.tile_level}/{span.tile_index} ({row} of its row)")
    return " or ".join(dict.fromkeys(places))


async def first_difference(
    plan: ProofPlan, served: Sequence[bytes], size: int, pages: EntryPages
) -> ProofDifference | str | None:
    """How ``served`` differs from the proof the entries give for ``plan`` in tree ``size``.

    A ``ProofDifference`` names the first wrong hash; a string says the proof has the wrong
    length or the entries could not be read; ``None`` means the served proof is the right one.
    """
    expected_length = len(plan.nodes) - max(plan.fold_end - plan.fold_begin - 1, 0)
    if len(served) != expected_length:
        return f"the ledger served {len(served)} proof hashes, the proof has {expected_length}"
    hashes = await subtree_hashes(plan.nodes, pages)
    missing = [node for node in plan.nodes if node not in hashes]
    if missing:
        return f"the ledger did not list every entry of leaves {missing[0].begin}.."
    expected = plan.rehash([hashes[node] for node in plan.nodes])
    for position, (got, want) in enumerate(zip(served, expected, strict=True)):
        if got != want:
            nodes = _plan_nodes_at(plan, position)
            return ProofDifference(position, nodes, got, want, _where_stored(nodes, size))
    return None
