"""The inference service's ledger entries (the registry's ``RegistryLedger``): identifiers and
digests only, never PHI.

MODEL_REGISTERED names resource ``Model/<name>`` at the model's version and commits to the
ONNX file's SHA-256 (``content_commitment`` is the digest itself). The registry stores each
entry's bytes before appending them and resends those same bytes on a retry; the idempotency
key is their SHA-256, so one registration is one entry however often it is retried. Keyed by
the bytes, not by name and version: a registry that lost its database, or another one on the
same ledger, registering a model version again gets an entry of its own (the ledger answers a
key it knows with other bytes IDEMPOTENCY_KEY_REUSED); one name and version per registry is
the registry's to enforce (its store), not the ledger's.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.inference.domain.prediction_ledger import SealedPrediction
from medledger.inference.domain.predictor import Caller
from medledger.inference.domain.registration import ModelRegistration
from medledger.inference.domain.registry import Registrant


def registration_key(entry: bytes) -> str:
    """The idempotency key of a MODEL_REGISTERED entry: its bytes' SHA-256."""
    return f"inference:model-registered:{hashlib.sha256(entry).hexdigest()}"


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

    async def append(self, entry: bytes) -> bytes:
        receipt = await self._ledger.append_entry(
            ledger_pb2.LedgerEntry.FromString(entry),
            idempotency_key=registration_key(entry),
            timeout=self._timeout,
        )
        return receipt.SerializeToString()

    async def append_prediction(
        self, sealed: SealedPrediction, caller: Caller
    ) -> tuple[bytes, ledger_pb2.Receipt]:
        """The INFERENCE_MADE entry: the model run, committed to, about no subject (the
        RiskAssessment it names is blinded); appended under a key of its bytes."""
        entry = self._ledger.entry(
            LedgerEvent(
                kind=sealed.kind,
                actor=caller.subject,
                organization=caller.organization,
                resource_type=sealed.resource_type,
                resource_id=sealed.resource_id,
                resource_version=sealed.resource_version,
                content_commitment=sealed.commitment,
                purpose=caller.purpose,
            )
        )
        data = entry.SerializeToString(deterministic=True)
        receipt = await self._ledger.append_entry(
            ledger_pb2.LedgerEntry.FromString(data),
            idempotency_key=f"inference:prediction:{hashlib.sha256(data).hexdigest()}",
            timeout=self._timeout,
        )
        return data, receipt
