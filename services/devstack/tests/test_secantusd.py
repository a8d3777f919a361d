"""The fix to secantusdb's retryable-write bookkeeping (``medledger.devstack.secantusd``):
it applies to the installed secantusdb, keeps its bounds, looks only at the replies it
drops, and the server started through it still replays a retried write."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from secantus import transactions

from medledger.devstack import secantusd
from medledger.devstack.mongo import MongoServer

_CAP = transactions._RETRYABLE_RECORD_MAX
_LIFETIME = transactions._RETRYABLE_RECORD_LIFETIME_SECONDS


class _CountingDict(dict[Any, Any]):
    """Counts how many kept replies the pruning looks at."""

    looked_at = 0

    def __iter__(self) -> Iterator[Any]:
        for key in super().__iter__():
            self.looked_at += 1
            yield key

    def items(self) -> Any:
        self.looked_at += len(self)
        return super().items()


class _Registry:
    """What the pruning uses of secantusdb's TransactionRegistry."""

    def __init__(self, now: float) -> None:
        self.now = now
        self._retryable: dict[Any, tuple[dict[str, Any], float, bytes]] = _CountingDict()

    def _time(self) -> float:
        return self.now

    def record(self, key: int, at: float) -> None:
        self._retryable[(b"lsid", key)] = ({"ok": 1}, at, b"")


def test_it_applies_to_the_installed_secantusdb() -> None:
    registry = transactions.TransactionRegistry
    original = registry._prune_retryable_locked
    try:
        assert secantusd.fix_retryable_pruning()
        assert registry._prune_retryable_locked is secantusd.bounded_pruning
    finally:
        registry._prune_retryable_locked = original


def test_over_the_cap_the_oldest_go_first() -> None:
    registry = _Registry(now=1000.0)
    for key in range(_CAP + 3):
        registry.record(key, at=900.0 + key * 1e-6)
    secantusd.bounded_pruning(registry)
    assert len(registry._retryable) == _CAP
    assert (b"lsid", 0) not in registry._retryable
    assert (b"lsid", 2) not in registry._retryable
    assert (b"lsid", 3) in registry._retryable
    assert (b"lsid", _CAP + 2) in registry._retryable


def test_expired_replies_go_and_the_rest_stay() -> None:
    registry = _Registry(now=10_000.0)
    for key, at in enumerate((10.0, 20.0, 10_000.0 - _LIFETIME, 9_990.0)):
        registry.record(key, at=at)
    secantusd.bounded_pruning(registry)
    # Exactly the lifetime old is kept, as secantusdb keeps it (older than the cutoff goes).
    assert sorted(k for _, k in registry._retryable) == [2, 3]


def test_pruning_looks_only_at_what_it_drops() -> None:
    """secantusdb's own pruning walked (and past the cap sorted) every kept reply on each
    retryable write; this one looks at the ones it drops and the first it keeps."""
    registry = _Registry(now=1000.0)
    for key in range(_CAP):
        registry.record(key, at=999.0)
    kept: Any = registry._retryable
    kept.looked_at = 0
    secantusd.bounded_pruning(registry)
    assert kept.looked_at <= 1
    registry.record(_CAP, at=999.5)
    kept.looked_at = 0
    secantusd.bounded_pruning(registry)
    assert kept.looked_at <= 2
    assert len(kept) == _CAP


def test_the_stack_runs_the_fixed_server_and_it_replays_a_retried_write(
    mongo_server: MongoServer,
) -> None:
    """The tests' own server (the testkit's), started as the stack starts its Mongo."""
    assert mongo_server.process.argv[1:3] == ("-m", "medledger.devstack.secantusd")
    assert "running it unchanged" not in mongo_server.log_file.read_text(encoding="utf-8")
    client: MongoClient[dict[str, Any]]
    with MongoClient(mongo_server.uri) as client, client.start_session() as session:
        database: Database[dict[str, Any]] = client["retry_replay"]
        lsid = session.session_id
        command = {
            "insert": "counted",
            "documents": [{"_id": 1}],
            "lsid": lsid,
            "txnNumber": 7,
        }
        first = database.command(command)
        again = database.command(command)  # the driver's retry after a lost answer
        assert first["n"] == again["n"] == 1
        assert database.counted.count_documents({}) == 1
        for number in (8, 9):  # the session's later writes still run
            database.command({**command, "documents": [{"_id": number}], "txnNumber": number})
        assert database.counted.count_documents({}) == 3
