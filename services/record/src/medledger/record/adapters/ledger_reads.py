"""Reads from the ledger (the ``LedgerReads`` port): the exact bytes of leaves, proofs
against the latest checkpoint, and a leaf's index from its hash.

Called with the record service's own token (``ledger.read``). Whatever keeps the ledger
from answering, or refuses this service's credentials, is UNAVAILABLE: an export, an access
log or an audit fails closed rather than answering with less than it should.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Final, TypeVar

import grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.config import ServiceSettings
from medledger.common.errors import Unavailable
from medledger.common.ledger_client import TokenSource
from medledger.verify.access_report import border_from_last_leaf

DEPENDENCY: Final = "ledger"
# Reads one export or page of an access log makes at once.
READS_AT_ONCE: Final = 16
# Pages of 1,000 checkpoints an export looks through for the best-cosigned one.
CHECKPOINT_PAGES: Final = 4
# Leaves per ListEntries page (the ledger's most).
LEAVES_PER_PAGE: Final = 1000
# A signature line of a C2SP signed note: an em dash, a space, the key name.
_SIGNATURE_LINE: Final = "\u2014 ".encode()
T = TypeVar("T")


class GrpcLedgerReads:
    def __init__(
        self,
        address: str,
        settings: ServiceSettings,
        token: TokenSource,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._channel = create_channel(address, settings)
        self._stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
            self._channel
        )
        self._token = token
        self._timeout = timeout
        self._limit = asyncio.Semaphore(READS_AT_ONCE)

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            raise Unavailable(DEPENDENCY, reason=_reason(error)) from error

    async def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {await self._token()}")]

    async def _entry(self, leaf_index: int) -> bytes:
        async with self._limit:
            reply = await self._call(
                self._stub.GetEntry(
                    ledger_pb2.GetEntryRequest(leaf_index=leaf_index),
                    metadata=await self._metadata(),
                    timeout=self._timeout,
                )
            )
        return reply.entry_bytes

    async def entries(self, leaf_indexes: Sequence[int]) -> dict[int, bytes]:
        wanted = sorted(set(leaf_indexes))
        found = await asyncio.gather(*(self._entry(index) for index in wanted))
        return dict(zip(wanted, found, strict=True))

    async def refreshed(self, receipts: Sequence[bytes]) -> list[bytes]:
        old = [ledger_pb2.Receipt.FromString(r) for r in receipts]
        if not old:
            return []
        size, checkpoint = await self._best_checkpoint(max(r.leaf_index for r in old) + 1)

        async def proven(receipt: ledger_pb2.Receipt) -> bytes:
            async with self._limit:
                reply = await self._call(
                    self._stub.GetInclusionProof(
                        ledger_pb2.GetInclusionProofRequest(
                            leaf_index=receipt.leaf_index, tree_size=size
                        ),
                        metadata=await self._metadata(),
                        timeout=self._timeout,
                    )
                )
            return ledger_pb2.Receipt(
                leaf_index=reply.leaf_index,
                leaf_hash=receipt.leaf_hash,
                checkpoint=checkpoint,
                inclusion_proof=list(reply.hashes),
            ).SerializeToString()

        return list(await asyncio.gather(*(proven(r) for r in old)))

    async def _best_checkpoint(self, least_size: int) -> tuple[int, bytes]:
        """Of the checkpoints of at least ``least_size`` leaves, the one with the most
        signatures (the log's and the witnesses'), the newest among equals; looks at
        :data:`CHECKPOINT_PAGES` pages of them at most, then takes the latest."""
        best: tuple[int, int, bytes] | None = None
        token = ""
        for _ in range(CHECKPOINT_PAGES):
            reply = await self._call(
                self._stub.ListCheckpoints(
                    ledger_pb2.ListCheckpointsRequest(
                        after_size=least_size - 1, page_size=1000, page_token=token
                    ),
                    metadata=await self._metadata(),
                    timeout=self._timeout,
                )
            )
            for issued in reply.checkpoints:
                ranked = (_signatures(issued.checkpoint), int(issued.tree_size), issued.checkpoint)
                if best is None or ranked[:2] >= best[:2]:
                    best = ranked
            token = reply.next_page_token
            if not token:
                break
        if best is None:
            latest = await self._latest()
            return _size(latest), latest
        return best[1], best[2]

    async def _latest(self) -> bytes:
        reply = await self._call(
            self._stub.GetCheckpoint(
                ledger_pb2.GetCheckpointRequest(),
                metadata=await self._metadata(),
                timeout=self._timeout,
            )
        )
        return reply.checkpoint

    async def report_checkpoint(self, least_size: int, recent: int) -> tuple[int, bytes]:
        latest = _size(await self._latest())
        return await self._best_checkpoint(max(least_size, latest - recent, 1))

    async def checkpoint_of_size(self, size: int) -> bytes | None:
        reply = await self._call(
            self._stub.ListCheckpoints(
                ledger_pb2.ListCheckpointsRequest(after_size=size - 1, page_size=1),
                metadata=await self._metadata(),
                timeout=self._timeout,
            )
        )
        for issued in reply.checkpoints:
            if issued.tree_size == size:
                return issued.checkpoint
        return None

    async def border(self, size: int) -> list[bytes]:
        # The audit path of the last leaf holds every other border node: RFC 9162 places the
        # largest perfect subtrees first, so the last leaf's path climbs the right edge.
        last = size - 1
        async with self._limit:
            proof = await self._call(
                self._stub.GetInclusionProof(
                    ledger_pb2.GetInclusionProofRequest(leaf_index=last, tree_size=size),
                    metadata=await self._metadata(),
                    timeout=self._timeout,
                )
            )
        entry = (await self.entries([last]))[last]
        return border_from_last_leaf(size, entry, list(proof.hashes))

    async def leaves(self, start: int, end: int) -> AsyncIterator[Sequence[bytes]]:
        index = start
        while index < end:
            reply = await self._call(
                self._stub.ListEntries(
                    ledger_pb2.ListEntriesRequest(
                        start_index=index, page_size=min(LEAVES_PER_PAGE, end - index)
                    ),
                    metadata=await self._metadata(),
                    timeout=self._timeout,
                )
            )
            page = [found.entry_bytes for found in reply.entries if found.leaf_index < end]
            if not page or reply.entries[0].leaf_index != index:
                # The ledger holds fewer leaves than its checkpoint says: it cannot answer.
                raise Unavailable(DEPENDENCY, reason="LEDGER_INCOMPLETE")
            yield page
            index += len(page)

    async def leaf_index(self, leaf_hash: bytes) -> int | None:
        async with self._limit:
            try:
                reply = await self._stub.GetInclusionProof(
                    ledger_pb2.GetInclusionProofRequest(leaf_hash=leaf_hash),
                    metadata=await self._metadata(),
                    timeout=self._timeout,
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND:
                    return None
                raise Unavailable(DEPENDENCY, reason=_reason(error)) from error
        return int(reply.leaf_index)

    async def aclose(self) -> None:
        await self._channel.close(None)


def _reason(error: grpc.aio.AioRpcError) -> str | None:
    if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return "LEDGER_REFUSED"
    return None


def _signatures(note: bytes) -> int:
    """How many signature lines a signed note carries (the log's, then each witness's)."""
    _, _, signatures = note.partition(b"\n\n")
    return sum(1 for line in signatures.split(b"\n") if line.startswith(_SIGNATURE_LINE))


def _size(note: bytes) -> int:
    """A checkpoint's tree size: the second line of its body."""
    return int(note.split(b"\n")[1])
