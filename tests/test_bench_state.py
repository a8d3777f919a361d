"""A benchmark's state folder: removed after a run that succeeded, kept when asked or when
the run failed (a 100,000-resource store takes gigabytes of /tmp)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

# The benchmarks run from the repository's root (python -m bench.<name>), not installed.
_SPEC = importlib.util.spec_from_file_location(
    "bench", Path(__file__).resolve().parents[1] / "bench" / "__init__.py"
)
assert _SPEC is not None
assert _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)
add_keep_state, bench_state = bench.add_keep_state, bench.bench_state


def test_a_successful_run_leaves_nothing() -> None:
    with bench_state("bench-test-", keep=False) as workdir:
        (workdir / "mongo").mkdir()
        (workdir / "mongo" / "data").write_bytes(b"x" * 1024)
    assert not workdir.exists()


def test_kept_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with bench_state("bench-test-", keep=True) as workdir:
        (workdir / "record.log").write_text("started\n")
    try:
        assert (workdir / "record.log").read_text() == "started\n"
        assert str(workdir) in capsys.readouterr().out
    finally:
        (workdir / "record.log").unlink()
        workdir.rmdir()


def test_kept_and_named_when_the_run_fails(capsys: pytest.CaptureFixture[str]) -> None:
    kept: Path | None = None
    with pytest.raises(RuntimeError, match="server gone"):
        with bench_state("bench-test-", keep=False) as workdir:
            kept = workdir
            (workdir / "mongo.log").write_text("crash\n")
            raise RuntimeError("server gone")
    assert kept is not None
    try:
        assert (kept / "mongo.log").is_file()
        assert str(kept) in capsys.readouterr().err
    finally:
        (kept / "mongo.log").unlink()
        kept.rmdir()


def test_the_flag_is_off_unless_given() -> None:
    parser = argparse.ArgumentParser()
    add_keep_state(parser)
    assert parser.parse_args([]).keep_state is False
    assert parser.parse_args(["--keep-state"]).keep_state is True
