"""Random keys kept in Vault's KV store, for keyed digests computed in the service (patient
pseudonyms, blind indexes): made once by whichever replica needs one first, never replaced.

Vault policies give these paths ``create`` and ``read`` only (``vault_layout``), so a
service can neither overwrite nor delete a key that every stored digest depends on; the
check-and-set write makes concurrent creators agree on one value.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import secrets

from medledger.common.errors import FailedPrecondition
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import KV_MOUNT


async def held_key(vault: VaultTransit, path: str, *, size: int = 32) -> bytes:
    """The ``size``-byte key at ``path`` (field ``key``, base64), created if missing."""
    stored = await vault.read_secret(path, mount=KV_MOUNT)
    if stored is None:
        fresh = base64.b64encode(secrets.token_bytes(size)).decode()
        # A creator that lost the race is refused (no update right) or told so (cas=0).
        with contextlib.suppress(FailedPrecondition):
            await vault.create_secret(path, {"key": fresh}, mount=KV_MOUNT)
        stored = await vault.read_secret(path, mount=KV_MOUNT)
    try:
        key = base64.b64decode(str((stored or {})["key"]), validate=True)
    except (KeyError, binascii.Error):
        key = b""
    if len(key) != size:
        raise FailedPrecondition("a key kept in vault is missing or malformed", reason="HELD_KEY")
    return key
