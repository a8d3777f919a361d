"""C2SP tlog-witness, add-checkpoint: cosign a checkpoint only if it extends what we cosigned.

A cosignature from this witness means exactly: at the stated time, the witness had seen an
append-only sequence of checkpoints for that origin ending at this size and root. The state it
keeps per log (size, root) is therefore the whole guarantee: it is advanced with a
compare-and-set before the cosignature is returned, so two requests racing from the same state
cannot both be cosigned.

Refusals, in the order they are checked (the gRPC codes follow the contract):

- the note or the proof is malformed → INVALID_ARGUMENT (``MALFORMED_CHECKPOINT``,
  ``MALFORMED_PROOF``);
- the origin is not a log we follow → NOT_FOUND (``UNKNOWN_LOG``);
- no valid signature by that log's key, or an invalid one → PERMISSION_DENIED
  (``LOG_SIGNATURE_INVALID``);
- old_size is larger than the checkpoint's size while it is not the size we hold: the request
  contradicts itself → INVALID_ARGUMENT (``OLD_SIZE_TOO_LARGE``);
- old_size is not the size we last cosigned → FAILED_PRECONDITION ``OLD_SIZE_MISMATCH``, with our
  size in the ErrorInfo metadata ``witness_size`` so the log can retry from it;
- the checkpoint is smaller than what we hold → FAILED_PRECONDITION ``ROLLBACK``;
- same size, different root → FAILED_PRECONDITION ``FORK``;
- the consistency proof does not lead from our (size, root) to the new one →
  FAILED_PRECONDITION ``INCONSISTENT``.

Vault or MongoDB down → UNAVAILABLE, and the state is left as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from medledger.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from medledger.tlog import (
    EMPTY_ROOT,
    HASH_SIZE,
    Checkpoint,
    CheckpointError,
    NoteError,
    ProofError,
    parse_note,
    verify_consistency,
)
from medledger.witness.domain.ports import CheckpointCosigner, LogState, LogStates
from medledger.witness.domain.trusted_logs import TrustedLogs

# A consistency proof between 64-bit tree sizes has fewer hashes than this.
MAX_PROOF_HASHES = 128
# Sizes are stored as MongoDB int64; a log of 2**63 entries is out of reach anyway.
MAX_TREE_SIZE = (1 << 63) - 1

WITNESS_SIZE = "witness_size"


@dataclass(frozen=True)
class WitnessInfo:
    name: str
    vkey: str
    logs: tuple[LogState, ...]


def _state_error(message: str, reason: str, held: LogState) -> FailedPrecondition:
    return FailedPrecondition(message, reason=reason, metadata={WITNESS_SIZE: str(held.size)})


def _check_proof(proof: Sequence[bytes]) -> None:
    if len(proof) > MAX_PROOF_HASHES:
        raise InvalidArgument(
            [FieldViolation("consistency_proof", f"has more than {MAX_PROOF_HASHES} hashes")],
            reason="MALFORMED_PROOF",
        )
    if any(len(node) != HASH_SIZE for node in proof):
        raise InvalidArgument(
            [FieldViolation("consistency_proof", f"every hash must be {HASH_SIZE} bytes")],
            reason="MALFORMED_PROOF",
        )


def _parse_checkpoint(note: bytes) -> Checkpoint:
    try:
        checkpoint = Checkpoint.parse(parse_note(note).text)
    except (NoteError, CheckpointError) as error:
        raise InvalidArgument(
            [FieldViolation("checkpoint", "must be a C2SP signed note holding a checkpoint")],
            reason="MALFORMED_CHECKPOINT",
        ) from error
    if checkpoint.size > MAX_TREE_SIZE:
        raise InvalidArgument(
            [FieldViolation("checkpoint", f"tree size must be at most {MAX_TREE_SIZE}")],
            reason="MALFORMED_CHECKPOINT",
        )
    return checkpoint


def _check_extends(old_size: int, proof: Sequence[bytes], held: LogState, new: LogState) -> None:
    """Raises unless ``new`` is ``held`` itself or grows from it, as ``proof`` shows."""
    if old_size > new.size and old_size != held.size:
        raise InvalidArgument(
            [FieldViolation("old_size", "must not be larger than the checkpoint's tree size")],
            reason="OLD_SIZE_TOO_LARGE",
        )
    if old_size != held.size:
        raise _state_error(
            "old_size is not the size this witness last cosigned", "OLD_SIZE_MISMATCH", held
        )
    if new.size < held.size:
        raise _state_error(
            "the checkpoint is older than one this witness cosigned", "ROLLBACK", held
        )
    if new.size == held.size and new.root_hash != held.root_hash:
        raise _state_error(
            "the checkpoint has the size of one this witness cosigned but another root",
            "FORK",
            held,
        )
    if held.size in (0, new.size):
        # Nothing to prove: every tree extends the empty one, and a tree extends itself.
        if proof:
            raise _state_error(
                "a consistency proof must be empty when nothing needs proving",
                "INCONSISTENT",
                held,
            )
        return
    try:
        verify_consistency(held.size, new.size, proof, held.root_hash, new.root_hash)
    except ProofError as error:
        raise _state_error("the consistency proof does not verify", "INCONSISTENT", held) from error


class Witness:
    """Checks checkpoints of the logs in ``logs`` and cosigns those that extend its state."""

    def __init__(
        self,
        *,
        logs: TrustedLogs,
        states: LogStates,
        cosigner: CheckpointCosigner,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._logs = logs
        self._states = states
        self._cosigner = cosigner
        self._clock = clock

    @property
    def name(self) -> str:
        return self._cosigner.name

    async def add_checkpoint(self, old_size: int, proof: Sequence[bytes], note: bytes) -> bytes:
        """The cosignature line (``— <name> <base64>\\n``) for the checkpoint in ``note``,
        once it is verified and recorded as the latest for its log; see the module doc for
        the refusals."""
        _check_proof(proof)
        checkpoint = _parse_checkpoint(note)
        origin = checkpoint.origin
        if not self._logs.follows(origin):
            raise NotFound(
                "this witness does not follow the checkpoint's log", reason="UNKNOWN_LOG"
            )
        if not self._logs.verify(origin, note):
            raise PermissionDenied(
                "the checkpoint has no valid signature by its log's key",
                reason="LOG_SIGNATURE_INVALID",
            )
        stored = await self._states.get(origin)
        held = stored or LogState(origin, 0, EMPTY_ROOT)
        new = LogState(origin, checkpoint.size, checkpoint.root_hash)
        _check_extends(old_size, proof, held, new)
        # Sign first: if Vault is down nothing is recorded, and the log may simply retry.
        cosignature = await self._cosigner.cosign(checkpoint.body(), int(self._clock()))
        if not await self._states.advance(stored, new):
            # Another request moved the state since we read it. Cosigning is still right if
            # it moved to this very checkpoint; otherwise the log must retry from our size.
            now = await self._states.get(origin) or held
            if now != new:
                raise _state_error(
                    "old_size is not the size this witness last cosigned",
                    "OLD_SIZE_MISMATCH",
                    now,
                )
        return cosignature.line().encode("utf-8")

    async def info(self) -> WitnessInfo:
        """The witness's name and key, and the state of every log it follows (size 0 and
        the empty tree's root for a log it has not cosigned yet)."""
        vkey = await self._cosigner.verifier_key()
        stored = {s.origin: s for s in await self._states.get_many(self._logs.origins)}
        logs = tuple(
            stored.get(origin, LogState(origin, 0, EMPTY_ROOT)) for origin in self._logs.origins
        )
        return WitnessInfo(name=self.name, vkey=str(vkey), logs=logs)
