"""The services' own clients: identity registers them with their Vault public keys (and
brings their scopes up to date at each start), and a service gets a token by a client
assertion signed inside Vault (no private key anywhere)."""

from __future__ import annotations

from typing import Any

import pytest

from medledger.api.common.v1 import purpose_pb2
from medledger.api.identity.v1 import identity_pb2
from medledger.common.config import ServiceSettings, VaultSettings
from medledger.common.errors import MedledgerError
from medledger.common.scopes import (
    CHECK_ACCESS,
    LEDGER_APPEND,
    LEDGER_READ,
    PATIENT_DIRECTORY,
    SERVICE_CLIENT_SCOPES,
    WITNESS_ADD,
    service_client_id,
)
from medledger.common.service_tokens import ServiceTokenSource, client_jwks
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


async def test_a_service_client_of_an_earlier_release_gets_this_releases_scopes(
    make_identity: Any, vault_server: Any
) -> None:
    """The record service's client registered before it could register patients' holders
    (medledger/patient-directory) gets that scope at identity's next start, as a local stack
    or a Helm release upgraded in place would."""
    first = await make_identity()
    admin = await first.admin()
    vault = VaultTransit(
        VaultSettings(addr=vault_server.addr, token=vault_server.token_for("identity"))
    )
    earlier = (LEDGER_APPEND, LEDGER_READ, CHECK_ACCESS)
    await first.stub.RegisterClient(
        identity_pb2.RegisterClientRequest(
            client_id=service_client_id("record"),
            organization="medledger",
            jwks_json=client_jwks(await vault.public_keys(SERVICE_CLIENT_KEYS["record"])),
            allowed_scopes=earlier,
            allowed_purposes=[purpose_pb2.PURPOSE_OF_USE_TREAT],
        ),
        metadata=admin,
    )
    upgraded = await make_identity(
        database=first.database,
        bootstrap=BootstrapPlan(organization="medledger", service_clients=("record",)),
    )
    client = await upgraded.stub.GetClient(
        identity_pb2.GetClientRequest(client_id=service_client_id("record")), metadata=admin
    )
    assert tuple(client.client.allowed_scopes) == SERVICE_CLIENT_SCOPES["record"]
    assert PATIENT_DIRECTORY in SERVICE_CLIENT_SCOPES["record"]
    # Nothing else was touched.
    assert list(client.client.allowed_purposes) == [purpose_pb2.PURPOSE_OF_USE_TREAT]
    tokens = ServiceTokenSource(
        VaultTransit(VaultSettings(addr=vault_server.addr, token=vault_server.token_for("record"))),
        SERVICE_CLIENT_KEYS["record"],
        service_client_id("record"),
        f"127.0.0.1:{upgraded.server.port}",
        ServiceSettings(),
        scope=f"{CHECK_ACCESS} {PATIENT_DIRECTORY}",
    )
    try:
        principal = await upgraded.runtime.verifier.verify(await tokens(), "/x")
    finally:
        await tokens.aclose()
    assert {CHECK_ACCESS, PATIENT_DIRECTORY} <= principal.scopes
