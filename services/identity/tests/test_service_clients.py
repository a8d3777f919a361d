"""The services' own clients: identity registers them with their Vault public keys, and a
service gets a token by a client assertion signed inside Vault (no private key anywhere)."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.errors import MedledgerError
from medledger.common.scopes import LEDGER_APPEND, WITNESS_ADD, service_client_id
from medledger.common.service_tokens import ServiceTokenSource
from medledger.common.vault import VaultTransit
from medledger.common.vault_layout import SERVICE_CLIENT_KEYS
from medledger.identity.bootstrap import BootstrapPlan


async def test_service_client_gets_a_token_signed_in_vault(
    make_identity: Any, vault_server: Any
) -> None:
    identity = await make_identity(
        bootstrap=BootstrapPlan(organization="medledger", service_clients=("ledger", "record"))
    )
    address = f"127.0.0.1:{identity.server.port}"

    opened: list[ServiceTokenSource] = []

    def source(service: str, scope: str) -> ServiceTokenSource:
        # Each service signs with its own key, holding its own Vault token.
        token = vault_server.token_for(service)
        opened.append(
            ServiceTokenSource(
                VaultTransit(VaultSettings(addr=vault_server.addr, token=token)),
                SERVICE_CLIENT_KEYS[service],
                service_client_id(service),
                address,
                ServiceSettings(),
                scope=scope,
            )
        )
        return opened[-1]

    ledger_tokens = source("ledger", WITNESS_ADD)
    token = await ledger_tokens()
    assert await ledger_tokens() == token  # cached until shortly before it expires
    principal = await identity.runtime.verifier.verify(token, "/any/Method")
    assert principal.client_id == "medledger-ledger"
    assert WITNESS_ADD in principal.scopes
    record_token = await source("record", LEDGER_APPEND)()
    assert LEDGER_APPEND in (await identity.runtime.verifier.verify(record_token, "/x")).scopes
    # A service cannot obtain scopes beyond its role.
    with pytest.raises(MedledgerError):
        await source("ledger", LEDGER_APPEND)()
    # And a service identity asks for must have been registered.
    with pytest.raises(MedledgerError):
        await source("inference", LEDGER_APPEND)()
    for one in opened:
        await one.aclose()
