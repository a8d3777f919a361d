"""How the record service blinds a resource version in its ledger entry, recomputed offline.

An entry about a patient's resource version never names the resource: its ``resource.id`` is
an HMAC keyed by a salt of that entry alone (see ``medledger.common.blinding``), and the record
service derives that salt from the version's commitment salt, which an export reveals. So
whoever holds the export recomputes the blinded id and sees the entry is about exactly this
resource and version; whoever holds only the ledger sees 64 random hex digits.

- ``blinding_salt`` = SHA-256(``"medledger.record ledger blinding salt v1"`` 0x00 ||
  commitment salt), 32 bytes;
- ``resource.id``   = lowercase hex HMAC-SHA-256(key = blinding salt, message =
  ``"medledger.resource"`` 0x00 || type 0x00 || id 0x00 || version in decimal), UTF-8.

A hash of the commitment salt reveals nothing of it, so publishing one salt's uses does not
open the other.

The inference service blinds its INFERENCE_MADE entries the same way, with its own label
(:func:`prediction_blinding_salt`): the entry's ``resource`` is ``RiskAssessment`` and the
prediction's id blinded with a salt derived from the prediction's commitment salt
(docs/prediction-format.md).

The subject of an entry about a patient is found, not opened (docs/access-report.md): the entry
carries a public ``nonce``, and whoever holds the patient's 32-byte pseudonym and scan key
(an access report carries both) computes

- ``scan key``     = HMAC-SHA-256(key = the patient's scan secret, ``"medledger.scan"`` 0x00)
  (the secret is 32 random bytes the services keep until erasure; a report carries the key);
- ``subject salt`` = HMAC-SHA-256(key = scan key, ``"medledger.salt"`` 0x00 || nonce);
- ``subject``      = HMAC-SHA-256(key = subject salt, ``"medledger.subject"`` 0x00 ||
  pseudonym),

so testing every entry of the log finds exactly the patient's entries. Entries written for a
patient with no scan secret known use the **legacy** scan key, the same HMAC keyed by the
pseudonym itself (:func:`legacy_scan_key`): anyone who can recompute the pseudonym finds
those, even after erasure. An entry from before nonces has none; its subject is
HMAC-SHA-256(key = the entry's salt, ``"medledger.subject"`` 0x00 || pseudonym), and only
whoever holds that salt can tell it is the patient's.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

BLINDING_SALT_LABEL: Final = b"medledger.record ledger blinding salt v1\x00"
PREDICTION_BLINDING_SALT_LABEL: Final = b"medledger.inference ledger blinding salt v1\x00"
RESOURCE_LABEL: Final = b"medledger.resource\x00"
SUBJECT_LABEL: Final = b"medledger.subject\x00"
ACTOR_LABEL: Final = b"medledger.actor\x00"
SCAN_LABEL: Final = b"medledger.scan\x00"
SCAN_SALT_LABEL: Final = b"medledger.salt\x00"
BLINDING_SALT_SIZE: Final = 32
PATIENT_ACTOR_PREFIX: Final = "patient:"


def record_blinding_salt(commitment_salt: bytes) -> bytes:
    """The salt that blinds the ledger entry of the version whose commitment ``commitment_salt``
    opens."""
    return hashlib.sha256(BLINDING_SALT_LABEL + commitment_salt).digest()


def prediction_blinding_salt(commitment_salt: bytes) -> bytes:
    """The salt that blinds the INFERENCE_MADE entry of the prediction whose commitment
    ``commitment_salt`` opens: SHA-256(``"medledger.inference ledger blinding salt v1"`` 0x00
    || commitment salt)."""
    return hashlib.sha256(PREDICTION_BLINDING_SALT_LABEL + commitment_salt).digest()


def blinded_resource_id(salt: bytes, resource_type: str, resource_id: str, version: int) -> str:
    """The ``resource.id`` an entry blinded with ``salt`` carries for ``type/id`` at
    ``version``: 64 lowercase hex digits."""
    if len(salt) != BLINDING_SALT_SIZE:
        raise ValueError(f"a blinding salt is {BLINDING_SALT_SIZE} bytes, not {len(salt)}")
    message = RESOURCE_LABEL + b"\x00".join(
        part.encode() for part in (resource_type, resource_id, str(version))
    )
    return hmac.new(salt, message, hashlib.sha256).hexdigest()


def scan_key(scan_secret: bytes) -> bytes:
    """The key that tests entries for the patient whose scan secret is ``scan_secret``."""
    return hmac.new(scan_secret, SCAN_LABEL, hashlib.sha256).digest()


def legacy_scan_key(pseudonym: bytes) -> bytes:
    """The key that tests the entries written for the patient with ``pseudonym`` while no
    scan secret of theirs was known."""
    return scan_key(pseudonym)


def scanned_subject(key: bytes, pseudonym: bytes, nonce: bytes) -> bytes:
    """The subject of the entry with ``nonce`` about the patient whose pseudonym is
    ``pseudonym`` and whose scan key is ``key`` (:func:`scan_key`, computed once per scan)."""
    salt = hmac.new(key, SCAN_SALT_LABEL + nonce, hashlib.sha256).digest()
    return hmac.new(salt, SUBJECT_LABEL + pseudonym, hashlib.sha256).digest()


def salted_subject(salt: bytes, pseudonym: bytes) -> bytes:
    """The subject of an entry without a nonce, blinded with its own ``salt``."""
    return hmac.new(salt, SUBJECT_LABEL + pseudonym, hashlib.sha256).digest()


def blinded_actor(salt: bytes, user_id: str) -> str:
    """The ``actor`` of an entry blinded with ``salt`` when the patient (``user_id``) acted."""
    digest = hmac.new(salt, ACTOR_LABEL + user_id.encode(), hashlib.sha256).hexdigest()
    return PATIENT_ACTOR_PREFIX + digest
