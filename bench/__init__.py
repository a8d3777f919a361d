"""medledger benchmarks: each prints its figures and a ratio against a baseline measured
in the same run, on the same servers. Not tests: nothing here asserts a timing."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def add_keep_state(parser: argparse.ArgumentParser) -> None:
    """``--keep-state``: keep the run's servers' data and logs after a run that succeeded."""
    parser.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the run's data and logs (always kept when the run fails)",
    )


@contextmanager
def bench_state(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh folder for a run's servers (a 100,000-resource store takes gigabytes):
    removed after a run that succeeded unless ``keep``; kept, and named, after one that
    failed."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield workdir
    except BaseException:
        print(f"the run's data and logs are kept in {workdir}", file=sys.stderr)
        raise
    if keep:
        print(f"the run's data and logs are kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
