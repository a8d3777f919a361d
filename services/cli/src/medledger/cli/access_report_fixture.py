"""A fixed access report for the tests and the README's picture: the same bytes on every
machine, so its PDF can be compared byte for byte and its first page drawn again
(``scripts/render-report-images.py access``).

The patient is the report fixtures' (:mod:`medledger.cli.report_fixtures`): their Patient and a
glucose Observation created by hospital A, read there, read by hospital B's emergency
department after it broke the glass, a consent to hospital B and a read under it, the patient
logging in and reading their access log, an export; other patients' entries and entries about
nobody in between. Every entry is blinded as the services blind them (the record's with an
opening, identity's found by their nonce alone), the subjects keyed by the patient's scan
secret, and the leaves are a log signed with the fixtures' key (:func:`fixture_policy`).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Final

from medledger.api.common.v1 import purpose_pb2
from medledger.api.ledger.v1 import ledger_pb2
from medledger.cli.report_fixtures import (
    FIXTURE_ORIGIN,
    FIXTURE_TIMESTAMP,
    fixture_resources,
    fixture_signer,
)
from medledger.common.blinding import Opening, scan_key
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.tlog import Checkpoint, leaf_hash, sign_note
from medledger.tlog.reference import root_hash
from medledger.verify.access_report import (
    FOUND_BY_NONCE,
    AccessReport,
    ListedEntry,
    listed_entry,
)

# 2026-01-05T08:00:00Z: the fixture's entries follow each other a few minutes apart.
_START: Final = 1_767_600_000
_K = ledger_pb2
_TREAT: Final = purpose_pb2.PURPOSE_OF_USE_TREAT
_ETREAT: Final = purpose_pb2.PURPOSE_OF_USE_ETREAT
_PATRQT: Final = purpose_pb2.PURPOSE_OF_USE_PATRQT
_PATIENT_USER: Final = "u-hospital-a-1"


@dataclass(frozen=True)
class _Step:
    """One ledger entry: ``owner`` 0 is the fixture patient, others another patient, None an
    entry about nobody; ``opened`` says whether the record service appended it (and lists
    its opening)."""

    kind: int
    actor: str
    organization: str
    purpose: int
    resource_type: str = ""
    resource_id: str = ""
    version: int = 0
    owner: int | None = 0
    opened: bool = True
    patient_actor: str = ""


def _steps(patient: str, observation: str) -> list[_Step]:
    a, b, er = "hospital-a-app", "hospital-b-app", "hospital-b-ed"
    return [
        _Step(_K.EVENT_KIND_TOKEN_ISSUED, a, "hospital-a", 0, "AccessToken", "t-1", owner=None),
        _Step(_K.EVENT_KIND_RECORD_CREATED, a, "hospital-a", _TREAT, "Patient", patient, 1),
        _Step(_K.EVENT_KIND_RECORD_CREATED, a, "hospital-a", _TREAT, "Patient", "other-1", 1, 1),
        _Step(_K.EVENT_KIND_RECORD_CREATED, a, "hospital-a", _TREAT, "Observation", observation, 1),
        _Step(_K.EVENT_KIND_RECORD_READ, a, "hospital-a", _TREAT, "Observation", observation, 1),
        _Step(_K.EVENT_KIND_RECORD_READ, a, "hospital-a", _TREAT, "Patient", "other-1", 1, 1),
        _Step(_K.EVENT_KIND_TOKEN_ISSUED, er, "hospital-b", 0, "AccessToken", "t-2", owner=None),
        _Step(
            _K.EVENT_KIND_BREAK_GLASS, er, "hospital-b", _ETREAT, "Observation", "bg-1", 0, 0, False
        ),
        _Step(_K.EVENT_KIND_RECORD_READ, er, "hospital-b", _ETREAT, "Observation", observation, 1),
        _Step(
            _K.EVENT_KIND_CONSENT_GRANTED, a, "hospital-a", _PATRQT, "Consent", "c-1", 1, 0, False
        ),
        _Step(
            _K.EVENT_KIND_CONSENT_GRANTED, a, "hospital-a", _PATRQT, "Consent", "c-2", 1, 2, False
        ),
        _Step(_K.EVENT_KIND_RECORD_READ, b, "hospital-b", _TREAT, "Observation", observation, 1),
        _Step(_K.EVENT_KIND_RECORD_READ, b, "hospital-b", _TREAT, "Observation", "other-obs", 1, 2),
        _Step(
            _K.EVENT_KIND_USER_LOGIN,
            _PATIENT_USER,
            "hospital-a",
            0,
            "AccessToken",
            "t-3",
            opened=False,
            patient_actor=_PATIENT_USER,
        ),
        _Step(
            _K.EVENT_KIND_RECORD_READ,
            _PATIENT_USER,
            "hospital-a",
            _PATRQT,
            "AuditEvent",
            patient_actor=_PATIENT_USER,
        ),
        _Step(_K.EVENT_KIND_RECORD_EXPORTED, a, "hospital-a", _TREAT, "Patient", patient, 1),
        _Step(_K.EVENT_KIND_TOKEN_ISSUED, b, "hospital-b", 0, "AccessToken", "t-4", owner=None),
    ]


def _digest(*parts: str) -> bytes:
    return hashlib.sha256(
        "\x00".join(("medledger access report fixture", *parts)).encode()
    ).digest()


def fixture_access_report() -> AccessReport:
    """The fixture patient's access report, complete up to a checkpoint signed with the
    fixtures' key. Runs its own event loop to sign it: call it outside one."""
    resources = fixture_resources()
    patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    observation = next(r["id"] for r in resources if r["resourceType"] == "Observation")
    pseudonyms = [_digest("pseudonym", str(n)) for n in range(3)]
    keys = [scan_key(_digest("scan secret", str(n))) for n in range(3)]
    leaves: list[bytes] = []
    listed: list[ListedEntry] = []
    for index, step in enumerate(_steps(patient, observation)):
        entry = ledger_pb2.LedgerEntry(
            kind=step.kind,  # type: ignore[arg-type]
            actor=step.actor,
            organization=step.organization,
            purpose=step.purpose,  # type: ignore[arg-type]
        )
        entry.time.FromSeconds(_START + 240 * index)
        opening = None
        if step.owner is None:
            entry.resource.CopyFrom(
                ledger_pb2.ResourceRef(type=step.resource_type, id=step.resource_id)
            )
        else:
            opening = Opening.derived(
                _digest("salt", str(index)),
                pseudonyms[step.owner],
                step.resource_type,
                step.resource_id,
                step.version,
                step.patient_actor,
                scan_key=keys[step.owner],
            )
            event = blinded_event(
                LedgerEvent(
                    kind=step.kind,  # type: ignore[arg-type]
                    actor=step.actor,
                    organization=step.organization,
                    resource_type=step.resource_type,
                    resource_id=step.resource_id,
                    resource_version=step.version,
                ),
                opening,
            )
            entry.subject = event.subject
            entry.actor = event.actor
            entry.nonce = opening.nonce
            if event.resource_type:
                entry.resource.CopyFrom(
                    ledger_pb2.ResourceRef(type=event.resource_type, id=event.resource_id)
                )
        data = entry.SerializeToString(deterministic=True)
        leaves.append(data)
        if step.owner == 0 and opening is not None:
            shown = opening if step.opened else None
            listed.append(
                listed_entry(
                    index,
                    entry,
                    found_by=FOUND_BY_NONCE,
                    salt=shown.salt if shown else b"",
                    resource_id=shown.resource_id if shown else "",
                    resource_version=shown.resource_version if shown else 0,
                    patient_actor=shown.patient_actor if shown else "",
                )
            )
    body = Checkpoint(FIXTURE_ORIGIN, len(leaves), root_hash([leaf_hash(x) for x in leaves]))
    note = asyncio.run(sign_note(body.body(), [fixture_signer()]))
    return AccessReport(
        patient_id=patient,
        generated_at=FIXTURE_TIMESTAMP,
        checkpoint=note,
        pseudonym=pseudonyms[0],
        first_index=0,
        leaves=tuple(leaves),
        entries=tuple(listed),
        scan_key=keys[0],
    )
