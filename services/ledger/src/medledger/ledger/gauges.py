"""The ledger's head as gauges: medledger.ledger.tree.size and medledger.ledger.checkpoint.age
(the catalogue's LEDGER_TREE_SIZE and LEDGER_CHECKPOINT_AGE).

Only the replica that sequences sees its checkpoints being made (the sequencer's
``on_checkpoint``), so only it reports them, from its first checkpoint on.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterable

from medledger.common.metric_catalog import LEDGER_CHECKPOINT_AGE, LEDGER_TREE_SIZE
from medledger.common.metrics import Attributes, observable_gauge
from medledger.ledger.domain.ports import StoredCheckpoint

# Every live ledger of the process (one, except in tests): one callback reads them all.
_live: weakref.WeakSet[CheckpointGauges] = weakref.WeakSet()


class CheckpointGauges:
    """Remembers the newest checkpoint this replica committed, and when."""

    def __init__(self) -> None:
        self._newest: tuple[int, float] | None = None  # (tree size, monotonic time)
        _live.add(self)

    def observe(self, checkpoint: StoredCheckpoint) -> None:
        if self._newest is None or checkpoint.size >= self._newest[0]:
            self._newest = (checkpoint.size, time.monotonic())

    @property
    def newest(self) -> tuple[int, float] | None:
        return self._newest


def _tree_sizes() -> Iterable[tuple[float, Attributes]]:
    return [(g.newest[0], {}) for g in list(_live) if g.newest is not None]


def _checkpoint_ages() -> Iterable[tuple[float, Attributes]]:
    now = time.monotonic()
    return [(now - g.newest[1], {}) for g in list(_live) if g.newest is not None]


observable_gauge(LEDGER_TREE_SIZE, _tree_sizes)
observable_gauge(LEDGER_CHECKPOINT_AGE, _checkpoint_ages)
