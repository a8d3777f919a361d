"""Passwords (argon2id, RFC 9106) and TOTP second factors (RFC 6238).

Hashing is deliberately slow and memory-hard (64 MiB and a few hundred milliseconds of CPU
each), so it runs on threads of its own, few of them: anyone may ask for a login, and an
unbounded number of hashes at once would take the service past its memory limit and starve
everything else. At most ``workers`` hashes run at once and at most ``queue`` wait; beyond
that a login is refused at once (RESOURCE_EXHAUSTED, retry shortly) instead of queueing. The
hashing threads run at the lowest CPU priority (Linux nice 19, inherited by argon2's lane
threads), so the event loop and the calls that need no hash keep their share of the CPU.

TOTP codes are single use: a login records the time step it accepted and later logins need
a later step, so a code seen over someone's shoulder cannot be replayed within its 30 seconds.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Final, TypeVar

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from medledger.common.errors import ResourceExhausted

MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 1024  # argon2 accepts more; bounded so a request cannot be a DoS
TOTP_WINDOW: Final = 1  # steps accepted either side of now (clock drift)
MIN_TOTP_SECRET_BYTES: Final = 16  # RFC 4226 §4: at least 128 bits
BUSY_RETRY_SECONDS: Final = 1.0
HASHING_NICENESS: Final = 19

T = TypeVar("T")

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile: 64 MiB, t=3, p=4


@functools.cache
def _dummy_hash() -> str:
    """Verified when the username is unknown, so a wrong username costs as long as a
    wrong password (no user enumeration by timing)."""
    return _hasher.hash("medledger-no-such-user")


def _verify(password_hash: str | None, password: str) -> tuple[bool, bool]:
    try:
        _hasher.verify(password_hash or _dummy_hash(), password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, False
    if password_hash is None:
        return False, False
    return True, _hasher.check_needs_rehash(password_hash)


def _lower_priority() -> None:
    """Runs first in each hashing thread: a higher nice value for this thread only (and the
    threads it starts). Raising one's own niceness needs no privilege."""
    if sys.platform == "linux":
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASHING_NICENESS)


class Passwords:
    """argon2id hashing and verification on a bounded pool of its own."""

    def __init__(self, *, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be at least 1 and queue not negative")
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="argon2", initializer=_lower_priority
        )
        self._limit = workers + queue
        self._admitted = 0

    def check_capacity(self) -> None:
        """LOGIN_BUSY now if a hash would be refused: a login checks before any other work,
        so a flood beyond the bound costs next to nothing."""
        if self._admitted >= self._limit:
            raise ResourceExhausted(
                "too many logins at once; retry shortly",
                reason="LOGIN_BUSY",
                retry_after_seconds=BUSY_RETRY_SECONDS,
            )

    async def _run(self, work: Callable[[], T]) -> T:
        self.check_capacity()
        self._admitted += 1
        try:
            # A call cancelled while it waits leaves the queue (its hash never runs).
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        finally:
            self._admitted -= 1

    async def hash(self, password: str) -> str:
        return await self._run(functools.partial(_hasher.hash, password))

    async def verify(self, password_hash: str | None, password: str) -> tuple[bool, bool]:
        """(matches, needs rehash). ``None`` burns the same time and never matches."""
        return await self._run(functools.partial(_verify, password_hash, password))

    async def aclose(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def password_violation(password: str) -> str | None:
    """What is wrong with a new password, or None."""
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        return f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
    return None


def new_totp_secret() -> str:
    return pyotp.random_base32()


def valid_totp_secret(secret: str) -> bool:
    """A base32 secret of at least 128 bits (what an operator may supply)."""
    try:
        raw = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        return False
    return len(raw) >= MIN_TOTP_SECRET_BYTES


def provisioning_uri(secret: str, username: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=issuer)


def matching_step(secret: str, code: str, now: datetime) -> int | None:
    """The time step ``code`` belongs to, within the window around ``now``; None if none."""
    if not (code.isascii() and code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(now)
    for step in range(current - TOTP_WINDOW, current + TOTP_WINDOW + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
