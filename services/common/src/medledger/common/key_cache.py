"""Unwrapped patient data keys, kept in memory briefly so that not every read asks Vault.

Bounded (least recently used first out) and short-lived (an entry older than the TTL is
never returned, however often it is used; expired entries are dropped at the next
insertion), so a key stays in memory only while its patient is being worked on.

An entry is found only with the wrapped key it was unwrapped from: callers read the
patient's row from Mongo on every operation and look up with what it holds, so an erasure
on any replica (the row loses its wrapped key) stops the use of a cached key at once;
``evict`` also drops it from this replica's memory. Python cannot wipe bytes, so "dropped"
means unreferenced.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

DEFAULT_MAX_KEYS: Final = 1024
DEFAULT_TTL_SECONDS: Final = 60.0


@dataclass(frozen=True)
class _Entry:
    wrapped: str
    key: bytes
    expires: float


class DataKeyCache:
    def __init__(
        self,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1 or ttl_seconds <= 0:
            raise ValueError("the key cache needs room for a key and a positive TTL")
        self._max = max_keys
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()

    def get(self, patient: bytes, wrapped: str) -> bytes | None:
        entry = self._entries.get(patient)
        if entry is None:
            return None
        if entry.wrapped != wrapped or entry.expires <= self._clock():
            del self._entries[patient]
            return None
        self._entries.move_to_end(patient)
        return entry.key

    def put(self, patient: bytes, wrapped: str, key: bytes) -> None:
        now = self._clock()
        for expired in [p for p, e in self._entries.items() if e.expires <= now]:
            del self._entries[expired]
        self._entries[patient] = _Entry(wrapped, key, now + self._ttl)
        self._entries.move_to_end(patient)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def evict(self, patient: bytes) -> None:
        self._entries.pop(patient, None)

    def __len__(self) -> int:
        return len(self._entries)
