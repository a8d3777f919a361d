"""Proofs from stored tiles: one storage read per proof, no recomputation of the tree.

A proof's nodes are perfect subtrees; each is hashed from one tile row slice
(``tlog.tiles``). The right-border "ephemeral" node folds the tree's border, which each
checkpoint keeps, so it costs no read. All tiles a proof (or a batch of proofs) needs are
fetched in a single storage query.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from medledger.common.errors import DataLoss, FieldViolation, InvalidArgument
from medledger.ledger.domain.ports import LedgerStorage, StoredCheckpoint, TileId
from medledger.tlog.hashing import HASH_SIZE
from medledger.tlog.nodes import NodeId, root_nodes
from medledger.tlog.proof_builder import ProofPlan, consistency_nodes, inclusion_nodes
from medledger.tlog.tiles import TILE_WIDTH, node_hash_from_tile, tile_span, tiles_for_nodes

FULL_TILE_BYTES = TILE_WIDTH * HASH_SIZE
FULL_TILE_CACHE = 4096  # 4096 x 8 KiB = 32 MiB at most


class ProofReader:
    """Builds proofs from tiles. Full tiles never change, so they are cached; partial
    tiles are read each time unless the caller holds them (the sequencer's right edge)."""

    def __init__(self, storage: LedgerStorage) -> None:
        self._storage = storage
        self._full_tiles: OrderedDict[TileId, bytes] = OrderedDict()

    def _cached(self, tile: TileId) -> bytes | None:
        data = self._full_tiles.get(tile)
        if data is not None:
            self._full_tiles.move_to_end(tile)
        return data

    def _remember(self, tiles: dict[TileId, bytes]) -> None:
        for tile, data in tiles.items():
            if len(data) == FULL_TILE_BYTES:
                self._full_tiles[tile] = data
                self._full_tiles.move_to_end(tile)
        while len(self._full_tiles) > FULL_TILE_CACHE:
            self._full_tiles.popitem(last=False)

    async def _rehash(
        self,
        plans: Sequence[ProofPlan],
        checkpoint: StoredCheckpoint,
        held: dict[TileId, bytes] | None = None,
    ) -> list[list[bytes]]:
        known = dict(zip(root_nodes(checkpoint.size), checkpoint.border, strict=True))
        wanted = [node for plan in plans for node in plan.nodes]
        data: dict[TileId, bytes] = dict(held or {})
        missing = []
        for tile in tiles_for_nodes(wanted, checkpoint.size, known):
            tile_id = (tile.level, tile.index)
            cached = data.get(tile_id) or self._cached(tile_id)
            if cached is not None and len(cached) >= tile.width * HASH_SIZE:
                data[tile_id] = cached
            else:
                missing.append(tile_id)
        if missing:
            fetched = await self._storage.read_tiles(missing)
            self._remember(fetched)
            data.update(fetched)

        def hash_of(node: NodeId) -> bytes:
            if node in known:
                return known[node]
            span = tile_span(node)
            tile = data.get((span.tile_level, span.tile_index))
            try:
                if tile is None:
                    raise ValueError("tile missing")
                return node_hash_from_tile(tile, node)
            except ValueError:
                # Storage lost or truncated a tile: say so, never answer a wrong proof.
                raise DataLoss(
                    "a tile of the log is missing or short",
                    reason="TILE_MISSING",
                    metadata={"tile": f"{span.tile_level}/{span.tile_index}"},
                ) from None

        return [plan.rehash([hash_of(node) for node in plan.nodes]) for plan in plans]

    async def inclusion(
        self,
        indices: Sequence[int],
        checkpoint: StoredCheckpoint,
        held: dict[TileId, bytes] | None = None,
    ) -> list[list[bytes]]:
        """Inclusion proofs of ``indices`` in the tree of ``checkpoint`` (at most one read;
        none when the tiles are cached or ``held``)."""
        for index in indices:
            if not 0 <= index < checkpoint.size:
                raise InvalidArgument([FieldViolation("leaf_index", "must be below the tree size")])
        plans = [inclusion_nodes(index, checkpoint.size) for index in indices]
        return await self._rehash(plans, checkpoint, held)

    async def consistency(self, first_size: int, checkpoint: StoredCheckpoint) -> list[bytes]:
        """The consistency proof from ``first_size`` to ``checkpoint``'s tree."""
        if not 0 < first_size <= checkpoint.size:
            raise InvalidArgument(
                [FieldViolation("first_size", "must be between 1 and the second size")]
            )
        (proof,) = await self._rehash([consistency_nodes(first_size, checkpoint.size)], checkpoint)
        return proof
