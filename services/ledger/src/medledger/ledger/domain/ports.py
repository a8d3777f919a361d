"""What the ledger's logic needs from storage, as plain data and one protocol.

The Mongo adapter implements :class:`LedgerStorage`; the domain never sees a driver.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

TileId = tuple[int, int]  # (tile level, tile index)


class Fenced(Exception):
    """This writer's lease was taken over: it must not write."""


class SizeConflict(Exception):
    """The stored tree is not the size this writer started from: nothing was written."""


@dataclass(frozen=True)
class StoredCheckpoint:
    """A checkpoint the log issued, with the border of its tree (the hashes of
    ``root_nodes(size)``) so proofs against it need no extra read for the right edge."""

    size: int
    root: bytes
    note: bytes
    border: tuple[bytes, ...]
    cosigned: bytes | None = None

    @property
    def published(self) -> bytes:
        """The checkpoint with every witness cosignature gathered so far."""
        return self.cosigned or self.note


@dataclass(frozen=True)
class Lease:
    owner: str
    token: int
    expires: datetime
    address: str


@dataclass(frozen=True)
class PendingEntry:
    data: bytes
    leaf_hash: bytes
    idempotency_key: str


@dataclass(frozen=True)
class Batch:
    """What one durable step writes: leaves from ``first_index``, tiles, the tree's new
    ``root``, and its checkpoint, which may still be being signed when the step starts
    (``signed``: the storage awaits it after its other writes, inside the step, so the
    signature and the writes overlap; a signing that fails fails the step)."""

    first_index: int
    entries: Sequence[PendingEntry]
    tiles: dict[TileId, bytes]
    root: bytes
    signed: asyncio.Future[StoredCheckpoint]

    @property
    def new_size(self) -> int:
        return self.first_index + len(self.entries)


class LedgerStorage(Protocol):
    async def tree_size(self) -> int: ...

    async def latest_checkpoint(self) -> StoredCheckpoint | None: ...

    async def checkpoint(self, size: int) -> StoredCheckpoint | None: ...

    async def checkpoints(self, after: int, limit: int) -> list[StoredCheckpoint]: ...

    async def read_tiles(self, tiles: Iterable[TileId]) -> dict[TileId, bytes]: ...

    async def entry(self, index: int) -> bytes | None: ...

    async def entries(self, start: int, limit: int) -> list[tuple[int, bytes]]: ...

    async def index_of_leaf(self, leaf_hash: bytes) -> int | None: ...

    async def idempotent_indices(self, keys: Iterable[str]) -> dict[str, int]: ...

    async def commit(self, batch: Batch, *, token: int) -> None: ...

    async def store_cosigned(self, size: int, note: bytes) -> None: ...

    async def acquire_lease(self, owner: str, address: str, ttl: timedelta) -> Lease | None: ...

    async def current_lease(self) -> Lease | None: ...

    async def release_lease(self, owner: str) -> None: ...
