"""A full audit of the ledger through its API, trusting nothing but the log's public keys.

The latest checkpoint fixes the tree being audited (size N). The auditor then walks leaves
0..N-1 and the issued checkpoints together, one page of each at a time:

- every leaf hash is recomputed from the entry bytes and appended to a compact range, so the
  root of every tree size is known without keeping the leaves;
- each issued checkpoint must carry a valid log signature (and valid cosignatures from the
  witnesses it names), state the size it is listed under, and have the recomputed root;
- the ledger's consistency proof between consecutive checkpoints must verify;
- the ledger's inclusion proof of every leaf (or of ``sample`` random leaves) against the
  latest checkpoint must verify with the recomputed leaf hash. Proofs are built from stored
  tiles, so this is what catches a tampered tile.

The first check that fails ends the audit with ``AuditFailed``, whose message names the leaf
index or checkpoint size and what differs; for a failed proof the auditor recomputes the proof
from the entries to say which stored hash (which tile) is wrong.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from medledger.api.ledger.v1 import ledger_pb2
from medledger.tlog.compact import CompactRange
from medledger.tlog.errors import ProofError, TlogError
from medledger.tlog.hashing import leaf_hash
from medledger.tlog.proof_builder import consistency_nodes, inclusion_nodes
from medledger.tlog.verify import verify_consistency, verify_inclusion
from medledger.verify.ledger_client import LedgerApi
from medledger.verify.proof_diagnosis import ProofDifference, first_difference
from medledger.verify.trust import TrustPolicy, VerifiedCheckpoint

PROOF_CONCURRENCY = 16
"""Inclusion proofs requested at once while walking a page."""


class AuditFailed(Exception):
    """The log is not what its signed checkpoints say; the message says exactly where."""


@dataclass
class AuditReport:
    origin: str
    size: int
    root: bytes
    checkpoints: int = 0
    consistency_proofs: int = 0
    inclusion_proofs: int = 0
    log_keys: set[str] = field(default_factory=set)
    witnessed: VerifiedCheckpoint | None = None
    """The newest checkpoint that meets the witness quorum (with a quorum)."""


Progress = Callable[[int, int], None]


class LedgerAuditor:
    def __init__(
        self,
        api: LedgerApi,
        policy: TrustPolicy,
        *,
        sample: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._api = api
        self._policy = policy
        self._sample = sample
        self._progress = progress

    # -- the walk ----------------------------------------------------------------------

    async def run(self) -> AuditReport:
        try:
            latest = self._policy.open(await self._api.checkpoint(), quorum=0)
        except TlogError as error:
            raise AuditFailed(f"latest checkpoint (GetCheckpoint): {error}") from None
        report = AuditReport(latest.checkpoint.origin, latest.size, latest.root)
        report.log_keys.add(latest.log_key)
        wanted = self._inclusion_targets(latest.size)
        compact = CompactRange()
        checkpoints = aiter(self._api.checkpoints(last=latest.size))
        pending = await anext(checkpoints, None)
        previous: VerifiedCheckpoint | None = None
        async for page in self._api.entries(0, latest.size):
            proofs = await self._inclusion_proofs(
                [index for index, _ in page if wanted(index)], latest.size
            )
            for index, data in page:
                digest = leaf_hash(data)
                if index in proofs:
                    await self._check_inclusion(index, digest, proofs[index], latest)
                    report.inclusion_proofs += 1
                compact.append(digest)
                while pending is not None and pending.tree_size == compact.size:
                    previous = await self._check_checkpoint(pending, compact, previous, report)
                    pending = await anext(checkpoints, None)
            if self._progress is not None:
                self._progress(compact.size, latest.size)
        self._finish(latest, compact, previous, report)
        return report

    def _finish(
        self,
        latest: VerifiedCheckpoint,
        compact: CompactRange,
        last: VerifiedCheckpoint | None,
        report: AuditReport,
    ) -> None:
        if compact.size != latest.size:
            raise AuditFailed(
                f"leaf {compact.size}: missing (ListEntries ended there, the latest checkpoint "
                f"has {latest.size} leaves)"
            )
        if latest.size and (last is None or last.size != latest.size):
            raise AuditFailed(
                f"checkpoint {latest.size}: GetCheckpoint serves it but ListCheckpoints does "
                "not list it"
            )
        if compact.root() != latest.root:
            raise AuditFailed(
                f"checkpoint {latest.size} (latest): the log signed root {latest.root.hex()}, "
                f"the entries give {compact.root().hex()}"
            )
        if self._policy.quorum and report.witnessed is None:
            raise AuditFailed(
                f"no checkpoint up to size {latest.size} has {self._policy.quorum} valid "
                "cosignatures from the given witnesses"
            )

    def _inclusion_targets(self, size: int) -> Callable[[int], bool]:
        if self._sample is None or self._sample >= size:
            return lambda index: True
        # Drawn from the OS's generator: the ledger cannot predict which leaves are checked.
        chosen = set(random.SystemRandom().sample(range(size), self._sample))
        return chosen.__contains__

    # -- checkpoints -------------------------------------------------------------------

    async def _check_checkpoint(
        self,
        issued: ledger_pb2.IssuedCheckpoint,
        compact: CompactRange,
        previous: VerifiedCheckpoint | None,
        report: AuditReport,
    ) -> VerifiedCheckpoint:
        size = issued.tree_size
        try:
            verified = self._policy.open(issued.checkpoint, quorum=0)
        except TlogError as error:
            raise AuditFailed(f"checkpoint {size}: signature check failed: {error}") from None
        if verified.size != size:
            raise AuditFailed(
                f"checkpoint {size}: listed under size {size}, but its signed note states "
                f"size {verified.size}"
            )
        if verified.checkpoint.origin != report.origin:
            raise AuditFailed(
                f"checkpoint {size}: origin {verified.checkpoint.origin!r}, the latest "
                f"checkpoint's is {report.origin!r}"
            )
        if compact.root() != verified.root:
            start = previous.size if previous is not None else 0
            raise await self._root_mismatch(start, verified, compact.root())
        if previous is not None:
            await self._check_consistency(previous, verified)
            report.consistency_proofs += 1
        report.checkpoints += 1
        report.log_keys.add(verified.log_key)
        if len(verified.witnesses) >= self._policy.quorum > 0:
            report.witnessed = verified
        return verified

    async def _check_consistency(self, old: VerifiedCheckpoint, new: VerifiedCheckpoint) -> None:
        proof = await self._api.consistency_proof(old.size, new.size)
        try:
            verify_consistency(old.size, new.size, proof, old.root, new.root)
        except ProofError as error:
            what = f"consistency proof from checkpoint {old.size} to {new.size} does not verify"
            difference = await first_difference(
                consistency_nodes(old.size, new.size), proof, new.size, self._api.entries
            )
            raise AuditFailed(f"{what} ({error}); {_explain(difference, old, new)}") from None

    async def _root_mismatch(
        self, start: int, checkpoint: VerifiedCheckpoint, computed: bytes
    ) -> AuditFailed:
        """Which leaf in ``start..size-1`` the signed tree does not have, if one can be named."""
        async for page in self._api.entries(start, checkpoint.size):
            proofs = await self._inclusion_proofs([index for index, _ in page], checkpoint.size)
            for index, data in page:
                try:
                    verify_inclusion(
                        leaf_hash(data), index, checkpoint.size, proofs[index], checkpoint.root
                    )
                except ProofError:
                    found = await self._inclusion_failure(
                        index, leaf_hash(data), proofs[index], checkpoint
                    )
                    return AuditFailed(
                        f"checkpoint {checkpoint.size}: the log signed a root the entries do "
                        f"not give; {found}"
                    )
        return AuditFailed(
            f"checkpoint {checkpoint.size}: the log signed root {checkpoint.root.hex()}, "
            f"the entries 0..{checkpoint.size - 1} give {computed.hex()}"
        )

    # -- inclusion ---------------------------------------------------------------------

    async def _inclusion_proofs(self, indices: Sequence[int], size: int) -> dict[int, list[bytes]]:
        limit = asyncio.Semaphore(PROOF_CONCURRENCY)

        async def one(index: int) -> list[bytes]:
            async with limit:
                return list((await self._api.inclusion_proof(index, size)).hashes)

        proofs = await asyncio.gather(*(one(index) for index in indices))
        return dict(zip(indices, proofs, strict=True))

    async def _check_inclusion(
        self, index: int, digest: bytes, proof: list[bytes], checkpoint: VerifiedCheckpoint
    ) -> None:
        try:
            verify_inclusion(digest, index, checkpoint.size, proof, checkpoint.root)
        except ProofError:
            raise AuditFailed(
                await self._inclusion_failure(index, digest, proof, checkpoint)
            ) from None

    async def _inclusion_failure(
        self, index: int, digest: bytes, proof: list[bytes], checkpoint: VerifiedCheckpoint
    ) -> str:
        what = f"leaf {index}: inclusion proof against checkpoint {checkpoint.size} does not verify"
        difference = await first_difference(
            inclusion_nodes(index, checkpoint.size), proof, checkpoint.size, self._api.entries
        )
        if difference is None:
            return (
                f"{what}; the proof agrees with every other entry, so leaf {index} itself "
                f"differs: its entry bytes hash to {digest.hex()}, which is not the leaf the "
                "log signed (the entry was changed after it was logged)"
            )
        if isinstance(difference, ProofDifference):
            return f"{what}; {difference.describe()}"
        return f"{what}; {difference}"


def _explain(
    difference: ProofDifference | str | None, old: VerifiedCheckpoint, new: VerifiedCheckpoint
) -> str:
    if difference is None:
        return (
            f"the proof agrees with the entries, so the signed trees of size {old.size} and "
            f"{new.size} are not one history"
        )
    if isinstance(difference, ProofDifference):
        return difference.describe()
    return difference
