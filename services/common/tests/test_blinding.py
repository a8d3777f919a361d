"""Per-entry blinding: an opening opens the entry it was made for and no other; two entries
about one patient and one resource share no blinded value."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import PATIENT_ACTOR_PREFIX, Opening, opens
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event

salts = st.binary(min_size=32, max_size=32)
ids = st.text("abcdef0123456789-", min_size=1, max_size=64)


def entry_for(opening: Opening, actor: str = "er-app") -> ledger_pb2.LedgerEntry:
    event = blinded_event(
        LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_CONSENT_REVOKED,
            actor=actor,
            organization="hospital-a",
            resource_type=opening.resource_type,
            resource_id=opening.resource_id,
            resource_version=opening.resource_version,
        ),
        opening,
    )
    entry = ledger_pb2.LedgerEntry(
        kind=event.kind, subject=event.subject, actor=event.actor, organization=event.organization
    )
    if event.resource_type:
        entry.resource.CopyFrom(
            ledger_pb2.ResourceRef(
                type=event.resource_type, id=event.resource_id, version=event.resource_version
            )
        )
    return entry


@given(salts, salts, st.binary(min_size=32, max_size=32), ids, st.integers(0, 2**40))
def test_an_opening_opens_its_entry_only(
    salt: bytes, other_salt: bytes, pseudonym: bytes, consent_id: str, version: int
) -> None:
    opening = Opening(salt, pseudonym, "Consent", consent_id, version, "u-patient")
    entry = entry_for(opening)
    assert opens(entry, opening)
    assert entry.actor.startswith(PATIENT_ACTOR_PREFIX)
    assert entry.resource.id != consent_id
    assert entry.resource.version == 0
    if other_salt != salt:
        again = Opening(other_salt, pseudonym, "Consent", consent_id, version, "u-patient")
        linked = entry_for(again)
        assert not opens(linked, opening)
        assert linked.subject != entry.subject
        assert linked.resource.id != entry.resource.id
        assert linked.actor != entry.actor
    for wrong in (
        Opening(salt, os.urandom(32), "Consent", consent_id, version, "u-patient"),
        Opening(salt, pseudonym, "Consent", consent_id + "x", version, "u-patient"),
        Opening(salt, pseudonym, "Consent", consent_id, version + 1, "u-patient"),
        Opening(salt, pseudonym, "Consent", consent_id, version, "u-someone-else"),
    ):
        assert not opens(entry, wrong)


def test_a_clinician_stays_in_clear() -> None:
    opening = Opening(os.urandom(32), os.urandom(32), "Observation", "rec-1")
    entry = entry_for(opening, actor="er-app")
    assert entry.actor == "er-app"
    assert opens(entry, opening)
    tampered = ledger_pb2.LedgerEntry()
    tampered.CopyFrom(entry)
    tampered.subject = os.urandom(32)
    assert not opens(tampered, opening)
    assert not opens(entry, Opening(b"short", opening.pseudonym, "Observation", "rec-1"))
