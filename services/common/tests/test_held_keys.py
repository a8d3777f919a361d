"""Keys held in Vault KV (common.held_keys) against a real OpenBao: made once, the same for
every replica, and beyond the reach of the service that uses them to replace or delete."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import hvac
import hvac.exceptions
import pytest

from medledger.common.config import VaultSettings
from medledger.common.errors import FailedPrecondition
from medledger.common.held_keys import held_key
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import KV_PREFIX, RECORD_INDEX_KEY_PATH


def vault(vault_server: Any, token: str) -> VaultTransit:
    return VaultTransit(VaultSettings(addr=vault_server.addr, token=token))


async def test_concurrent_replicas_agree_on_one_key(vault_server: Any) -> None:
    path = f"{KV_PREFIX}/record/{uuid.uuid4().hex}"
    replicas = [vault(vault_server, vault_server.token_for("record")) for _ in range(4)]
    keys = await asyncio.gather(*(held_key(r, path) for r in replicas))
    assert len(set(keys)) == 1
    assert len(keys[0]) == 32
    assert await held_key(replicas[0], path) == keys[0]


async def test_the_record_cannot_replace_or_delete_its_index_key(vault_server: Any) -> None:
    key = await held_key(
        vault(vault_server, vault_server.token_for("record")), RECORD_INDEX_KEY_PATH
    )
    record = hvac.Client(url=vault_server.addr, token=vault_server.token_for("record"))
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.kv.v2.create_or_update_secret(RECORD_INDEX_KEY_PATH, secret={"key": "x"})
    with pytest.raises(hvac.exceptions.Forbidden):
        record.secrets.kv.v2.delete_metadata_and_all_versions(RECORD_INDEX_KEY_PATH)
    for other in ("identity", "ledger", "inference"):
        with pytest.raises(FailedPrecondition):
            await held_key(
                vault(vault_server, vault_server.token_for(other)), RECORD_INDEX_KEY_PATH
            )
    assert (
        await held_key(vault(vault_server, vault_server.token_for("record")), RECORD_INDEX_KEY_PATH)
        == key
    )


async def test_a_malformed_key_is_refused(vault_server: Any) -> None:
    path = f"{KV_PREFIX}/record/{uuid.uuid4().hex}"
    root = vault_server.client()
    root.secrets.kv.v2.create_or_update_secret(path, secret={"key": "c2hvcnQ="})
    with pytest.raises(FailedPrecondition):
        await held_key(vault(vault_server, vault_server.token_for("record")), path)
