"""The local stack's Mongo requires authentication, with a user per service allowed its own
database only, and keeps its files its owner's only."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from medledger.devstack.mongo import ADMIN_USER, MongoServer
from medledger.devstack.process import free_port

USERS = {"ledger": "medledger_ledger", "record": "medledger_record"}
UNAUTHORIZED = 13


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _server(home: Path, port: int, users: dict[str, str]) -> MongoServer:
    return MongoServer(
        port=port,
        storage_path=home / "mongo",
        log_file=home / "logs" / "mongo.log",
        pid_file=home / "run" / "mongo.pid",
        sync_on_commit=False,
        die_with_parent=True,
        users=users,
        credentials_dir=home / "keys",
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-home")


@pytest.fixture(scope="module")
def mongo(home: Path) -> Iterator[MongoServer]:
    server = _server(home, free_port(), USERS)
    server.start()
    try:
        assert sorted(server.provision()) == sorted(USERS)
        yield server
    finally:
        server.stop()


def _client(uri: str) -> MongoClient[dict[str, Any]]:
    return MongoClient(uri, serverSelectionTimeoutMS=5000)


def test_a_service_writes_its_own_database_and_no_other(mongo: MongoServer) -> None:
    with _client(mongo.uri_for("ledger")) as ledger:
        ledger.medledger_ledger.lease.insert_one({"_id": "writer", "address": "10.0.0.5:50053"})
    with _client(mongo.uri_for("record")) as record:
        record.medledger_record.patients.insert_one({"_id": "p1"})
        own = record.medledger_record.patients.find_one({"_id": "p1"})
        # The ledger's lease address (where replicas forward callers' tokens) stays out of reach.
        with pytest.raises(OperationFailure) as rewrite:
            record.medledger_ledger.lease.update_one(
                {"_id": "writer"}, {"$set": {"address": "evil:1"}}
            )
        with pytest.raises(OperationFailure) as read:
            record.medledger_ledger.lease.find_one()
        with pytest.raises(OperationFailure) as grant:
            record.medledger_record.command(
                "grantRolesToUser", "record", roles=[{"role": "root", "db": "admin"}]
            )
    assert own == {"_id": "p1"}
    assert rewrite.value.code == read.value.code == grant.value.code == UNAUTHORIZED
    with _client(mongo.admin_uri) as admin:
        assert admin.medledger_ledger.lease.find_one()["address"] == "10.0.0.5:50053"  # type: ignore[index]


def test_nothing_passes_without_credentials_or_with_wrong_ones(mongo: MongoServer) -> None:
    with _client(mongo.uri) as anonymous:
        assert anonymous.admin.command("ping")["ok"] == 1  # the health probe still works
        with pytest.raises(OperationFailure):
            anonymous.medledger_record.patients.find_one()
    wrong = mongo.uri_for("record").replace("authSource=medledger_record", "authSource=admin")
    with _client(wrong) as client, pytest.raises(OperationFailure):
        client.medledger_record.patients.find_one()


def test_the_files_are_the_owners_only(mongo: MongoServer, home: Path) -> None:
    assert mongo.credentials_dir is not None
    for user in (ADMIN_USER, *USERS):
        assert _mode(mongo.password_file(user)) == 0o600
    assert _mode(home / "keys") == 0o700
    assert _mode(home / "logs" / "mongo.log") == 0o600
    assert _mode(home / "run" / "mongo.pid") == 0o600
    data = [mongo.storage_path, *mongo.storage_path.rglob("*")]
    assert len(data) > 3
    for path in data:
        assert _mode(path) & 0o077 == 0, path


def test_a_user_added_later_is_created_with_authentication_on(
    mongo: MongoServer, home: Path
) -> None:
    # The same server seen by a stack that knows one more service.
    more = _server(home, mongo.port, {**USERS, "identity": "medledger_identity"})
    assert more.provision() == ["identity"]
    assert more.provision() == []
    with _client(more.uri_for("identity")) as identity:
        identity.medledger_identity.clients.insert_one({"_id": "c"})
        with pytest.raises(OperationFailure):
            identity.medledger_ledger.lease.find_one()


def test_the_users_survive_a_restart(home: Path) -> None:
    server = _server(home / "restart", free_port(), {"ledger": "medledger_ledger"})
    server.start()
    try:
        assert server.runs_with_auth()
        server.provision()
        with _client(server.uri_for("ledger")) as ledger:
            ledger.medledger_ledger.tree.insert_one({"_id": 1})
        server.stop()
        server.start()
        assert server.provision() == []
        with _client(server.uri_for("ledger")) as ledger:
            assert ledger.medledger_ledger.tree.find_one() == {"_id": 1}
    finally:
        server.stop()
