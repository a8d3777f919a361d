"""Proofs from stored tiles: one storage read per proof, no recomputation of the tree.

A proof's nodes are perfect subtrees; each is hashed from one tile row slice
(``tlog.tiles``). The right-border "ephemeral" node folds the tree's border, which each
checkpoint keeps, so it costs no read. All tiles a proof (or a batch of proofs) needs are
fetched in a single storage query.
"""

from __future__ import annotations

from collections.abc import Sequence

from medledger.common.errors import FieldViolation, InvalidArgument
from medledger.ledger.domain.ports import LedgerStorage, StoredCheckpoint
from medledger.tlog.nodes import NodeId, root_nodes
from medledger.tlog.proof_builder import ProofPlan, consistency_nodes, inclusion_nodes
from medledger.tlog.tiles import node_hash_from_tile, tile_span, tiles_for_nodes


class ProofReader:
    def __init__(self, storage: LedgerStorage) -> None:
        self._storage = storage

    async def _rehash(
        self, plans: Sequence[ProofPlan], checkpoint: StoredCheckpoint
    ) -> list[list[bytes]]:
        known = dict(zip(root_nodes(checkpoint.size), checkpoint.border, strict=True))
        wanted = [node for plan in plans for node in plan.nodes]
        tiles = tiles_for_nodes(wanted, checkpoint.size, known)
        data = await self._storage.read_tiles((t.level, t.index) for t in tiles)

        def hash_of(node: NodeId) -> bytes:
            if node in known:
                return known[node]
            span = tile_span(node)
            return node_hash_from_tile(data[(span.tile_level, span.tile_index)], node)

        return [plan.rehash([hash_of(node) for node in plan.nodes]) for plan in plans]

    async def inclusion(
        self, indices: Sequence[int], checkpoint: StoredCheckpoint
    ) -> list[list[bytes]]:
        """Inclusion proofs of ``indices`` in the tree of ``checkpoint`` (one read)."""
        for index in indices:
            if not 0 <= index < checkpoint.size:
                raise InvalidArgument([FieldViolation("leaf_index", "must be below the tree size")])
        return await self._rehash(
            [inclusion_nodes(i, checkpoint.size) for i in indices], checkpoint
        )

    async def consistency(self, first_size: int, checkpoint: StoredCheckpoint) -> list[bytes]:
        """The consistency proof from ``first_size`` to ``checkpoint``'s tree."""
        if not 0 < first_size <= checkpoint.size:
            raise InvalidArgument(
                [FieldViolation("first_size", "must be between 1 and the second size")]
            )
        (proof,) = await self._rehash([consistency_nodes(first_size, checkpoint.size)], checkpoint)
        return proof
