"""gRPC servicer of the ledger: converts messages to domain calls and back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import grpc
from google.protobuf.message import DecodeError

from medledger.api.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from medledger.common.channels import create_channel
from medledger.common.errors import FieldViolation, InvalidArgument, Unavailable
from medledger.common.interceptors import authenticated_principal
from medledger.common.paging import Listing, page_size
from medledger.common.policy import Scopes, ServiceAccess
from medledger.common.scopes import ADMIN, LEDGER_APPEND, LEDGER_READ
from medledger.ledger.adapters.vault_signer import VaultNoteSigner
from medledger.ledger.config import LedgerSettings
from medledger.ledger.domain.entries import (
    caller_idempotency_key,
    validate_entry,
    validate_idempotency_key,
)
from medledger.ledger.domain.log import LogReader
from medledger.ledger.domain.sequencer import NotLeader, Receipt, Sequencer

Context = grpc.aio.ServicerContext[Any, Any]
R = TypeVar("R")
APPEND = "/medledger.api.ledger.v1.LedgerService/Append"
# Entries one AppendBatch may carry: all of them go into one durable step.
MAX_BATCH_ENTRIES: Final = 1000

_SERVICE = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
_METHODS = _SERVICE.methods_by_name
# Reads too need a token: entries reveal who acted on whose record (as pseudonyms).
_READERS = Scopes(LEDGER_READ, ADMIN)
LEDGER_ACCESS: Final = ServiceAccess(
    _SERVICE,
    {
        _METHODS["Append"]: Scopes(LEDGER_APPEND),
        _METHODS["AppendBatch"]: Scopes(LEDGER_APPEND),
        _METHODS["GetCheckpoint"]: _READERS,
        _METHODS["ListCheckpoints"]: _READERS,
        _METHODS["GetEntry"]: _READERS,
        _METHODS["ListEntries"]: _READERS,
        _METHODS["GetInclusionProof"]: _READERS,
        _METHODS["GetConsistencyProof"]: _READERS,
        _METHODS["GetVerifierKey"]: _READERS,
    },
)


def _receipt(receipt: Receipt) -> ledger_pb2.Receipt:
    return ledger_pb2.Receipt(
        leaf_index=receipt.leaf_index,
        leaf_hash=receipt.leaf_hash,
        checkpoint=receipt.checkpoint,
        inclusion_proof=receipt.inclusion_proof,
    )


# Page tokens carry the next leaf index or the last tree size listed; neither listing has
# filters besides the start, which a token replaces.
ENTRIES = Listing("ledger.ListEntries")
CHECKPOINTS = Listing("ledger.ListCheckpoints")


def _next_page_token(listing: Listing, position: int | None) -> str:
    return listing.token(None if position is None else str(position))


def _decoded(data: bytes) -> ledger_pb2.LedgerEntry | None:
    """The entry, or None when the stored bytes no longer parse (damaged storage): the
    exact bytes are still returned so an auditor can see and report them."""
    entry = ledger_pb2.LedgerEntry()
    try:
        entry.ParseFromString(data)
    except DecodeError:
        return None
    return entry


def _batch_items(request: ledger_pb2.AppendBatchRequest, caller: str) -> list[tuple[bytes, str]]:
    """Each entry's canonical bytes and stored idempotency key; INVALID_ARGUMENT naming
    every bad entry as ``entries[i].…`` (the whole batch is refused: all or none)."""
    count = len(request.entries)
    if not 1 <= count <= MAX_BATCH_ENTRIES:
        raise InvalidArgument(
            [FieldViolation("entries", f"must hold 1 to {MAX_BATCH_ENTRIES} entries")]
        )
    problems: list[FieldViolation] = []
    items: list[tuple[bytes, str]] = []
    seen: set[str] = set()
    for position, item in enumerate(request.entries):
        where = f"entries[{position}]"
        try:
            if not item.HasField("entry"):
                raise InvalidArgument([FieldViolation("entry", "is required")])
            data = validate_entry(item.entry)
            validate_idempotency_key(item.idempotency_key)
        except InvalidArgument as error:
            problems += [
                FieldViolation(f"{where}.{v.field}", v.description) for v in error.violations
            ]
            continue
        if item.idempotency_key and item.idempotency_key in seen:
            problems.append(
                FieldViolation(f"{where}.idempotency_key", "repeats a key of this batch")
            )
            continue
        seen.add(item.idempotency_key)
        items.append((data, caller_idempotency_key(caller, item.idempotency_key)))
    if problems:
        raise InvalidArgument(problems)
    return items


class LedgerServiceServicer(ledger_pb2_grpc.LedgerServiceServicer):
    def __init__(
        self,
        sequencer: Sequencer,
        reader: LogReader,
        signer: VaultNoteSigner,
        settings: LedgerSettings,
    ) -> None:
        self._sequencer = sequencer
        self._reader = reader
        self._signer = signer
        self._settings = settings
        self._leader_channel: tuple[str, grpc.aio.Channel] | None = None

    async def _leader_stub(self, address: str) -> ledger_pb2_grpc.LedgerServiceAsyncStub:
        if self._leader_channel is None or self._leader_channel[0] != address:
            if self._leader_channel is not None:
                await self._leader_channel[1].close(None)
            channel = create_channel(
                address, self._settings, server_name=self._settings.sequencer_tls_name
            )
            self._leader_channel = (address, channel)
        stub: ledger_pb2_grpc.LedgerServiceAsyncStub = ledger_pb2_grpc.LedgerServiceStub(
            self._leader_channel[1]
        )
        return stub

    async def _forward(
        self,
        call: Callable[[ledger_pb2_grpc.LedgerServiceAsyncStub], Callable[..., Awaitable[R]]],
        request: Any,
        error: NotLeader,
        context: Context,
    ) -> R:
        """Another replica sequences: hand the append to it (once; it does not forward)."""
        if error.address is None or any(
            k == "x-medledger-forwarded" for k, _ in context.invocation_metadata() or ()
        ):
            raise Unavailable("ledger sequencer", reason="NO_SEQUENCER")
        method = call(await self._leader_stub(error.address))
        metadata = [("x-medledger-forwarded", "1")]
        metadata += [
            (key, value)
            for key, value in context.invocation_metadata() or ()
            if key == "authorization" and isinstance(value, str)
        ]
        try:
            return await method(request, metadata=metadata, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as exc:
            raise Unavailable("ledger sequencer", reason="SEQUENCER_UNREACHABLE") from exc

    async def Append(
        self, request: ledger_pb2.AppendRequest, context: Context
    ) -> ledger_pb2.AppendResponse:
        if not request.HasField("entry"):
            raise InvalidArgument([FieldViolation("entry", "is required")])
        data = validate_entry(request.entry)
        validate_idempotency_key(request.idempotency_key)
        # Keys are the caller's own: another holder of ledger.append who guesses one gets an
        # entry of its own, never this caller's receipt nor a refusal of this caller's retry.
        # A standby forwards the request as it came, with the caller's token: the writer
        # scopes the key the same way.
        key = caller_idempotency_key(authenticated_principal().subject, request.idempotency_key)
        try:
            receipt = await self._sequencer.append(data, key)
        except NotLeader as error:
            return await self._forward(lambda stub: stub.Append, request, error, context)
        return ledger_pb2.AppendResponse(receipt=_receipt(receipt))

    async def AppendBatch(
        self, request: ledger_pb2.AppendBatchRequest, context: Context
    ) -> ledger_pb2.AppendBatchResponse:
        items = _batch_items(request, authenticated_principal().subject)
        try:
            receipts = await self._sequencer.append_many(items)
        except NotLeader as error:
            return await self._forward(lambda stub: stub.AppendBatch, request, error, context)
        return ledger_pb2.AppendBatchResponse(receipts=[_receipt(r) for r in receipts])

    async def GetCheckpoint(
        self, request: ledger_pb2.GetCheckpointRequest, context: Context
    ) -> ledger_pb2.GetCheckpointResponse:
        latest = await self._reader.latest()
        return ledger_pb2.GetCheckpointResponse(checkpoint=latest.published)

    async def ListCheckpoints(
        self, request: ledger_pb2.ListCheckpointsRequest, context: Context
    ) -> ledger_pb2.ListCheckpointsResponse:
        after = CHECKPOINTS.int_cursor(request.page_token)
        found, following = await self._reader.checkpoints(
            request.after_size if after is None else after,
            page_size(request.page_size),
            "after_size" if after is None else "page_token",
        )
        return ledger_pb2.ListCheckpointsResponse(
            checkpoints=[
                ledger_pb2.IssuedCheckpoint(tree_size=c.size, checkpoint=c.published) for c in found
            ],
            next_page_token=_next_page_token(CHECKPOINTS, following),
        )

    async def GetEntry(
        self, request: ledger_pb2.GetEntryRequest, context: Context
    ) -> ledger_pb2.GetEntryResponse:
        data = await self._reader.entry(request.leaf_index)
        return ledger_pb2.GetEntryResponse(entry_bytes=data, entry=_decoded(data))

    async def ListEntries(
        self, request: ledger_pb2.ListEntriesRequest, context: Context
    ) -> ledger_pb2.ListEntriesResponse:
        start = ENTRIES.int_cursor(request.page_token)
        found, following = await self._reader.entries(
            request.start_index if start is None else start,
            page_size(request.page_size),
            "start_index" if start is None else "page_token",
        )
        return ledger_pb2.ListEntriesResponse(
            entries=[
                ledger_pb2.IndexedEntry(leaf_index=i, entry_bytes=data, entry=_decoded(data))
                for i, data in found
            ],
            next_page_token=_next_page_token(ENTRIES, following),
        )

    async def GetInclusionProof(
        self, request: ledger_pb2.GetInclusionProofRequest, context: Context
    ) -> ledger_pb2.GetInclusionProofResponse:
        if request.WhichOneof("leaf") == "leaf_hash":
            index = await self._reader.leaf_index(request.leaf_hash)
        elif request.WhichOneof("leaf") == "leaf_index":
            index = request.leaf_index
        else:
            raise InvalidArgument([FieldViolation("leaf", "leaf_index or leaf_hash is required")])
        checkpoint = await self._reader.at_size(request.tree_size, "tree_size")
        (proof,) = await self._reader.proofs.inclusion([index], checkpoint)
        return ledger_pb2.GetInclusionProofResponse(
            leaf_index=index,
            tree_size=checkpoint.size,
            hashes=proof,
            checkpoint=checkpoint.published,
        )

    async def GetConsistencyProof(
        self, request: ledger_pb2.GetConsistencyProofRequest, context: Context
    ) -> ledger_pb2.GetConsistencyProofResponse:
        proof, checkpoint = await self._reader.consistency(request.first_size, request.second_size)
        return ledger_pb2.GetConsistencyProofResponse(hashes=proof, checkpoint=checkpoint.published)

    async def GetVerifierKey(
        self, request: ledger_pb2.GetVerifierKeyRequest, context: Context
    ) -> ledger_pb2.GetVerifierKeyResponse:
        current, *previous = await self._signer.verifier_keys()
        return ledger_pb2.GetVerifierKeyResponse(vkey=current, previous_vkeys=previous)
