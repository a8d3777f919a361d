"""``python -m bench.standin [--writes N]``

The local MongoDB stand-in's cost per write as its recent writes pile up, in one run: the
server as the stack runs it (``medledger.devstack.secantusd``: secantusdb with its
retryable-write bookkeeping fixed) against secantusdb's own ``secantusd-py``, each fresh,
with fsync on commit off. Each gets ``--writes`` single-document ``insert_one`` calls (each
a retryable write) from one client; the server's CPU-ms per insert is printed for the first
1,000, the ones up to ``--writes`` and the 1,000 after, then the ratio of the two servers
in the last stretch. Why it matters: every service write is a retryable write, and
secantusdb's own server pays for every write of the last half hour (up to 10,000) on each
one (``medledger/devstack/secantusd.py`` explains). Printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import time

from pymongo import MongoClient
from pymongo.collection import Collection

from bench import add_keep_state, bench_state
from bench.cpu import cpu_seconds
from medledger.devstack.mongo import MongoServer
from medledger.devstack.process import find_executable, free_port

STRETCH = 1000
PAD = "x" * 200


class PlainSecantus(MongoServer):
    """secantusdb's own server, unchanged."""

    def argv(self) -> list[str]:
        fixed = super().argv()
        return [find_executable("secantusd-py"), *fixed[3:]]


def _stretches(server: MongoServer, writes: int) -> list[tuple[str, float, float]]:
    """(stretch, inserts/s, server CPU-ms per insert) for each stretch."""
    rows = []
    pid = server.process.pid
    assert pid is not None, "started"
    client: MongoClient[dict[str, object]]
    with MongoClient(server.uri) as client:
        collection: Collection[dict[str, object]] = client["standin"]["writes"]
        n = 0
        for name, count in (
            ("first 1,000", STRETCH),
            (f"1,000 to {writes:,}", writes - STRETCH),
            (f"{writes:,} to {writes + STRETCH:,}", STRETCH),
        ):
            cpu, start = cpu_seconds(pid), time.perf_counter()
            for _ in range(count):
                collection.insert_one({"n": n, "pad": PAD})
                n += 1
            elapsed = time.perf_counter() - start
            spent = cpu_seconds(pid) - cpu
            rows.append((name, count / elapsed, spent * 1000 / count))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=11_000)
    add_keep_state(parser)
    args = parser.parse_args()
    if args.writes <= STRETCH:
        parser.error(f"--writes is more than {STRETCH}")
    print(f"# stand-in benchmark — cores: {os.cpu_count()}, writes: {args.writes:,}")
    results: dict[str, list[tuple[str, float, float]]] = {}
    with bench_state("bench-standin-", keep=args.keep_state) as workdir:
        for label, name, kind in (
            ("the stack's", "fixed", MongoServer),
            ("secantusd-py", "plain", PlainSecantus),
        ):
            server = kind(
                port=free_port(),
                storage_path=workdir / name,
                log_file=workdir / f"{name}.log",
                sync_on_commit=False,
                die_with_parent=True,
            )
            server.start()
            try:
                results[label] = _stretches(server, args.writes)
            finally:
                server.stop()
    for label, rows in results.items():
        for name, rate, cpu_ms in rows:
            print(f"{label:>13} {name:>18}: {rate:6.0f} inserts/s, {cpu_ms:5.2f} server CPU-ms")
    fixed, plain = (rows[-1][2] for rows in results.values())
    print(
        f"server CPU per insert after {args.writes:,} writes: secantusd-py {plain:.2f} ms, "
        f"the stack's {fixed:.2f} ms ({plain / fixed:.1f}x)"
    )


if __name__ == "__main__":
    main()
