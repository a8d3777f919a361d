"""identity's ledger entries (the ``IdentityEvents`` port): ids and salted commitments only,
never PHI.

Entries about a patient (consent granted and revoked, break-glass) go through the patient
log (:mod:`medledger.common.patient_log`): each is blinded with its own salt (subject,
resource id, and the actor when the patient acts), and indexed under the patient in
identity's database, encrypted, so that no two of them can be linked from the ledger alone.

One idempotency-key scheme for all of them, ``identity:<event>:<resource id>[:<version>]``:
a retry of the same event on the same resource reuses its key, so the ledger keeps one
entry however often identity retries.
"""

from __future__ import annotations

import hashlib
from typing import Final

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.ledger_client import LedgerClient, LedgerEvent
from medledger.common.patient_log import PatientLog
from medledger.identity.domain.access import BreakGlassRecord
from medledger.identity.domain.consent import Consent, GrantorRole
from medledger.identity.domain.ports import Receipt

# A break-glass access waits for its entry: a short bound, the clinician is waiting.
BREAK_GLASS_TIMEOUT: Final = 5.0
_MAX_KEY_LENGTH: Final = 128  # the ledger's bound on idempotency keys


def idempotency_key(event: str, resource_id: str, version: int | None = None) -> str:
    """The key of ``event`` on ``resource_id`` (and ``version``, for versioned resources)."""
    key = f"identity:{event}:{resource_id}"
    if version is not None:
        key += f":{version}"
    if len(key) > _MAX_KEY_LENGTH:  # a long id: still one key per event, within bounds
        key = f"identity:{event}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"
    return key


class LedgerEvents:
    def __init__(self, ledger: LedgerClient, patients: PatientLog) -> None:
        self._ledger = ledger
        self._patients = patients

    async def consent_granted(
        self, consent: Consent, organization: str, commitment: bytes
    ) -> Receipt:
        by_patient = consent.terms.grantor_role is GrantorRole.PATIENT
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_CONSENT_GRANTED,
            actor=consent.recorded_by,
            organization=organization,
            resource_type="Consent",
            resource_id=consent.consent_id,
            resource_version=1,
            content_commitment=commitment,
            purpose=purpose_pb2.PURPOSE_OF_USE_PATRQT,
        )
        receipt = await self._patients.append(
            consent.terms.patient_id,
            event,
            patient_actor=consent.recorded_by if by_patient else "",
            idempotency_key=idempotency_key("consent-granted", consent.consent_id),
        )
        return receipt.SerializeToString()

    async def consent_revoked(
        self, consent: Consent, organization: str, *, by_patient: bool
    ) -> Receipt:
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_CONSENT_REVOKED,
            actor=consent.revoked_by,
            organization=organization,
            resource_type="Consent",
            resource_id=consent.consent_id,
            resource_version=2,
            purpose=purpose_pb2.PURPOSE_OF_USE_PATRQT,
        )
        receipt = await self._patients.append(
            consent.terms.patient_id,
            event,
            patient_actor=consent.revoked_by if by_patient else "",
            idempotency_key=idempotency_key("consent-revoked", consent.consent_id),
        )
        return receipt.SerializeToString()

    async def break_glass(self, record: BreakGlassRecord) -> int:
        # The audit record keeps the leaf index, so auditors join the two; the reason is in
        # the entry only as a salted commitment.
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_BREAK_GLASS,
            actor=record.principal_id,
            organization=record.organization,
            resource_type=record.resource_type,
            resource_id=record.record_id,
            content_commitment=record.commitment(),
            purpose=purpose_pb2.PURPOSE_OF_USE_ETREAT,
        )
        receipt = await self._patients.append(
            record.patient_id,
            event,
            idempotency_key=idempotency_key("break-glass", record.record_id),
            timeout=BREAK_GLASS_TIMEOUT,
        )
        return int(receipt.leaf_index)

    async def token_issued(self, client_id: str, organization: str, jti: str) -> None:
        await self._ledger.append(
            LedgerEvent(
                kind=ledger_pb2.EVENT_KIND_TOKEN_ISSUED,
                actor=client_id,
                organization=organization,
                resource_type="AccessToken",
                resource_id=jti,
            ),
            idempotency_key=idempotency_key("token-issued", jti),
        )

    async def user_login(
        self, user_id: str, organization: str, jti: str, *, patient_id: str = ""
    ) -> None:
        event = LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_USER_LOGIN,
            actor=user_id,
            organization=organization,
            resource_type="AccessToken",
            resource_id=jti,
        )
        key = idempotency_key("user-login", jti)
        if patient_id:
            # A patient's login is about them: blinded like their other entries (actor too),
            # and listed in their own access log.
            await self._patients.append(
                patient_id, event, patient_actor=user_id, idempotency_key=key
            )
        else:
            await self._ledger.append(event, idempotency_key=key)

    async def key_rotated(self, actor: str, organization: str, key_name: str, version: int) -> None:
        await self._ledger.append(
            LedgerEvent(
                kind=ledger_pb2.EVENT_KIND_KEY_ROTATED,
                actor=actor,
                organization=organization,
                resource_type="SigningKey",
                resource_id=key_name,
                resource_version=version,
            ),
            idempotency_key=idempotency_key("key-rotated", key_name, version),
        )
