"""Entries with a nonce are found by the patient's scan key and pseudonym: a scan of a log
mixing several patients' entries (and entries about nobody, entries from before nonces, and
entries keyed by the legacy scan key of a patient without a scan secret) finds all and only one
patient's; the pseudonym alone (what the deployment's subject key and the patient id make)
finds none of the entries keyed by a scan secret, and all of the legacy ones; the same salt
makes the same entry; the offline verifier's derivation (medledger.verify.blinding) is the
services' own."""

from __future__ import annotations

import dataclasses
import os
import random

from hypothesis import given
from hypothesis import strategies as st

from medledger.api.ledger.v1 import ledger_pb2
from medledger.common.blinding import (
    NONCE_SIZE,
    Opening,
    entry_nonce,
    finds,
    legacy_scan_key,
    opens,
    scan_key,
)
from medledger.common.ledger_client import LedgerEvent
from medledger.common.patient_log import blinded_event
from medledger.verify import blinding as offline
from medledger.verify.blinding import salted_subject, scanned_subject

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
    # Four patients with a scan secret, one (created before scan secrets) without.
    patients = [(os.urandom(32), os.urandom(32)) for _ in range(4)] + [(os.urandom(32), None)]
    log: list[tuple[ledger_pb2.LedgerEntry, bytes | None]] = []
    for n in range(400):
        pseudonym, secret = chooser.choice(patients)
        key = scan_key(secret) if secret is not None else legacy_scan_key(pseudonym)
        roll = chooser.random()
        if roll < 0.1:  # about nobody (a token issued, a model registered)
            log.append((ledger_pb2.LedgerEntry(kind=ledger_pb2.EVENT_KIND_TOKEN_ISSUED), None))
        elif roll < 0.2:  # from before nonces: keyed by its salt alone
            legacy = Opening(os.urandom(32), pseudonym, "Observation", f"obs-{n}", 1)
            log.append((entry_for(legacy), None))
        else:
            opening = Opening.derived(
                os.urandom(32), pseudonym, "Observation", f"obs-{n}", 1, scan_key=key
            )
            log.append((entry_for(opening), pseudonym))
    for patient, secret in patients:
        key = scan_key(secret) if secret is not None else legacy_scan_key(patient)
        found = [i for i, (entry, _) in enumerate(log) if finds(entry, patient, key)]
        theirs = [i for i, (_, owner) in enumerate(log) if owner == patient]
        assert found == theirs
        assert theirs  # the check above is not vacuous
        offline_key = (
            offline.scan_key(secret) if secret is not None else offline.legacy_scan_key(patient)
        )
        assert offline_key == key
        scanned = [
            i
            for i, (entry, _) in enumerate(log)
            if entry.nonce and entry.subject == scanned_subject(offline_key, patient, entry.nonce)
        ]
        assert scanned == theirs
        # Who can recompute the pseudonym (the subject key and the patient id) but does not
        # hold the scan secret finds nothing of a patient with one, and all of one without.
        by_pseudonym = [
            i for i, (entry, _) in enumerate(log) if finds(entry, patient, legacy_scan_key(patient))
        ]
        assert by_pseudonym == ([] if secret is not None else theirs)


@given(salts, salts, st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_the_nonce_is_fixed_by_the_salt_and_opens(
    salt: bytes, other: bytes, pseudonym: bytes, secret: bytes
) -> None:
    key = scan_key(secret)
    opening = Opening.derived(salt, pseudonym, "Observation", "obs-1", 2, "u-patient", scan_key=key)
    again = Opening.derived(salt, pseudonym, "Observation", "obs-1", 2, "u-patient", scan_key=key)
    assert len(opening.nonce) == NONCE_SIZE
    assert opening.nonce == entry_nonce(salt)
    entry = entry_for(opening)
    assert entry.SerializeToString(deterministic=True) == entry_for(again).SerializeToString(
        deterministic=True
    )
    assert opens(entry, opening)
    assert finds(entry, pseudonym, key)
    assert not finds(entry, os.urandom(32), key)
    assert not finds(entry, pseudonym, scan_key(os.urandom(32)))
    if secret != pseudonym:
        assert not finds(entry, pseudonym, legacy_scan_key(pseudonym))
    # The subject is keyed by neither the salt itself nor the pseudonym alone.
    assert entry.subject != salted_subject(salt, pseudonym)
    # Its subject salt opens it (what an access log reveals of it).
    assert entry.subject == salted_subject(opening.subject_salt(), pseudonym)
    if other != salt:
        elsewhere = Opening.derived(other, pseudonym, "Observation", "obs-1", 2, scan_key=key)
        assert entry_for(elsewhere).subject != entry.subject
    # Another scan key (or none) does not open it.
    assert not opens(entry, dataclasses.replace(opening, scan_key=scan_key(os.urandom(32))))
    assert not opens(entry, dataclasses.replace(opening, scan_key=b""))
    # An opening without the nonce (or with another) does not open it.
    legacy = Opening(salt, pseudonym, "Observation", "obs-1", 2, "u-patient")
    assert not opens(entry, legacy)
    stripped = ledger_pb2.LedgerEntry()
    stripped.CopyFrom(entry)
    stripped.nonce = os.urandom(NONCE_SIZE)
    assert not opens(stripped, opening)
    assert not finds(stripped, pseudonym, key)


def test_an_entry_from_before_nonces_is_opened_not_found() -> None:
    pseudonym = os.urandom(32)
    legacy = Opening(os.urandom(32), pseudonym, "Consent", "c-1", 1)
    entry = entry_for(legacy)
    assert not entry.nonce
    assert opens(entry, legacy)
    assert not finds(entry, pseudonym, legacy_scan_key(pseudonym))
    assert entry.subject == salted_subject(legacy.salt, pseudonym)
