"""Platform scopes (beside SMART v2 resource scopes), shared by the services that demand
them and identity that grants them."""

from __future__ import annotations

from typing import Final

ADMIN: Final = "admin"
LEDGER_APPEND: Final = "ledger.append"
LEDGER_READ: Final = "ledger.read"
CHECK_ACCESS: Final = "medledger/check-access"
WITNESS_ADD: Final = "witness.add"

PLATFORM_SCOPES: Final = frozenset({ADMIN, LEDGER_APPEND, LEDGER_READ, CHECK_ACCESS, WITNESS_ADD})

# The services' own clients (client id -> scopes), registered by identity at start-up with
# the public key of the service's Vault transit key (see vault_layout.SERVICE_CLIENT_KEYS).
SERVICE_CLIENT_SCOPES: Final = {
    "ledger": (WITNESS_ADD,),
    "record": (LEDGER_APPEND, LEDGER_READ, CHECK_ACCESS),
    "inference": (LEDGER_APPEND, CHECK_ACCESS),
}


def service_client_id(service: str) -> str:
    return f"medledger-{service}"
