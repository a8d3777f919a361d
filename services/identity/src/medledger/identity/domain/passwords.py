"""Passwords (argon2id, RFC 9106) and TOTP second factors (RFC 6238).

Hashing is deliberately slow and memory-hard, so it runs in a worker thread. TOTP codes
are single use: a login records the time step it accepted and later logins need a later
step, so a code seen over someone's shoulder cannot be replayed within its 30 seconds.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
from datetime import datetime
from typing import Final

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH: Final = 12
MAX_PASSWORD_LENGTH: Final = 1024  # argon2 accepts more; bounded so a request cannot be a DoS
TOTP_WINDOW: Final = 1  # steps accepted either side of now (clock drift)

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile


@functools.cache
def _dummy_hash() -> str:
    """Verified when the username is unknown, so a wrong username costs as long as a
    wrong password (no user enumeration by timing)."""
    return _hasher.hash("medledger-no-such-user")


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str | None, password: str) -> tuple[bool, bool]:
    """(matches, needs rehash). ``None`` burns the same time and never matches."""

    def check() -> tuple[bool, bool]:
        try:
            _hasher.verify(password_hash or _dummy_hash(), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False, False
        if password_hash is None:
            return False, False
        return True, _hasher.check_needs_rehash(password_hash)

    return await asyncio.to_thread(check)


def new_totp_secret() -> str:
    return pyotp.random_base32()


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
