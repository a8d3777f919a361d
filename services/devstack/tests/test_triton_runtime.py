"""Triton's virtualenv counts as current only when built from the present requirements."""

from __future__ import annotations

from pathlib import Path

import pytest

from medledger.devstack.triton_runtime import (
    REQUIREMENTS_FILE,
    TritonRuntime,
    default_venv_dir,
)


def _fake_venv(root: Path, stamp: str) -> TritonRuntime:
    runtime = TritonRuntime(root)
    root.mkdir(parents=True)
    (root / "pyvenv.cfg").write_text("home = /opt/python/bin\nversion_info = 3.11.7\n")
    runtime.binary.parent.mkdir(parents=True)
    runtime.binary.write_text("")
    (root / ".medledger-requirements.sha256").write_text(stamp)
    return runtime


def test_requirements_pin_everything() -> None:
    lines = [
        line.strip()
        for line in REQUIREMENTS_FILE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "nvidia-pytriton==0.7.0" in lines
    assert any(line.startswith("numpy==1.") for line in lines)
    assert all("==" in line for line in lines)


def test_paths_follow_the_venv_python(tmp_path: Path) -> None:
    runtime = _fake_venv(tmp_path / "venv", "x")
    assert runtime.python_version == "3.11"
    assert runtime.base_python_lib == Path("/opt/python/lib")
    assert runtime.binary == (
        tmp_path / "venv/lib/python3.11/site-packages/pytriton/tritonserver/bin/tritonserver"
    )
    assert runtime.python_backend_stub.parent.name == "3.11"


def test_a_stale_stamp_means_rebuild(tmp_path: Path) -> None:
    assert not _fake_venv(tmp_path / "stale", "0" * 64).is_current()
    assert not TritonRuntime(tmp_path / "missing").is_current()


def test_venv_location_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDLEDGER_TRITON_VENV", str(tmp_path / "elsewhere"))
    assert default_venv_dir() == (tmp_path / "elsewhere").resolve()
    monkeypatch.delenv("MEDLEDGER_TRITON_VENV")
    assert default_venv_dir().parts[-3:] == (".medledger", "cache", "triton-venv")
