"""``python -m medledger.devstack.secantusd [secantusd-py's flags]``: secantusdb's server, as
``secantusd-py`` runs it, with one fix to its bookkeeping of retryable writes.

secantusdb (0.7.0b3) keeps each retryable write's reply for 30 minutes, at most 10,000 of
them, as mongod does. But it enforces both bounds by walking every kept reply on every
retryable write, twice (once to look the write up, once to record it), and, once 10,000 are
kept, by sorting all of them to drop the oldest. A write's cost therefore grows with the
writes of the last half hour: measured on this machine (``python -m bench.standin``), one
``insert_one`` cost the server 0.8 CPU-ms on a fresh server, 2.7 ms while the first 10,000
accumulated and 10 ms past them. Every write of the stack (the ledger's, the record's) paid
it, and every benchmark's figure with it.

The replies are kept in a dict, in the order they were recorded, which is also the order of
their times. :func:`bounded_pruning` drops the oldest from its front instead: past the cap,
as many as are over it; past the lifetime, those expired, stopping at the first that is
not. The bounds stay those of secantusdb; a write costs the same at any age of the server.
(A reply recorded again under the same key keeps its place with its new time: it may then
leave up to its lifetime early, or hold expired replies behind it until it expires; a retry
that late re-executes, as it would on mongod.)

Nothing else changes: the process is secantusdb's own ``main``. When the installed
secantusdb no longer has what this fix replaces, the server runs unchanged and says so on
its standard error (the stack's log), and ``test_secantusd`` fails until the fix is
revisited.
"""

from __future__ import annotations

import sys
from typing import Any

from secantus import transactions
from secantus.cli import main as secantusd_main


def bounded_pruning(registry: Any) -> None:
    """secantusdb's ``TransactionRegistry._prune_retryable_locked``, from the front only
    (the caller holds the registry's lock, as for the original)."""
    kept: dict[Any, tuple[Any, float, bytes]] = registry._retryable
    excess = len(kept) - transactions._RETRYABLE_RECORD_MAX
    for _ in range(max(excess, 0)):
        del kept[next(iter(kept))]
    cutoff = registry._time() - transactions._RETRYABLE_RECORD_LIFETIME_SECONDS
    while kept:
        oldest = next(iter(kept))
        if kept[oldest][1] >= cutoff:
            break
        del kept[oldest]


def fix_retryable_pruning() -> bool:
    """Installs :func:`bounded_pruning` in the imported secantusdb; False (nothing changed)
    when that secantusdb does not have what it replaces."""
    registry = getattr(transactions, "TransactionRegistry", None)
    needed = ("_RETRYABLE_RECORD_MAX", "_RETRYABLE_RECORD_LIFETIME_SECONDS")
    if registry is None or not all(hasattr(transactions, name) for name in needed):
        return False
    if not hasattr(registry, "_prune_retryable_locked"):
        return False
    registry._prune_retryable_locked = bounded_pruning
    return True


def main() -> int:
    if not fix_retryable_pruning():
        print(
            "medledger: this secantusdb's retryable-write bookkeeping is not the one "
            "medledger.devstack.secantusd fixes; running it unchanged",
            file=sys.stderr,
        )
    code: int = secantusd_main(sys.argv[1:])
    return code


if __name__ == "__main__":
    sys.exit(main())
