"""Entries with a nonce are found by the patient's pseudonym alone: a scan of a log mixing
several patients' entries (and entries about nobody, and entries from before nonces) finds all
and only one patient's; the same salt makes the same entry; the offline verifier's derivation
(medledger.verify.blinding) is the services' own."""

from __future__ import annotations

import os
import random

from hypothesis import given
from hypothesis import strategies as st

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import NONCE_SIZE, Opening, entry_nonce, finds, opens
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.verify.blinding import salted_subject, scan_key, scanned_subject

salts = st.binary(min_size=32, max_size=32)


def entry_for(opening: Opening, actor: str = "dr-a") -> ledger_pb2.LedgerEntry:
    event = blinded_event(
        LedgerEvent(
            kind=ledger_pb2.EVENT_KIND_RECORD_READ,
            actor=actor,
            organization="hospital-a",
            resource_type=opening.resource_type,
            resource_id=opening.resource_id,
            resource_version=opening.resource_version,
        ),
        opening,
    )
    entry = ledger_pb2.LedgerEntry(
        kind=event.kind,
        subject=event.subject,
        actor=event.actor,
        organization=event.organization,
        nonce=opening.nonce,
    )
    if event.resource_type:
        entry.resource.CopyFrom(
            ledger_pb2.ResourceRef(type=event.resource_type, id=event.resource_id, version=0)
        )
    return entry


def test_a_scan_finds_all_and_only_the_patients_entries() -> None:
    chooser = random.Random(14)
    patients = [os.urandom(32) for _ in range(5)]
    log: list[tuple[ledger_pb2.LedgerEntry, bytes | None]] = []
    for n in range(400):
        pseudonym = chooser.choice(patients)
        roll = chooser.random()
        if roll < 0.1:  # about nobody (a token issued, a model registered)
            log.append((ledger_pb2.LedgerEntry(kind=ledger_pb2.EVENT_KIND_TOKEN_ISSUED), None))
        elif roll < 0.2:  # from before nonces: keyed by its salt alone
            legacy = Opening(os.urandom(32), pseudonym, "Observation", f"obs-{n}", 1)
            log.append((entry_for(legacy), None))
        else:
            opening = Opening.derived(os.urandom(32), pseudonym, "Observation", f"obs-{n}", 1)
            log.append((entry_for(opening), pseudonym))
    for patient in patients:
        found = [i for i, (entry, _) in enumerate(log) if finds(entry, patient)]
        theirs = [i for i, (_, owner) in enumerate(log) if owner == patient]
        assert found == theirs
        assert theirs  # the check above is not vacuous
        key = scan_key(patient)
        offline = [
            i
            for i, (entry, _) in enumerate(log)
            if entry.nonce and entry.subject == scanned_subject(key, patient, entry.nonce)
        ]
        assert offline == theirs


@given(salts, salts, st.binary(min_size=32, max_size=32))
def test_the_nonce_is_fixed_by_the_salt_and_opens(
    salt: bytes, other: bytes, pseudonym: bytes
) -> None:
    opening = Opening.derived(salt, pseudonym, "Observation", "obs-1", 2, "u-patient")
    again = Opening.derived(salt, pseudonym, "Observation", "obs-1", 2, "u-patient")
    assert len(opening.nonce) == NONCE_SIZE
    assert opening.nonce == entry_nonce(salt)
    entry = entry_for(opening)
    assert entry.SerializeToString(deterministic=True) == entry_for(again).SerializeToString(
        deterministic=True
    )
    assert opens(entry, opening)
    assert finds(entry, pseudonym)
    assert not finds(entry, os.urandom(32))
    # The subject is no longer keyed by the salt itself.
    assert entry.subject != salted_subject(salt, pseudonym)
    if other != salt:
        assert entry_for(Opening.derived(other, pseudonym, "Observation", "obs-1", 2)).subject != (
            entry.subject
        )
    # An opening without the nonce (or with another) does not open it.
    legacy = Opening(salt, pseudonym, "Observation", "obs-1", 2, "u-patient")
    assert not opens(entry, legacy)
    stripped = ledger_pb2.LedgerEntry()
    stripped.CopyFrom(entry)
    stripped.nonce = os.urandom(NONCE_SIZE)
    assert not opens(stripped, opening)
    assert not finds(stripped, pseudonym)


def test_an_entry_from_before_nonces_is_opened_not_found() -> None:
    pseudonym = os.urandom(32)
    legacy = Opening(os.urandom(32), pseudonym, "Consent", "c-1", 1)
    entry = entry_for(legacy)
    assert not entry.nonce
    assert opens(entry, legacy)
    assert not finds(entry, pseudonym)
    assert entry.subject == salted_subject(legacy.salt, pseudonym)
