"""The benchmarks' CPU meter: the CPU time each process spent during a run, and the ceiling
a machine's cores put on a call of a given cost."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# The benchmarks run from the repository's root (python -m bench.<name>), not installed.
_SPEC = importlib.util.spec_from_file_location(
    "bench_cpu", Path(__file__).resolve().parents[1] / "bench" / "cpu.py"
)
assert _SPEC is not None
assert _SPEC.loader is not None
bench_cpu = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_cpu)
CpuMeter, ceiling, cpu_seconds = bench_cpu.CpuMeter, bench_cpu.ceiling, bench_cpu.cpu_seconds
per_call_ms, stack_meter = bench_cpu.per_call_ms, bench_cpu.stack_meter

_SPIN = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass\n"


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def test_a_busy_process_is_charged_its_cpu_and_an_idle_one_nothing(
    sleeper: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    # A command name with spaces and parentheses, as /proc/<pid>/stat's second field shows
    # it: the fields after it must still be found.
    odd = tmp_path / "a) (b c"
    odd.symlink_to(sys.executable)
    spinner = subprocess.Popen([str(odd), "-c", _SPIN + "time.sleep(60)"])
    try:
        assert "a) (b c" in Path(f"/proc/{spinner.pid}/stat").read_text()
        meter = CpuMeter({"spinner": spinner.pid, "sleeper": sleeper.pid})
        before = meter.read()
        deadline = time.monotonic() + 30
        while cpu_seconds(spinner.pid) - before["spinner"] < 0.4:
            assert time.monotonic() < deadline, "the spinning process never used its CPU"
            time.sleep(0.05)
        spent = CpuMeter.spent(before, meter.read())
    finally:
        spinner.kill()
        spinner.wait()
    assert 0.4 <= spent["spinner"] < 5
    assert spent["sleeper"] < 0.1


def test_ceiling_is_cores_times_a_second_over_the_cost() -> None:
    assert ceiling(20.0, cores=2) == pytest.approx(100.0)
    assert ceiling(5.0, cores=16) == pytest.approx(3200.0)
    assert ceiling(0.0, cores=2) == float("inf")


def test_a_meter_needs_a_process() -> None:
    with pytest.raises(ValueError, match="at least one process"):
        CpuMeter({})


def test_per_call_cost_by_process_and_together() -> None:
    spent = {"Mongo": 0.5, "record": 0.25}
    assert per_call_ms(spent, 50, "Mongo") == pytest.approx(10.0)
    assert per_call_ms(spent, 50, "record") == pytest.approx(5.0)
    assert per_call_ms(spent, 50) == pytest.approx(15.0)
    assert math.isnan(per_call_ms(spent, 0))


def test_the_stack_meter_names_the_stack_and_this_process() -> None:
    meter = stack_meter(mongo=11, vault=12, record=13)
    assert meter.pids == {
        "Mongo": 11,
        "Vault": 12,
        "record": 13,
        bench_cpu.PLATFORM_PROCESS: os.getpid(),
    }
