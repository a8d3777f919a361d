"""MongoServer's options reach the real server: it starts with them and answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pymongo import MongoClient

from medledger.devstack.devstack import DevStack
from medledger.devstack.mongo import MongoServer, mongod_cache_size
from medledger.devstack.paths import StackPaths
from medledger.devstack.process import free_port


def _server(
    tmp_path: Path, oplog_max_entries: int | None = None, cache_size: str | None = None
) -> MongoServer:
    return MongoServer(
        port=free_port(),
        storage_path=tmp_path / "mongo",
        log_file=tmp_path / "mongo.log",
        sync_on_commit=False,
        die_with_parent=True,
        oplog_max_entries=oplog_max_entries,
        cache_size=cache_size,
    )


def test_a_raised_oplog_cap_and_cache_reach_the_server_which_takes_them(tmp_path: Path) -> None:
    server = _server(tmp_path, oplog_max_entries=2_000_000, cache_size="1536M")
    argv = server.argv()
    assert argv[argv.index("--oplog-max-entries") + 1] == "2000000"
    assert argv[argv.index("--cache-size") + 1] == "1536M"
    server.start()
    try:
        client: MongoClient[dict[str, object]] = MongoClient(server.uri)
        try:
            client.bench.t.insert_many([{"n": n} for n in range(1500)])
            assert client.bench.t.count_documents({}) == 1500
        finally:
            client.close()
    finally:
        server.stop()


def test_without_options_the_server_keeps_its_defaults(tmp_path: Path) -> None:
    argv = _server(tmp_path).argv()
    assert "--oplog-max-entries" not in argv
    assert "--cache-size" not in argv


def test_a_cap_below_one_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="oplog_max_entries"):
        _server(tmp_path, oplog_max_entries=0)


@pytest.mark.parametrize("size", ["", "4", "0G", "4GB", "-1G", "1.5G"])
def test_a_cache_size_the_server_would_not_read_is_refused(tmp_path: Path, size: str) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        _server(tmp_path, cache_size=size)


@pytest.mark.parametrize(
    ("memory_gib", "expected"),
    [(24, "11776M"), (4, "1536M"), (1, "256M"), (0.5, "256M")],
)
def test_the_cache_is_sized_as_mongod_sizes_it(memory_gib: float, expected: str) -> None:
    assert mongod_cache_size(int(memory_gib * 1024**3)) == expected


def test_this_machine_s_cache_size_is_one_the_server_reads(tmp_path: Path) -> None:
    server = _server(tmp_path, cache_size=mongod_cache_size())
    assert "--cache-size" in server.argv()


def test_the_local_stack_sizes_the_cache_for_the_machine(tmp_path: Path) -> None:
    stack = DevStack(StackPaths(tmp_path))
    assert stack.mongo.cache_size == mongod_cache_size()
