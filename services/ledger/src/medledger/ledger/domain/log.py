"""Read side of the log: checkpoints, entries and proofs, for any replica."""

from __future__ import annotations

import time

from medledger.common.errors import FieldViolation, InvalidArgument, NotFound
from medledger.ledger.domain.ports import LedgerStorage, StoredCheckpoint
from medledger.ledger.domain.proofs import ProofReader

LATEST_TTL_SECONDS = 0.25
# Tree sizes and leaf indices are uint64 on the wire but int64 in storage, and no log will
# hold 2^63 leaves: a larger value is refused as INVALID_ARGUMENT naming its field rather
# than read as "beyond the tree" (a client that sends one has a bug worth hearing about).
MAX_POSITION = 2**63 - 1


def position(value: int, field: str) -> int:
    """``value`` as a tree size or leaf index, or InvalidArgument naming ``field``."""
    if not 0 <= value <= MAX_POSITION:
        raise InvalidArgument([FieldViolation(field, "must be below 2^63")])
    return value


class LogReader:
    """Any replica's read path. The latest checkpoint is re-read at most every 250 ms:
    an answer may trail the newest checkpoint by that much, but it always names the
    checkpoint it is for, so it is never wrong, only slightly older."""

    def __init__(self, storage: LedgerStorage) -> None:
        self._storage = storage
        self.proofs = ProofReader(storage)
        self._latest: tuple[float, StoredCheckpoint] | None = None

    def observe(self, checkpoint: StoredCheckpoint) -> None:
        """The sequencer of this replica just committed ``checkpoint``: serve it at once
        (a client reads its own append)."""
        if self._latest is None or checkpoint.size >= self._latest[1].size:
            self._latest = (time.monotonic(), checkpoint)

    async def latest(self) -> StoredCheckpoint:
        now = time.monotonic()
        if self._latest is not None and now - self._latest[0] < LATEST_TTL_SECONDS:
            return self._latest[1]
        checkpoint = await self._storage.latest_checkpoint()
        if checkpoint is None:
            raise NotFound("the log has no checkpoint yet", reason="NO_CHECKPOINT")
        self._latest = (now, checkpoint)
        return checkpoint

    async def at_size(self, size: int, field: str) -> StoredCheckpoint:
        """The checkpoint of ``size`` (0: the latest)."""
        position(size, field)
        if size == 0:
            return await self.latest()
        checkpoint = await self._storage.checkpoint(size)
        if checkpoint is None:
            raise NotFound(
                f"no checkpoint has this {field}",
                reason="CHECKPOINT_NOT_FOUND",
                metadata={"field": field},
            )
        return checkpoint

    async def entry(self, index: int) -> bytes:
        position(index, "leaf_index")
        latest = await self.latest()
        data = await self._storage.entry(index) if index < latest.size else None
        if data is None:
            raise NotFound("no entry at this leaf_index", reason="ENTRY_NOT_FOUND")
        return data

    async def entries(
        self, start: int, limit: int, field: str = "start_index"
    ) -> tuple[list[tuple[int, bytes]], int | None]:
        """Entries from ``start`` (named ``field`` in errors) below the latest checkpoint, and
        where the next page starts."""
        position(start, field)
        latest = await self.latest()
        limit = min(limit, max(latest.size - start, 0))
        found = await self._storage.entries(start, limit) if limit else []
        following = start + len(found)
        return found, following if following < latest.size else None

    async def checkpoints(
        self, after: int, limit: int, field: str = "after_size"
    ) -> tuple[list[StoredCheckpoint], int | None]:
        """Checkpoints above tree size ``after`` (named ``field`` in errors), and the size the
        next page follows."""
        position(after, field)
        found = await self._storage.checkpoints(after, limit + 1)
        more = found[limit:] != []
        page = found[:limit]
        return page, page[-1].size if more and page else None

    async def leaf_index(self, leaf_hash: bytes) -> int:
        if len(leaf_hash) != 32:
            raise InvalidArgument([FieldViolation("leaf_hash", "must be 32 bytes")])
        index = await self._storage.index_of_leaf(leaf_hash)
        if index is None:
            raise NotFound("no entry has this leaf_hash", reason="ENTRY_NOT_FOUND")
        return index

    async def consistency(self, first: int, second: int) -> tuple[list[bytes], StoredCheckpoint]:
        position(first, "first_size")
        checkpoint = await self.at_size(second, "second_size")
        if first > checkpoint.size:
            raise InvalidArgument([FieldViolation("first_size", "must not exceed the second size")])
        if first == 0:
            return [], checkpoint  # the empty tree is a prefix of every tree
        return await self.proofs.consistency(first, checkpoint), checkpoint
