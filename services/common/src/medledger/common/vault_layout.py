"""What medledger keeps in Vault, and who may do what with it.

The one place these names and rights are written: the stack launcher provisions from it and
the chart's operators write the same policies (``policy_hcl``). Each service has its own
policy, naming only its own keys and the operations it performs with them; no service may
rotate, export or delete a key: rotation is the operators' (``OPERATOR_POLICY``). Witnesses
are other organisations: each has its own transit mount, key and policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

TRANSIT_MOUNT: Final = "transit"
KV_MOUNT: Final = "secret"
KV_PREFIX: Final = "medledger"
OPERATOR_POLICY: Final = "medledger-operator"
# Periodic: never expires while renewed within this period (each `medledger dev up` renews it).
TOKEN_PERIOD: Final = "768h"  # noqa: S105 (a duration, not a secret)

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
# The per-deployment HMAC key of the ledger's patient pseudonyms (KV v2, under KV_MOUNT).
SUBJECT_KEY_PATH: Final = f"{KV_PREFIX}/ledger-subject-key"
# The record's key of its keyed digests: patient pseudonyms and blind indexes (KV v2). Outside
# the record's own folder, so its policy can deny replacing or deleting it.
RECORD_INDEX_KEY_PATH: Final = f"{KV_PREFIX}/record-index-key"

Operation = Literal["sign", "encrypt", "decrypt", "rewrap", "datakey", "read"]
"""What a policy lets a service do with a transit key; ``read`` is the key's public part."""


def witness_mount(witness: str) -> str:
    """A witness organisation's own transit mount."""
    return f"transit-{witness}"


@dataclass(frozen=True)
class TransitKey:
    name: str
    type: str
    mount: str = TRANSIT_MOUNT


@dataclass(frozen=True)
class ServiceVault:
    """What one service may use: transit keys (name -> operations) and KV v2 paths under
    ``KV_MOUNT`` (path -> capabilities; a path ending in ``/*`` is a folder of its own)."""

    keys: Mapping[str, tuple[Operation, ...]]
    kv: Mapping[str, tuple[str, ...]]


_SIGNER: Final[tuple[Operation, ...]] = ("sign", "read")
_OWN_FOLDER: Final = ("create", "read", "update", "patch", "delete")
# Created once (by provisioning or the first service to need it), never overwritten: without
# "update" no service can replace the key and unlink every pseudonym already ledgered (or,
# for the record's index key, every pseudonym and blind index already stored).
_SUBJECT_KEY: Final = ("create", "read")


def _kv(service: str, *, subject_key: bool) -> Mapping[str, tuple[str, ...]]:
    paths: dict[str, tuple[str, ...]] = {f"{KV_PREFIX}/{service}/*": _OWN_FOLDER}
    if subject_key:
        paths[SUBJECT_KEY_PATH] = _SUBJECT_KEY
    return MappingProxyType(paths)


SERVICE_VAULT: Final[Mapping[str, ServiceVault]] = MappingProxyType(
    {
        "identity": ServiceVault(
            MappingProxyType(
                {
                    IDENTITY_TOKEN_KEY: _SIGNER,
                    IDENTITY_SECRETS_KEY: ("encrypt", "decrypt"),
                    # It registers the calling services as clients by their public keys.
                    **{key: ("read",) for key in SERVICE_CLIENT_KEYS.values()},
                }
            ),
            _kv("identity", subject_key=True),
        ),
        "ledger": ServiceVault(
            MappingProxyType(
                {LEDGER_CHECKPOINT_KEY: _SIGNER, SERVICE_CLIENT_KEYS["ledger"]: _SIGNER}
            ),
            _kv("ledger", subject_key=False),  # it never sees a patient id
        ),
        "record": ServiceVault(
            MappingProxyType(
                {
                    RECORD_PATIENT_KEK: ("datakey", "encrypt", "decrypt", "rewrap"),
                    SERVICE_CLIENT_KEYS["record"]: _SIGNER,
                }
            ),
            MappingProxyType(
                {**_kv("record", subject_key=True), RECORD_INDEX_KEY_PATH: _SUBJECT_KEY}
            ),
        ),
        "inference": ServiceVault(
            MappingProxyType({SERVICE_CLIENT_KEYS["inference"]: _SIGNER}),
            _kv("inference", subject_key=True),
        ),
        "witness-a": ServiceVault(MappingProxyType({WITNESS_A_KEY: _SIGNER}), MappingProxyType({})),
        "witness-b": ServiceVault(MappingProxyType({WITNESS_B_KEY: _SIGNER}), MappingProxyType({})),
    }
)
WITNESS_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {"witness-a": WITNESS_A_KEY, "witness-b": WITNESS_B_KEY}
)

TRANSIT_KEYS: Final[Mapping[str, TransitKey]] = MappingProxyType(
    {
        key.name: key
        for key in (
            TransitKey(LEDGER_CHECKPOINT_KEY, "ed25519"),
            TransitKey(IDENTITY_TOKEN_KEY, "ed25519"),
            TransitKey(RECORD_PATIENT_KEK, "aes256-gcm96"),
            TransitKey(IDENTITY_SECRETS_KEY, "aes256-gcm96"),
            *(TransitKey(key, "ed25519") for key in SERVICE_CLIENT_KEYS.values()),
            *(TransitKey(key, "ed25519", witness_mount(w)) for w, key in WITNESS_KEYS.items()),
        )
    }
)
TRANSIT_MOUNTS: Final = tuple(dict.fromkeys(key.mount for key in TRANSIT_KEYS.values()))


def policy_name(service: str) -> str:
    """The Vault policy (and, in the chart, the Kubernetes auth role) of ``service``."""
    if service not in SERVICE_VAULT:
        raise KeyError(f"no Vault policy for {service!r}")
    return f"medledger-{service}"


class _Rules:
    def __init__(self) -> None:
        self.rules: list[str] = []

    def add(self, path: str, *capabilities: str) -> None:
        caps = ", ".join(f'"{c}"' for c in capabilities)
        self.rules.append(f'path "{path}" {{\n  capabilities = [{caps}]\n}}')

    def hcl(self) -> str:
        return "\n\n".join(self.rules) + "\n"


def _transit_rules(rules: _Rules, key: TransitKey, operation: Operation) -> None:
    base = key.mount
    if operation == "sign":
        rules.add(f"{base}/sign/{key.name}", "update")
        rules.add(f"{base}/sign/{key.name}/*", "update")  # the optional hash algorithm
    elif operation == "datakey":
        rules.add(f"{base}/datakey/+/{key.name}", "update")  # plaintext | wrapped
    elif operation == "read":
        rules.add(f"{base}/keys/{key.name}", "read")
    else:
        rules.add(f"{base}/{operation}/{key.name}", "update")


def policy_hcl(service: str) -> str:
    """The policy ``service`` runs under: its own keys, for its own operations, and its own
    KV paths; nothing else (no rotation, export, deletion or configuration of any key)."""
    access = SERVICE_VAULT[service]
    rules = _Rules()
    for name, operations in access.keys.items():
        for operation in operations:
            _transit_rules(rules, TRANSIT_KEYS[name], operation)
    for path, capabilities in access.kv.items():
        rules.add(f"{KV_MOUNT}/data/{path}", *capabilities)
        if path.endswith("/*"):
            rules.add(f"{KV_MOUNT}/metadata/{path}", "read", "list")
    return rules.hcl()


def operator_policy_hcl() -> str:
    """medledger's operators: read and rotate medledger's keys (old versions keep
    verifying); read the witnesses' public keys, to configure the ledger with them. The
    operators can neither sign, decrypt, nor rotate another organisation's key."""
    rules = _Rules()
    for key in TRANSIT_KEYS.values():
        rules.add(f"{key.mount}/keys/{key.name}", "read")
        if key.mount == TRANSIT_MOUNT:
            rules.add(f"{key.mount}/keys/{key.name}/rotate", "update")
    return rules.hcl()
