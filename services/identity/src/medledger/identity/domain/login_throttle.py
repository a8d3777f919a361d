"""Throttling of password logins by where they come from, instead of locking accounts.

Locking an account after a few failures lets anyone lock anyone out (admins included), and an
account that answers "locked" tells that it exists. Identity slows down the source instead:

- per source and username: ``free_failures`` failed attempts at once, then each waits twice as
  long as the one before, from ``first_delay`` up to ``max_delay``; a successful login clears it,
  and a quiet ``forget_after`` forgets it;
- per source, whatever the username: at most ``source_attempts`` attempts per ``source_window``
  (password spraying, floods of made-up names).

An attempt is counted before its password is hashed, in one atomic step shared by every
replica, so attempts sent in parallel cannot get past a limit together. The counters never
depend on whether the username exists: a throttled caller learns only what it did itself.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from medledger.common.errors import ResourceExhausted
from medledger.identity.domain.ports import LoginAttempts


@dataclass(frozen=True)
class ThrottlePolicy:
    free_failures: int = 5
    first_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=15)
    forget_after: timedelta = timedelta(hours=24)
    source_attempts: int = 60
    source_window: timedelta = timedelta(minutes=1)


def _key(kind: str, *parts: str) -> str:
    # Hashed: bounded in size whatever the username, and no addresses kept in clear.
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"{kind}:{digest}"


class LoginThrottle:
    def __init__(
        self,
        attempts: LoginAttempts,
        policy: ThrottlePolicy,
        clock: Callable[[], datetime],
    ) -> None:
        self._attempts = attempts
        self._policy = policy
        self._clock = clock

    async def admit(self, source: str, username: str) -> None:
        """Counts a login attempt of ``username`` from ``source`` as a failure until
        :meth:`succeeded` says otherwise; ResourceExhausted (LOGIN_THROTTLED, with when to
        retry) when the source must wait first."""
        policy, now = self._policy, self._clock()
        until = await self._attempts.take(
            _key("source", source),
            now=now,
            limit=policy.source_attempts,
            window=policy.source_window,
        )
        if until is None:
            until = await self._attempts.count_failure(
                _key("login", source, username),
                now=now,
                free=policy.free_failures,
                first_delay=policy.first_delay,
                max_delay=policy.max_delay,
                forget_after=policy.forget_after,
            )
        if until is not None:
            wait = max(1, math.ceil((until - now).total_seconds()))
            raise ResourceExhausted(
                "too many login attempts from here; retry later",
                reason="LOGIN_THROTTLED",
                retry_after_seconds=wait,
            )

    async def succeeded(self, source: str, username: str) -> None:
        await self._attempts.clear(_key("login", source, username))
