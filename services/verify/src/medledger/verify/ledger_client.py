"""A client of the ledger's read API for verifiers: paged walks, proofs, and one error type.

It checks what the ledger's API promises (pages in order, proofs for the leaf and size asked
for) and raises errors that carry the evidence. The caller opens the channel (TLS, tokens).

Pages are yielded one at a time, so walking a log of any size holds one page in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import grpc

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc

T = TypeVar("T")

MAX_PAGE_SIZE = 1000
"""The most the ledger returns per List call (its own limit)."""


class LedgerCallFailed(Exception):
    """An RPC to the ledger failed; the message names the call and the gRPC status.

    ``error`` is the gRPC error itself, so a caller can decode its rich status details.
    """

    def __init__(self, call: str, error: grpc.aio.AioRpcError) -> None:
        details = error.details() or "no details"
        super().__init__(f"{call} failed: {error.code().name}: {details}")
        self.call = call
        self.code = error.code()
        self.error = error


class LedgerProtocolError(Exception):
    """The ledger answered something its API does not allow (pages out of order, ...)."""


class EntryUnreadable(LedgerProtocolError):
    """The ledger fails to serve one leaf's entry (typically: its stored bytes are corrupt)."""

    def __init__(self, index: int, error: LedgerCallFailed) -> None:
        super().__init__(
            f"leaf {index}: the ledger cannot serve its entry ({error}); its stored bytes may "
            "be corrupt"
        )
        self.index = index


# Codes that mean "the server broke on this data", not "try again" or "not allowed".
_SERVER_FAULTS = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
)


class LedgerApi:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        page_size: int = MAX_PAGE_SIZE,
    ) -> None:
        self._stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
            channel
        )
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._timeout = timeout
        self._page_size = page_size

    async def _call(self, call: str, pending: Awaitable[T]) -> T:
        try:
            return await pending
        except grpc.aio.AioRpcError as error:
            raise LedgerCallFailed(call, error) from None

    async def checkpoint(self) -> bytes:
        """The latest checkpoint note, as the ledger publishes it."""
        reply = await self._call(
            "GetCheckpoint",
            self._stub.GetCheckpoint(
                ledger_pb2.GetCheckpointRequest(), metadata=self._metadata, timeout=self._timeout
            ),
        )
        return reply.checkpoint

    async def verifier_keys(self) -> list[str]:
        """The log's current verifier key, then the ones before rotations."""
        reply = await self._call(
            "GetVerifierKey",
            self._stub.GetVerifierKey(
                ledger_pb2.GetVerifierKeyRequest(), metadata=self._metadata, timeout=self._timeout
            ),
        )
        return [reply.vkey, *reply.previous_vkeys]

    async def entry(self, index: int) -> bytes:
        """The exact bytes of leaf ``index``."""
        reply = await self._call(
            f"GetEntry(leaf_index={index})",
            self._stub.GetEntry(
                ledger_pb2.GetEntryRequest(leaf_index=index),
                metadata=self._metadata,
                timeout=self._timeout,
            ),
        )
        return reply.entry_bytes

    async def entries(self, start: int, end: int) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Pages of ``(leaf index, entry bytes)`` for leaves ``start..end-1``, in order.

        Raises ``LedgerProtocolError`` if the ledger skips, repeats or reorders a leaf, and
        stops early only when the ledger has no more (the caller checks where it stopped).
        """
        expected = start
        request = ledger_pb2.ListEntriesRequest(start_index=start, page_size=self._page_size)
        while expected < end:
            try:
                reply = await self._call(
                    f"ListEntries(from leaf {expected})",
                    self._stub.ListEntries(request, metadata=self._metadata, timeout=self._timeout),
                )
            except LedgerCallFailed as error:
                if error.code not in _SERVER_FAULTS:
                    raise
                # One bad leaf fails its whole page: read the page leaf by leaf to name it.
                last = min(end, expected + self._page_size)
                yield await self._entries_one_by_one(expected, last)
                expected = last
                request = ledger_pb2.ListEntriesRequest(
                    start_index=expected, page_size=self._page_size
                )
                continue
            page: list[tuple[int, bytes]] = []
            for item in reply.entries:
                if item.leaf_index >= end:
                    break
                if item.leaf_index != expected:
                    raise LedgerProtocolError(
                        f"leaf {expected} is missing: ListEntries returned leaf "
                        f"{item.leaf_index} after leaf {expected - 1}"
                    )
                page.append((item.leaf_index, item.entry_bytes))
                expected += 1
            if page:
                yield page
            if not reply.next_page_token or not reply.entries:
                return
            request = ledger_pb2.ListEntriesRequest(
                page_token=reply.next_page_token, page_size=self._page_size
            )

    async def _entries_one_by_one(self, start: int, end: int) -> list[tuple[int, bytes]]:
        page = []
        for index in range(start, end):
            try:
                page.append((index, await self.entry(index)))
            except LedgerCallFailed as error:
                raise EntryUnreadable(index, error) from None
        return page

    async def checkpoints(self, last: int) -> AsyncIterator[ledger_pb2.IssuedCheckpoint]:
        """Every issued checkpoint up to tree size ``last``, by strictly increasing size."""
        previous = 0
        request = ledger_pb2.ListCheckpointsRequest(after_size=0, page_size=self._page_size)
        while True:
            reply = await self._call(
                f"ListCheckpoints(after size {previous})",
                self._stub.ListCheckpoints(request, metadata=self._metadata, timeout=self._timeout),
            )
            for issued in reply.checkpoints:
                if issued.tree_size > last:
                    return
                if issued.tree_size <= previous:
                    raise LedgerProtocolError(
                        f"ListCheckpoints returned size {issued.tree_size} after size {previous}"
                    )
                previous = issued.tree_size
                yield issued
            if not reply.next_page_token or not reply.checkpoints:
                return
            request = ledger_pb2.ListCheckpointsRequest(
                page_token=reply.next_page_token, page_size=self._page_size
            )

    async def inclusion_proof(
        self, index: int, size: int = 0
    ) -> ledger_pb2.GetInclusionProofResponse:
        """Proof of leaf ``index`` in the tree of ``size`` (0: the latest), with its checkpoint.

        Raises ``LedgerProtocolError`` if the answer is for another leaf or size.
        """
        call = f"GetInclusionProof(leaf {index}, tree size {size or 'latest'})"
        reply = await self._call(
            call,
            self._stub.GetInclusionProof(
                ledger_pb2.GetInclusionProofRequest(leaf_index=index, tree_size=size),
                metadata=self._metadata,
                timeout=self._timeout,
            ),
        )
        if reply.leaf_index != index or (size and reply.tree_size != size):
            raise LedgerProtocolError(
                f"{call} answered for leaf {reply.leaf_index}, tree size {reply.tree_size}"
            )
        return reply

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """The ledger's consistency proof from tree size ``first`` to ``second``."""
        reply = await self._call(
            f"GetConsistencyProof({first} -> {second})",
            self._stub.GetConsistencyProof(
                ledger_pb2.GetConsistencyProofRequest(first_size=first, second_size=second),
                metadata=self._metadata,
                timeout=self._timeout,
            ),
        )
        return list(reply.hashes)
