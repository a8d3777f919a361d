"""The local stack's files are its user's only, and each service is handed only its own Mongo
credential and database."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from medledger.common.keyfiles import write_private
from medledger.devstack.devstack import DevStack
from medledger.devstack.paths import StackPaths, make_private_tree, private_files
from medledger.devstack.process import ManagedProcess
from medledger.devstack.services import SERVICE_DATABASES, SERVICE_PORTS, WITNESSES


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_each_service_keeping_data_has_a_database_of_its_own() -> None:
    assert set(SERVICE_DATABASES) == set(SERVICE_PORTS)
    assert len(set(SERVICE_DATABASES.values())) == len(SERVICE_DATABASES)
    for name, witness in WITNESSES.items():
        assert SERVICE_DATABASES[name] == witness.database != SERVICE_DATABASES["ledger"]


def test_each_service_is_handed_its_own_mongo_credential_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MONGODB_URI", "mongodb://root:root@127.0.0.1:27018/")  # the shell's
    paths = StackPaths(tmp_path / "home")
    for user in SERVICE_DATABASES:
        write_private(DevStack(paths).mongo.password_file(user), f"pw-{user}\n")
    stack = DevStack(paths)
    assert {s.component for s in stack.services} == set(SERVICE_PORTS)
    for service in stack.services:
        env = service.env()
        name = service.component
        database = SERVICE_DATABASES[name]
        assert env["MEDLEDGER_MONGODB_DATABASE"] == database
        assert env["MONGODB_URI"] == (
            f"mongodb://{name}:pw-{name}@127.0.0.1:27018/"
            f"?directConnection=true&authSource={database}"
        )


def test_the_home_folder_is_the_owners_only(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    paths.make_home()
    assert _mode(paths.home) == 0o700
    paths.home.chmod(0o755)  # an older stack's
    paths.make_home()
    assert _mode(paths.home) == 0o700


def test_an_older_stacks_readable_files_are_made_private(tmp_path: Path) -> None:
    data = tmp_path / "mongo"
    (data / "journal").mkdir(parents=True)
    (data / "WiredTiger.wt").write_bytes(b"x")
    (data / "journal" / "log").write_bytes(b"x")
    (data / "run.sh").write_bytes(b"x")
    for path, mode in [
        (data, 0o755),
        (data / "journal", 0o755),
        (data / "WiredTiger.wt", 0o644),
        (data / "journal" / "log", 0o666),
        (data / "run.sh", 0o755),
    ]:
        path.chmod(mode)
    make_private_tree(data)
    assert _mode(data) == _mode(data / "journal") == 0o700
    assert _mode(data / "WiredTiger.wt") == _mode(data / "journal" / "log") == 0o600
    assert _mode(data / "run.sh") == 0o700  # the owner's rights are kept


def test_what_is_written_meanwhile_is_private_and_the_umask_comes_back(tmp_path: Path) -> None:
    before = os.umask(0o022)
    try:
        with private_files():
            (tmp_path / "state").mkdir()
            (tmp_path / "state" / "file").write_text("x")
        (tmp_path / "after").write_text("x")
    finally:
        os.umask(before)
    assert _mode(tmp_path / "state") == 0o700
    assert _mode(tmp_path / "state" / "file") == 0o600
    assert _mode(tmp_path / "after") == 0o644


def test_a_server_process_writes_private_files_and_logs(tmp_path: Path) -> None:
    process = ManagedProcess(
        "writer",
        log_file=tmp_path / "logs" / "writer.log",
        pid_file=tmp_path / "run" / "writer.pid",
        die_with_parent=True,
    )
    out = tmp_path / "written"
    before = os.umask(0o022)
    try:
        process.start(["sh", "-c", f"mkdir {out} && echo x > {out}/data && sleep 30"])
        process.wait_ready((out / "data").exists, timeout=10)
        assert process.argv[0] == "sh"
    finally:
        process.stop()
        os.umask(before)
    assert _mode(out) == 0o700
    assert _mode(out / "data") == 0o600
    assert _mode(tmp_path / "logs" / "writer.log") == 0o600
