"""The sequencer: batches appends and integrates each batch in ONE durable step.

Exactly one replica sequences at a time. It holds a lease in storage whose fencing token
every commit re-checks inside its transaction, so a paused or partitioned ex-leader can
never write. A batch's leaves, the tiles they complete, and the signed checkpoint of the
new tree are committed together; only then are the waiters answered, each with a receipt
(index, leaf hash, checkpoint, inclusion proof). If anything fails before the commit
(Vault down, Mongo down, lease lost), nothing of the batch is written and every waiter
gets a retryable error; an idempotency key makes the retry safe.

A bulk append (:meth:`Sequencer.append_many`) queues its entries as one group, which is
never split across batches: they share one commit and one checkpoint, all or none.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext

from medledger.common.errors import FailedPrecondition, MedledgerError, Unavailable
from medledger.common.metric_catalog import LEDGER_APPEND_DURATION, LEDGER_BATCH_SIZE
from medledger.common.metrics import elapsed_ms, histogram
from medledger.ledger.domain.ports import (
    Batch,
    Fenced,
    LedgerStorage,
    PendingEntry,
    SizeConflict,
    StoredCheckpoint,
    TileId,
)
from medledger.ledger.domain.proofs import ProofReader
from medledger.tlog.checkpoint import Checkpoint
from medledger.tlog.compact import CompactRange
from medledger.tlog.hashing import HASH_SIZE, leaf_hash
from medledger.tlog.note import NoteSigner, sign_note
from medledger.tlog.tiles import TILE_HEIGHT, TILE_WIDTH

log = logging.getLogger("medledger.ledger.sequencer")
_tracer = trace.get_tracer("medledger.ledger.sequencer")
_append_duration = histogram(LEDGER_APPEND_DURATION)
_batch_size = histogram(LEDGER_BATCH_SIZE)


def _caller_span() -> SpanContext:
    return trace.get_current_span().get_span_context()


@dataclass(frozen=True)
class Receipt:
    leaf_index: int
    leaf_hash: bytes
    checkpoint: bytes
    inclusion_proof: list[bytes]


class NotLeader(Exception):
    """This replica does not hold the writer lease; ``address`` is the leader's, if known."""

    def __init__(self, address: str | None) -> None:
        super().__init__("not the sequencer")
        self.address = address


class CheckpointPublisher(Protocol):
    """Sends each new checkpoint to the witnesses (in the background)."""

    def publish(self, checkpoint: StoredCheckpoint) -> None: ...


@dataclass
class _Waiter:
    data: bytes
    leaf_hash: bytes
    key: str
    future: asyncio.Future[Receipt] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # The appending call's span: the batch that integrates the entry is traced under it.
    caller: SpanContext = field(default_factory=_caller_span)


@dataclass
class _TreeState:
    compact: CompactRange
    edge_tiles: dict[TileId, bytes]  # the rightmost tile of each tile level
    checkpoint: StoredCheckpoint
    committed: bool = True  # False only for a new log's first, empty checkpoint


def _key_reused() -> FailedPrecondition:
    return FailedPrecondition(
        "idempotency key was used for a different entry", reason="IDEMPOTENCY_KEY_REUSED"
    )


def _partition(
    waiters: Sequence[_Waiter], existing: dict[str, int]
) -> tuple[list[_Waiter], list[tuple[_Waiter, _Waiter]]]:
    """Splits a batch into new leaves and repeats of a key seen earlier in the batch
    (paired with that first waiter); keys already stored are neither."""
    fresh: list[_Waiter] = []
    first_with_key: dict[str, _Waiter] = {}
    repeats: list[tuple[_Waiter, _Waiter]] = []
    for waiter in waiters:
        if waiter.key in existing:
            continue
        if waiter.key in first_with_key:
            repeats.append((waiter, first_with_key[waiter.key]))
            continue
        if waiter.key:
            first_with_key[waiter.key] = waiter
        fresh.append(waiter)
    return fresh, repeats


def _resolve(waiter: _Waiter, receipt: Receipt) -> None:
    """Answers a waiter once (one stopped meanwhile keeps its first answer)."""
    if not waiter.future.done():
        waiter.future.set_result(receipt)


def _settle(signing: asyncio.Future[StoredCheckpoint]) -> None:
    """A signing the step no longer waits for is stopped, and its outcome marked seen (a
    failed one is the step's failure, already raised)."""
    if not signing.done():
        signing.cancel()
    elif not signing.cancelled():
        signing.exception()


def _fail(waiter: _Waiter, error: BaseException) -> None:
    if not waiter.future.done():
        waiter.future.set_exception(error)


@dataclass(frozen=True)
class SequencerConfig:
    origin: str
    owner: str
    address: str
    batch_size: int = 256
    batch_delay: float = 0.0
    lease_ttl: float = 10.0


class Sequencer:
    def __init__(
        self,
        storage: LedgerStorage,
        signer: NoteSigner,
        config: SequencerConfig,
        publisher: CheckpointPublisher | None = None,
        on_checkpoint: Callable[[StoredCheckpoint], None] | None = None,
    ) -> None:
        self._storage = storage
        self._signer = signer
        self._config = config
        self._publisher = publisher
        self._on_checkpoint = on_checkpoint
        self._proofs = ProofReader(storage)
        # Each item is a group of waiters integrated in the same batch (one for Append).
        self._queue: asyncio.Queue[list[_Waiter]] = asyncio.Queue()
        self._state: _TreeState | None = None
        self._token: int | None = None
        self._leader_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._leader_event = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._hold_lease(), name="ledger-lease"),
            asyncio.create_task(self._run(), name="ledger-sequencer"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():
            for waiter in self._queue.get_nowait():
                _fail(waiter, Unavailable("ledger sequencer"))
        if self._token is not None:
            with contextlib.suppress(MedledgerError):
                await self._storage.release_lease(self._config.owner)
        self._token = None

    @property
    def is_leader(self) -> bool:
        return self._token is not None and time.monotonic() < self._leader_until

    async def wait_until_leader(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._leader_event.wait(), within)
        return self.is_leader

    async def _hold_lease(self) -> None:
        ttl = self._config.lease_ttl
        while True:
            started = time.monotonic()
            try:
                lease = await self._storage.acquire_lease(
                    self._config.owner, self._config.address, timedelta(seconds=ttl)
                )
            except MedledgerError:
                lease = None
            if lease is None:
                if self._token is not None:
                    log.warning("lost the sequencer lease")
                self._token = None
                self._leader_event.clear()
            else:
                if lease.token != self._token:
                    log.info("holding the sequencer lease", extra={"token": lease.token})
                    self._state = None  # another writer may have written: reload
                self._token = lease.token
                # Trust the lease for less than its TTL, measured from before the request.
                self._leader_until = started + ttl * 0.8
                self._leader_event.set()
            await asyncio.sleep(ttl / 4)

    # -- appends -----------------------------------------------------------------------

    async def append(self, data: bytes, idempotency_key: str) -> Receipt:
        """Integrates ``data`` (canonical entry bytes) and returns its receipt."""
        (receipt,) = await self.append_many([(data, idempotency_key)])
        return receipt

    async def append_many(self, items: Sequence[tuple[bytes, str]]) -> list[Receipt]:
        """Integrates every ``(data, idempotency_key)`` in the same batch, hence the same
        durable step, and returns their receipts in order. Entries whose key was stored
        before get that first receipt (a retried bulk append adds nothing); a key stored
        for other bytes fails the whole call before anything is queued.

        Timed as medledger.ledger.append.duration, except when another replica sequences
        (the append is handed to it, which times it)."""
        started = time.perf_counter()
        outcome = "error"
        try:
            receipts = await self._append_many(items)
            outcome = "ok"
            return receipts
        except NotLeader:
            outcome = ""
            raise
        finally:
            if outcome:
                _append_duration.record(elapsed_ms(started), {"outcome": outcome})

    async def _append_many(self, items: Sequence[tuple[bytes, str]]) -> list[Receipt]:
        waiters = [_Waiter(data, leaf_hash(data), key) for data, key in items]
        keys = [w.key for w in waiters if w.key]
        existing = await self._storage.idempotent_indices(keys) if keys else {}
        known = {
            w.key: await self._existing_receipt(existing[w.key], w.leaf_hash)
            for w in waiters
            if w.key in existing
        }
        if len(known) == len(waiters):
            return [known[w.key] for w in waiters]
        if not self.is_leader:
            lease = await self._storage.current_lease()
            raise NotLeader(lease.address if lease else None)
        await self._queue.put(waiters)
        # Shielded: a caller that gives up (its deadline) must not cancel the futures the
        # batch resolves; the entries may be integrated all the same.
        outcomes = await asyncio.shield(
            asyncio.gather(*(w.future for w in waiters), return_exceptions=True)
        )
        receipts: list[Receipt] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            receipts.append(outcome)
        return receipts

    async def _existing_receipt(self, index: int, digest: bytes) -> Receipt:
        """The receipt an earlier append with the same idempotency key got."""
        stored = await self._storage.entry(index)
        if stored is None or leaf_hash(stored) != digest:
            raise _key_reused()
        # The checkpoint that first included the leaf: the smallest one above its index.
        (checkpoint,) = await self._storage.checkpoints(after=index, limit=1)
        (proof,) = await self._proofs.inclusion([index], checkpoint)
        return Receipt(index, digest, checkpoint.note, proof)

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=0.5)
            except TimeoutError:
                await self._prepare()
                continue
            if self._config.batch_delay:
                await asyncio.sleep(self._config.batch_delay)
            # Whole groups only: a bulk append is never split, so a batch may pass
            # batch_size by at most one group.
            batch = list(first)
            while len(batch) < self._config.batch_size and not self._queue.empty():
                batch.extend(self._queue.get_nowait())
            await self._integrate(batch)

    async def _prepare(self) -> None:
        """While idle and leading: load the tree, and give a new log its empty checkpoint
        so GetCheckpoint answers before the first append."""
        if not self.is_leader or (self._state is not None and self._state.committed):
            return
        try:
            await self._integrate_or_raise([])
        except Exception as exc:
            self._state = None
            if isinstance(exc, (Fenced, SizeConflict)):
                self._token = None
                self._leader_event.clear()
            elif not isinstance(exc, MedledgerError):
                log.exception("cannot prepare the tree")

    async def _load_state(self) -> _TreeState:
        if self._state is not None:
            return self._state
        size = await self._storage.tree_size()
        latest = await self._storage.latest_checkpoint()
        if latest is None:
            if size:
                raise FailedPrecondition("stored tree has no checkpoint", reason="NO_CHECKPOINT")
            self._state = _TreeState(CompactRange(), {}, await self._sign(CompactRange()), False)
            return self._state
        if latest.size != size:
            raise FailedPrecondition("stored tree and checkpoint disagree", reason="CORRUPT_STATE")
        partial = []
        for tile_level in range(64):
            row = size >> (tile_level * TILE_HEIGHT)
            if not row:
                break
            if row % TILE_WIDTH:
                partial.append((tile_level, row // TILE_WIDTH))
        edge = await self._storage.read_tiles(partial)
        self._state = _TreeState(CompactRange.from_border(size, latest.border), edge, latest)
        return self._state

    async def _sign(self, compact: CompactRange) -> StoredCheckpoint:
        root = compact.root()
        body = Checkpoint(self._config.origin, compact.size, root).body()
        note = await sign_note(body, [self._signer])
        return StoredCheckpoint(compact.size, root, note, compact.hashes)

    async def _integrate(self, waiters: Sequence[_Waiter]) -> None:
        """One durable step, traced as a child of the first appending call's span and linked
        to the others' (a batch serves several traces; the first one's shows it whole, with
        the witnesses' cosigning of the checkpoint it makes)."""
        distinct = {(w.caller.trace_id, w.caller.span_id): w.caller for w in waiters}
        callers = [caller for caller in distinct.values() if caller.is_valid]
        parent = trace.set_span_in_context(NonRecordingSpan(callers[0])) if callers else None
        with _tracer.start_as_current_span(
            "ledger.sequencer.integrate",
            context=parent,
            links=[Link(caller) for caller in callers[1:]],
            attributes={"medledger.ledger.batch.entries": len(waiters)},
        ):
            await self._integrate_traced(waiters)

    async def _integrate_traced(self, waiters: Sequence[_Waiter]) -> None:
        try:
            await self._integrate_or_raise(waiters)
        except Exception as exc:
            self._state = None  # the outcome may be unknown: reload before the next batch
            if isinstance(exc, (Fenced, SizeConflict)):
                self._token = None
                self._leader_event.clear()
                exc = Unavailable("ledger sequencer", reason="SEQUENCER_CHANGED")
            for waiter in waiters:
                _fail(waiter, exc)
            if not isinstance(exc, MedledgerError):
                log.exception("batch failed")

    async def _integrate_or_raise(self, waiters: Sequence[_Waiter]) -> None:
        if not self.is_leader:
            raise Fenced
        state = await self._load_state()
        existing = await self._storage.idempotent_indices(w.key for w in waiters if w.key)
        fresh, repeats = _partition(waiters, existing)
        if fresh or not state.committed:
            await self._commit(state, fresh)
        for waiter in waiters:
            if waiter.key in existing and not waiter.future.done():
                try:
                    receipt = await self._existing_receipt(existing[waiter.key], waiter.leaf_hash)
                    _resolve(waiter, receipt)
                except MedledgerError as exc:
                    _fail(waiter, exc)
        for waiter, original in repeats:
            if original.leaf_hash == waiter.leaf_hash:
                _resolve(waiter, original.future.result())
            else:
                _fail(waiter, _key_reused())

    async def _commit(self, state: _TreeState, fresh: Sequence[_Waiter]) -> None:
        compact = state.compact.copy()
        first_index = compact.size
        touched: dict[TileId, bytes] = {}

        def on_node(level: int, index: int, digest: bytes) -> None:
            if level % TILE_HEIGHT:
                return
            tile = (level // TILE_HEIGHT, index // TILE_WIDTH)
            row = touched.get(tile, state.edge_tiles.get(tile, b""))
            if len(row) != (index % TILE_WIDTH) * HASH_SIZE:
                raise FailedPrecondition("tile out of step", reason="CORRUPT_STATE")
            touched[tile] = row + digest

        for waiter in fresh:
            compact.append(waiter.leaf_hash, on_node)
        # Vault signs the checkpoint while the storage writes the leaves and tiles.
        signing = asyncio.ensure_future(self._sign(compact))
        entries = [PendingEntry(w.data, w.leaf_hash, w.key) for w in fresh]
        assert self._token is not None
        try:
            await self._storage.commit(
                Batch(first_index, entries, touched, compact.root(), signing), token=self._token
            )
        finally:
            _settle(signing)
        checkpoint = signing.result()
        if fresh:
            _batch_size.record(len(fresh))
        edge = dict(state.edge_tiles)
        edge.update(touched)
        rightmost: dict[int, int] = {}
        for level, index in edge:
            rightmost[level] = max(rightmost.get(level, -1), index)
        self._state = _TreeState(
            compact,
            {tile: row for tile, row in edge.items() if rightmost[tile[0]] == tile[1]},
            checkpoint,
        )
        if self._on_checkpoint is not None:
            self._on_checkpoint(checkpoint)
        if fresh:
            indices = [first_index + offset for offset in range(len(fresh))]
            held = {**state.edge_tiles, **touched}  # the right edge is in memory: no read
            proofs = await self._proofs.inclusion(indices, checkpoint, held)
            for waiter, index, proof in zip(fresh, indices, proofs, strict=True):
                _resolve(waiter, Receipt(index, waiter.leaf_hash, checkpoint.note, proof))
        if self._publisher is not None:
            self._publisher.publish(checkpoint)
