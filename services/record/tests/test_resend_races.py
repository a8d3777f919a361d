"""A resend that looks for its key's first attempt just as that attempt commits: the committed
result is not there yet, and the pending version is gone by the time it is looked for. The
resend answers with the committed result, not WRITE_EXPIRED (bundles) or CONCURRENT_WRITE
(single writes): found flaky in CI (four resends of one bundle at once), here made certain."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from medledger.api.common.v1 import purpose_pb2
from medledger.common.interceptors import Principal
from medledger.record.domain.bulk_writes import BulkWrites, _write_key
from medledger.record.domain.peers import AccessQuery, AccessVerdict, Requester
from medledger.record.domain.resources import ResourceService


class CommittingMeanwhile:
    """Storage in which each key's first attempt commits between a resend's two looks: the
    first ``idempotent_result`` finds nothing, ``resume_write`` finds no pending version
    (committed), the next ``idempotent_result`` finds the result."""

    def __init__(self) -> None:
        self.looked: set[str] = set()
        self.resumed: list[str] = []

    async def idempotent_result(self, key: str, fingerprint: bytes) -> Any:
        if key not in self.looked:
            self.looked.add(key)
            return None
        ref = SimpleNamespace(resource_type="Observation", resource_id=f"obs-{key}", version=1)
        return SimpleNamespace(patient_id="p1", ref=ref, key=key)

    async def resume_write(self, key: str, fingerprint: bytes) -> None:
        self.resumed.append(key)

    async def patient_holder(self, patient_id: str) -> str:
        return "org-a"


class Permitting:
    def __init__(self) -> None:
        self.asked: list[AccessQuery] = []

    async def check(self, query: AccessQuery) -> AccessVerdict:
        self.asked.append(query)
        return AccessVerdict(True, "SAME_ORGANIZATION")


REQUESTER = Requester(
    Principal(subject="app", organization="org-a", client_id="app", scopes=frozenset()),
    purpose_pb2.PURPOSE_OF_USE_TREAT,  # type: ignore[arg-type]
)


async def test_a_bundle_resend_answers_with_what_the_first_attempt_committed() -> None:
    storage, access = CommittingMeanwhile(), Permitting()
    bulk = BulkWrites(storage, access, None, directory=None)  # type: ignore[arg-type]
    done = await bulk._resume(REQUESTER, "k", b"fp", "attempt-1", 3)
    assert [v.key for v in done] == [_write_key("k", "attempt-1", n) for n in range(3)]
    assert len(storage.resumed) == 3
    assert access.asked  # the caller must still be allowed to see the answer


async def test_a_single_resend_answers_with_what_the_first_attempt_committed() -> None:
    storage, access = CommittingMeanwhile(), Permitting()
    service = ResourceService(storage, access, None, directory=None)  # type: ignore[arg-type]
    first = await service._replay(REQUESTER, "k", b"fp")
    assert first is not None
    assert first.key == "k"
    assert storage.resumed == ["k"]
    assert [q.patient_id for q in access.asked] == ["p1"]
