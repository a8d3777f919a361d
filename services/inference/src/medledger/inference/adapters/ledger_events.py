"""The inference service's ledger entries (the registry's ``RegistryLedger``): identifiers and
digests only, never PHI.

MODEL_REGISTERED names resource ``Model/<name>`` at the model's version, commits to the ONNX
file's SHA-256 (``content_commitment`` is the digest itself) and is appended under the key
``inference:model-registered:<name>:<version>``, so a version is ledgered once however often
its registration is retried.
"""

from __future__ import annotations

from datetime import datetime

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.inference.domain.registration import ModelRegistration
from medledger.inference.domain.registry import Registrant


def registration_key(registration: ModelRegistration) -> str:
    return f"inference:model-registered:{registration.name}:{registration.version}"


class LedgerEvents:
    def __init__(self, ledger: LedgerClient, *, timeout: float) -> None:
        self._ledger = ledger
        self._timeout = timeout

    def model_registered(
        self, registration: ModelRegistration, registrant: Registrant, time: datetime
    ) -> bytes:
        entry = self._ledger.entry(
            LedgerEvent(
                kind=ledger_pb2.EVENT_KIND_MODEL_REGISTERED,
                actor=registrant.subject,
                organization=registrant.organization,
                resource_type="Model",
                resource_id=registration.name,
                resource_version=registration.version,
                content_commitment=registration.digest,
            )
        )
        entry.time.FromDatetime(time)  # the registration's register_time, to the millisecond
        return entry.SerializeToString(deterministic=True)

    async def append(self, registration: ModelRegistration, entry: bytes) -> bytes:
        receipt = await self._ledger.append_entry(
            ledger_pb2.LedgerEntry.FromString(entry),
            idempotency_key=registration_key(registration),
            timeout=self._timeout,
        )
        return receipt.SerializeToString()
