"""What medledger keeps in Vault: mounts, transit keys and the services' policy.

The one place these names are written; services and the stack launcher import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

TRANSIT_MOUNT: Final = "transit"
KV_MOUNT: Final = "secret"
KV_PREFIX: Final = "medledger"
SERVICES_POLICY: Final = "medledger-services"
# Periodic: never expires while renewed within this period (each `medledger dev up` renews it).
SERVICES_TOKEN_PERIOD: Final = "768h"  # noqa: S105 (a duration, not a secret)

LEDGER_CHECKPOINT_KEY: Final = "ledger-checkpoint"
IDENTITY_TOKEN_KEY: Final = "identity-token"  # noqa: S105 (a key name, not a secret)
WITNESS_A_KEY: Final = "witness-a"
WITNESS_B_KEY: Final = "witness-b"
RECORD_PATIENT_KEK: Final = "record-patient-kek"
IDENTITY_SECRETS_KEY: Final = "identity-secrets"
# Each calling service signs its client assertions with its own key (service -> key name).
SERVICE_CLIENT_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {"ledger": "ledger-client", "record": "record-client", "inference": "inference-client"}
)

# Transit key name -> key type.
TRANSIT_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        LEDGER_CHECKPOINT_KEY: "ed25519",
        IDENTITY_TOKEN_KEY: "ed25519",
        WITNESS_A_KEY: "ed25519",
        WITNESS_B_KEY: "ed25519",
        RECORD_PATIENT_KEK: "aes256-gcm96",
        IDENTITY_SECRETS_KEY: "aes256-gcm96",
        **{key: "ed25519" for key in SERVICE_CLIENT_KEYS.values()},
    }
)

_TRANSIT_OPERATIONS: Final = ("encrypt", "decrypt", "rewrap", "sign", "verify")


def services_policy_hcl() -> str:
    """The policy the services run under: use the transit keys (never export or delete them),
    rotate them, and read/write KV v2 entries under ``secret/data/medledger/``."""
    rules: list[str] = []

    def rule(path: str, *capabilities: str) -> None:
        caps = ", ".join(f'"{c}"' for c in capabilities)
        rules.append(f'path "{path}" {{\n  capabilities = [{caps}]\n}}')

    for key in TRANSIT_KEYS:
        for operation in _TRANSIT_OPERATIONS:
            rule(f"{TRANSIT_MOUNT}/{operation}/{key}", "update")
        # sign/verify take an optional hash algorithm suffix; datakey a plaintext|wrapped kind.
        rule(f"{TRANSIT_MOUNT}/sign/{key}/*", "update")
        rule(f"{TRANSIT_MOUNT}/verify/{key}/*", "update")
        rule(f"{TRANSIT_MOUNT}/datakey/+/{key}", "update")
        rule(f"{TRANSIT_MOUNT}/keys/{key}", "read")
        rule(f"{TRANSIT_MOUNT}/keys/{key}/rotate", "update")
    rule(f"{KV_MOUNT}/data/{KV_PREFIX}/*", "create", "read", "update", "patch", "delete")
    rule(f"{KV_MOUNT}/metadata/{KV_PREFIX}/*", "read", "list")
    return "\n\n".join(rules) + "\n"
