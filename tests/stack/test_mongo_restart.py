"""The Mongo fixture's data survives a stop and a start on the same folder and port."""

from __future__ import annotations

import uuid
from typing import Any

from pymongo import MongoClient

from medledger.devstack.mongo import MongoServer
from medledger.devstack.probes import Health


def test_data_survives_restart(mongo_server: MongoServer) -> None:
    marker = uuid.uuid4().hex
    with MongoClient[dict[str, Any]](mongo_server.uri) as client:
        client.stack_test.docs.insert_one({"_id": marker, "kind": "restart"})
    pid_before = mongo_server.pid
    try:
        assert mongo_server.stop()
        assert mongo_server.health() is Health.DOWN
    finally:
        if not mongo_server.is_running():
            mongo_server.start()
    assert mongo_server.pid != pid_before
    assert mongo_server.health() is Health.SERVING
    with MongoClient[dict[str, Any]](mongo_server.uri) as client:
        assert client.stack_test.docs.find_one({"_id": marker}) == {
            "_id": marker,
            "kind": "restart",
        }


def test_uri_connects_directly(mongo_server: MongoServer) -> None:
    assert mongo_server.uri == f"mongodb://127.0.0.1:{mongo_server.port}/?directConnection=true"
    with MongoClient[dict[str, Any]](mongo_server.uri) as client:
        assert client.admin.command("ping")["ok"] == 1
