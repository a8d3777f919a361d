"""Where a machine's cores go: the CPU time each process of a run spends per call.

A closed-loop run from a fixed number of clients is bounded by the CPU its calls need as
much as by any one process: with every process on the same cores, a call that costs ``t``
CPU-milliseconds in all of them together cannot run more often than ``cores * 1000 / t``
times a second, however the work is spread. :class:`CpuMeter` reads each process's user
and system time (``/proc/<pid>/stat``, all its threads) before and after a run, so a
benchmark can print the cost per call by process and that ceiling beside the rate it
measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Final

# The benchmark's own process: the testkit platform (identity and the ledger) and the clients.
PLATFORM_PROCESS: Final = "identity+ledger+clients"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process (all its threads), in seconds."""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 (utime) and 15 (stime) of proc(5), counted from 1, in clock ticks.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """The CPU time of named processes, read together."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        if not pids:
            raise ValueError("a CPU meter needs at least one process")
        self.pids = dict(pids)

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def spent(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        """CPU seconds each process spent between two readings."""
        return {name: after[name] - before[name] for name in before}


def stack_meter(*, mongo: int, vault: int, record: int) -> CpuMeter:
    """The processes of a benchmark that runs the record service in its own process: Mongo,
    Vault, the record process, and this one (:data:`PLATFORM_PROCESS`)."""
    return CpuMeter(
        {"Mongo": mongo, "Vault": vault, "record": record, PLATFORM_PROCESS: os.getpid()}
    )


def per_call_ms(cpu: Mapping[str, float], calls: int, process: str | None = None) -> float:
    """CPU milliseconds per call (or resource) that ``process`` spent (None: all of them
    together), from the CPU seconds of a run of ``calls``; NaN when none completed."""
    if not calls:
        return math.nan
    spent = cpu[process] if process is not None else sum(cpu.values())
    return spent * 1000 / calls


def ceiling(cpu_ms_per_call: float, cores: int | None = None) -> float:
    """The most calls per second this machine's cores allow at ``cpu_ms_per_call``."""
    if cpu_ms_per_call <= 0:
        return float("inf")
    return (cores or os.cpu_count() or 1) * 1000.0 / cpu_ms_per_call
