"""Duplicate patients: finding likely pairs (FindDuplicatePatients) and linking a pair the
caller has judged to be one person (LinkPatients).

Finding. The storage hands over the Patients that share a blocking token with another
(:meth:`RecordStorage.duplicate_blocks`: keyed digests of phonetic codes, birth dates,
identifiers; see :mod:`patient_matching`), their latest versions opened. Their facts are
compared pair by pair in memory (a worker thread), and nothing derived from them is stored.
The pairs at or above the threshold, highest score first, are then walked: each patient is
decided by identity's CheckAccess as a search of Patients, and a pair is kept only when both
of its patients are permitted; the others are left out without a word, as a search leaves
out what it may not show. Each patient on the page answered is ledgered as a RECORD_READ of
Patient (no resource id, as a search's), before the page is returned. The whole population
is compared on every call (the pairs move as Patients are written), and a page token is a
position in the order (score, then ids), so a page continues after the last pair seen.

Linking. FHIR's Patient.link says two records are one person: the source (the duplicate,
kept for its history) gets ``replaced-by`` the target and ``active: false``; the target gets
``replaces`` the source. Both are written through :class:`ResourceService` as updates, so
each is checked (update, on its own patient), ledgered (RECORD_UPDATED, the audit trail of
the merge) and versioned like any other. Nothing is merged automatically, and nothing is
moved: resources of the source stay in the source's compartment (they name its id).
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import hashlib
import json
import math
import re
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from medledger.common.paging import Listing, Page
from medledger.common.paging import page_size as page_size_rule
from medledger.common.scopes import resource_scope
from medledger.record.domain.fhir_references import is_fhir_id
from medledger.record.domain.patient_matching import (
    DEFAULT_MIN_SCORE,
    PatientFacts,
    ScoredPair,
    candidate_pairs,
    patient_facts,
    score_pairs,
)
from medledger.record.domain.peers import (
    AccessChecks,
    AccessQuery,
    AccessVerdict,
    Action,
    RecordEvent,
    RecordLedger,
    Requester,
)
from medledger.record.domain.ports import PatientBlocks, RecordStorage, StoredVersion
from medledger.record.domain.resources import SCOPE_MISSING, ResourceService

LISTING: Final = "record.FindDuplicatePatients"
# Patients sharing one blocking key beyond this many make a block too common to say anything
# (a frequent name's Soundex code); their pairs are found through the other keys, or not.
MAX_BLOCK: Final = 200
# CheckAccess calls and ledger appends one call makes at once (bench/duplicates: appending a
# page's reads this way took half the time of one batch append of them).
PEER_CALLS_AT_ONCE: Final = 16
# Pairs whose patients are decided in one round.
PAIRS_PER_ROUND: Final = 64
_KEY: Final = re.compile(r"[\x21-\x7e]{1,128}")
T = TypeVar("T")


def _denied(verdict: AccessVerdict) -> PermissionDenied:
    return PermissionDenied(f"access denied ({verdict.reason})", reason=verdict.reason)


def _holds_patient_scopes(requester: Requester) -> bool:
    scopes = (resource_scope(text) for text in requester.principal.scopes)
    return any(scope is not None and scope.context == "patient" for scope in scopes)


async def _bounded(calls: Iterable[Awaitable[T]]) -> list[T]:
    limit = asyncio.Semaphore(PEER_CALLS_AT_ONCE)

    async def one(call: Awaitable[T]) -> T:
        async with limit:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


def min_score_rule(min_score: float) -> float:
    """0 means :data:`DEFAULT_MIN_SCORE`; anything outside 0..1 (or not a number) is
    INVALID_ARGUMENT naming ``min_score``."""
    if not math.isfinite(min_score) or not 0.0 <= min_score <= 1.0:
        raise InvalidArgument(
            [
                FieldViolation(
                    "min_score",
                    f"a match probability from 0 to 1 (0: the default, {DEFAULT_MIN_SCORE})",
                )
            ]
        )
    return min_score or DEFAULT_MIN_SCORE


def _listing(min_score: float, patient_id: str) -> Listing:
    return Listing(LISTING, (repr(min_score), patient_id))


def _position(listing: Listing, token: str) -> tuple[float, str, str] | None:
    """The rank of the last pair of the previous page (None: the first page)."""
    cursor = listing.cursor(token)
    if cursor is None:
        return None
    try:
        score, first, second = json.loads(cursor)
        return (-float(score), str(first), str(second))
    except (ValueError, TypeError):  # a token built by hand
        raise InvalidArgument(
            [FieldViolation("page_token", "is not a token issued for this listing and filters")]
        ) from None


def _token(listing: Listing, pair: ScoredPair) -> str:
    return listing.token(json.dumps([pair.score, pair.first, pair.second]))


def _scored(blocks: PatientBlocks, min_score: float) -> list[ScoredPair]:
    """Every candidate pair at or above ``min_score``, highest first (CPU: a worker thread).
    A pair already linked (either one's Patient.link names the other: judged and merged,
    or judged distinct) is not a candidate any more."""
    facts: dict[str, PatientFacts] = {}
    linked: set[tuple[str, str]] = set()
    for patient_id, version in blocks.patients.items():
        try:
            resource = json.loads(version.resource_json)
            facts[patient_id] = patient_facts(resource)
        except ValueError:  # stored JSON always parses; nothing to compare otherwise
            continue
        for _, reference in _links(resource if isinstance(resource, dict) else {}):
            other = reference.removeprefix("Patient/")
            linked.add((min(patient_id, other), max(patient_id, other)))
    scored = score_pairs(candidate_pairs(blocks.blocks), facts, min_score)
    return [pair for pair in scored if (pair.first, pair.second) not in linked]


class DuplicateFinder:
    def __init__(self, storage: RecordStorage, access: AccessChecks, ledger: RecordLedger) -> None:
        self._storage = storage
        self._access = access
        self._ledger = ledger

    async def find(
        self,
        requester: Requester,
        min_score: float,
        *,
        page_size: int,
        page_token: str,
        patient_id: str = "",
    ) -> Page[ScoredPair]:
        """A page of likely duplicate pairs among the patients the requester may search;
        with ``patient_id``, only the pairs of that Patient (its blocks alone are read)."""
        threshold = min_score_rule(min_score)
        size = page_size_rule(page_size)
        if patient_id and not is_fhir_id(patient_id):
            raise InvalidArgument(
                [FieldViolation("patient_id", "a Patient id: 1 to 64 of A-Z a-z 0-9 - .")]
            )
        listing = _listing(threshold, patient_id)
        after = _position(listing, page_token)
        overall = await self._access.check(AccessQuery(requester, "", "", "Patient", Action.SEARCH))
        if not overall.permitted and not (
            overall.reason == SCOPE_MISSING and _holds_patient_scopes(requester)
        ):
            raise _denied(overall)
        verdicts: dict[str, AccessVerdict] = {}
        if patient_id:
            # Named, so answered as a read of it is: missing (NOT_FOUND) or denied, said so.
            holder = await self._storage.patient_holder(patient_id)
            named = verdicts[patient_id] = await self._access.check(
                AccessQuery(requester, patient_id, holder, "Patient", Action.SEARCH)
            )
            if not named.permitted:
                raise _denied(named)
        blocks = await self._storage.duplicate_blocks(MAX_BLOCK, patient_id)
        scored = await asyncio.to_thread(_scored, blocks, threshold)
        if patient_id:
            scored = [pair for pair in scored if patient_id in (pair.first, pair.second)]
        start = 0 if after is None else bisect.bisect_right([p.rank for p in scored], after)
        found: list[ScoredPair] = []
        # One pair beyond the page says whether there is another page.
        while start < len(scored) and len(found) <= size:
            batch = scored[start : start + PAIRS_PER_ROUND]
            start += len(batch)
            new = sorted({p for pair in batch for p in (pair.first, pair.second)} - set(verdicts))
            decided = await _bounded(self._verdict(requester, p) for p in new)
            verdicts.update(zip(new, decided, strict=True))
            found += [
                pair
                for pair in batch
                if verdicts[pair.first].permitted and verdicts[pair.second].permitted
            ]
        page, more = found[:size], len(found) > size
        patients = sorted({p for pair in page for p in (pair.first, pair.second)})
        await _bounded(
            self._ledger.append(p, self._read_event(requester, verdicts[p])) for p in patients
        )
        return Page(page, _token(listing, page[-1]) if more else "")

    async def _verdict(self, requester: Requester, patient_id: str) -> AccessVerdict:
        try:
            holder = await self._storage.patient_holder(patient_id)
        except NotFound:  # erased meanwhile
            return AccessVerdict(permitted=False, reason="PATIENT_NOT_FOUND")
        return await self._access.check(
            AccessQuery(requester, patient_id, holder, "Patient", Action.SEARCH)
        )

    @staticmethod
    def _read_event(requester: Requester, verdict: AccessVerdict) -> RecordEvent:
        who = requester.principal
        return RecordEvent(
            kind=ledger_pb2.EVENT_KIND_RECORD_READ,
            actor=who.subject,
            organization=who.organization,
            purpose=requester.purpose,
            resource_type="Patient",
            patient_actor=who.subject if verdict.patient_self else "",
        )


# -- linking --------------------------------------------------------------------------------

REPLACED_BY: Final = "replaced-by"
REPLACES: Final = "replaces"


@dataclass(frozen=True)
class LinkRequest:
    source_id: str
    target_id: str
    source_version: int
    target_version: int
    idempotency_key: str = ""


def _check_link(request: LinkRequest) -> None:
    problems = []
    for field, value in (
        ("source_patient_id", request.source_id),
        ("target_patient_id", request.target_id),
    ):
        if not is_fhir_id(value):
            problems.append(FieldViolation(field, "a Patient id: 1 to 64 of A-Z a-z 0-9 - ."))
    if request.source_id == request.target_id and is_fhir_id(request.source_id):
        problems.append(FieldViolation("target_patient_id", "must differ from the source"))
    for field, version in (
        ("source_expected_version", request.source_version),
        ("target_expected_version", request.target_version),
    ):
        if version < 1:
            problems.append(FieldViolation(field, "required: the version last read (1 or more)"))
    if request.idempotency_key and not _KEY.fullmatch(request.idempotency_key):
        problems.append(
            FieldViolation("idempotency_key", "1 to 128 printable ASCII characters, no spaces")
        )
    if problems:
        raise InvalidArgument(problems)


def _links(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(type, reference) of each Patient.link."""
    links = resource.get("link")
    found = []
    for link in links if isinstance(links, list) else []:
        if isinstance(link, Mapping) and isinstance(link.get("other"), Mapping):
            found.append((str(link.get("type", "")), str(link["other"].get("reference", ""))))
    return found


def _linked(resource: Mapping[str, Any], link_type: str, other_id: str) -> dict[str, Any]:
    """A copy of the Patient with a link of ``link_type`` to ``other_id`` added (the source
    also made inactive)."""
    document = copy.deepcopy(dict(resource))
    link = {"other": {"reference": f"Patient/{other_id}"}, "type": link_type}
    existing = document.get("link")
    document["link"] = [*(existing if isinstance(existing, list) else []), link]
    if link_type == REPLACED_BY:
        document["active"] = False
    return document


def _side_key(key: str, side: str) -> str:
    """The idempotency key of one of the two updates (within the 128 characters allowed)."""
    if not key:
        return ""
    return f"link:{hashlib.sha256(key.encode()).hexdigest()[:48]}:{side}"


def _stale(current_version: int) -> Aborted:
    return Aborted(
        "the patient changed since the expected version; read it again",
        reason="STALE_VERSION",
        metadata={"current_version": str(current_version)},
    )


class PatientLinker:
    def __init__(
        self, resources: ResourceService, storage: RecordStorage, access: AccessChecks
    ) -> None:
        self._resources = resources
        self._storage = storage
        self._access = access

    async def link(
        self, requester: Requester, request: LinkRequest
    ) -> tuple[StoredVersion, StoredVersion]:
        """The source's and the target's new versions. Nothing is written unless both
        patients may be updated by the requester, both are at their expected versions, and
        the source is not already replaced by another. A side that already carries this
        very link (an earlier attempt's, whose answer was lost) is answered as it is."""
        _check_link(request)
        for patient_id, side in ((request.source_id, "source"), (request.target_id, "target")):
            await self._permit(requester, patient_id, side)
        source = await self._side(request.source_id, request.source_version, "source")
        target = await self._side(request.target_id, request.target_version, "target")
        plans = [
            self._plan(source, REPLACED_BY, request.target_id, request.source_version),
            self._plan(target, REPLACES, request.source_id, request.target_version),
        ]
        results = []
        for (expected, latest, wanted), side in zip(plans, ("source", "target"), strict=True):
            if wanted is None:  # already linked by an earlier attempt
                results.append(latest)
                continue
            results.append(
                await self._resources.update(
                    requester,
                    json.dumps(wanted, separators=(",", ":"), ensure_ascii=False),
                    expected,
                    _side_key(request.idempotency_key, side),
                )
            )
        return results[0], results[1]

    async def _permit(self, requester: Requester, patient_id: str, side: str) -> None:
        try:
            holder = await self._storage.patient_holder(patient_id)
        except NotFound as error:
            if error.reason == "ERASED":
                raise
            raise NotFound(
                f"the {side} patient does not exist", reason="PATIENT_NOT_FOUND"
            ) from None
        verdict = await self._access.check(
            AccessQuery(requester, patient_id, holder, "Patient", Action.WRITE)
        )
        if not verdict.permitted:
            raise _denied(verdict)

    async def _side(
        self, patient_id: str, expected: int, side: str
    ) -> tuple[StoredVersion, StoredVersion]:
        """The expected version of the Patient and its latest."""
        latest = await self._storage.read("Patient", patient_id)
        if expected > latest.ref.version:
            raise _stale(latest.ref.version)
        if expected == latest.ref.version:
            return latest, latest
        return await self._storage.read("Patient", patient_id, expected), latest

    def _plan(
        self,
        versions: tuple[StoredVersion, StoredVersion],
        link_type: str,
        other_id: str,
        expected: int,
    ) -> tuple[int, StoredVersion, dict[str, Any] | None]:
        """(expected version, latest, the document to write, or None when the latest is
        already this link's version)."""
        at_expected, latest = versions
        base = json.loads(at_expected.resource_json)
        wanted = _linked(base, link_type, other_id)
        if latest.ref.version != expected:
            current = json.loads(latest.resource_json)
            if latest.ref.version == expected + 1 and _links(current) == _links(wanted):
                return expected, latest, None
            raise _stale(latest.ref.version)
        links = _links(base)
        if (link_type, f"Patient/{other_id}") in links:
            return expected, latest, None
        if any(kind == REPLACED_BY for kind, _ in links):
            raise FailedPrecondition(
                "a Patient replaced by another cannot be linked; link the one that replaced it",
                reason="PATIENT_REPLACED",
            )
        return expected, latest, wanted


@dataclass(frozen=True)
class DuplicatePatients:
    """What the duplicate RPCs call."""

    finder: DuplicateFinder
    linker: PatientLinker
