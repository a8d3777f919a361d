"""Per-entry blinding of what links ledger entries to a patient.

The ledger is readable by every partner holding ``ledger.read``. A pseudonym shared by all of
a patient's entries (or a consent id shared by its GRANTED and REVOKED entries, or the
patient's own user id as the actor) lets anyone who learns one entry follow every other. So
each entry about a patient gets a fresh 32-byte salt, and every field that would be the same
across that patient's entries is replaced by an HMAC keyed by that salt:

- ``subject``     = HMAC-SHA-256(salt, "medledger.subject" 0x00 || pseudonym), where the
  pseudonym is :meth:`~medledger.common.subject.SubjectHasher.subject` (the patient id under
  the deployment's key), which is never ledgered itself;
- ``resource.id`` = hex HMAC-SHA-256(salt, "medledger.resource" 0x00 || type 0x00 || id 0x00
  || version), and ``resource.version`` 0 (the type stays: it is shared by every patient);
- ``actor``       = "patient:" + hex HMAC-SHA-256(salt, "medledger.actor" 0x00 || user id)
  when the patient acts on their own record (a clinician or client stays in clear: it is
  accountable, and names no patient).

The subject is keyed differently, so that completeness can be checked (docs/access-report.md):
each entry about a patient also carries a public 16-byte ``nonce`` = SHA-256("medledger.nonce"
0x00 || salt)[:16] (a function of the secret salt, so a retried write appends the very same
bytes), and

- ``scan key``     = HMAC-SHA-256(key = the patient's scan secret, "medledger.scan" 0x00);
- ``subject salt`` = HMAC-SHA-256(key = scan key, "medledger.salt" 0x00 || nonce);
- ``subject``      = HMAC-SHA-256(subject salt, "medledger.subject" 0x00 || pseudonym).

The **scan secret** is 32 random bytes of the patient's own, made by the record service with
the patient's Patient and handed to identity (RegisterPatientHolder); each keeps it only in the
patient's leaf index (:mod:`medledger.common.patient_log`), which erasure destroys. Whoever
holds the scan key and the pseudonym (the patient, through their access report; an auditor
given it) tests every entry of the ledger and finds exactly that patient's entries; nobody
without the scan key can, not even one who can recompute the pseudonym (the deployment's
subject key and the patient's id), once erasure destroyed the secret.

Entries written for a patient with no scan secret known (a patient created before scan secrets;
identity's entries about a patient the record service has not registered) are keyed by the
**legacy** scan key, :func:`legacy_scan_key` = the same HMAC keyed by the pseudonym itself: they
stay findable by whoever can recompute the pseudonym, erasure or not. Entries appended before
nonces existed have none: their subject is keyed by the salt itself, and only their opening
shows whose they are.

Without the salt (or, for the subject, the scan key) these values are uniformly random to a
reader. The service that owns the patient keeps each salt, encrypted, in the patient's leaf
index: it can list the patient's entries, and prove one is about the patient by revealing its
:class:`Opening`, which anyone checks with :func:`opens` against the public entry. Destroying
the index (erasure) destroys the salts, the stored pseudonyms and the scan secret: the
resources, the patient's actor ids and the subjects can no longer be opened or found by anyone.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from medledger.api.ledger.v1 import ledger_pb2

SALT_SIZE: Final = 32
NONCE_SIZE: Final = 16
SCAN_SECRET_SIZE: Final = 32
PATIENT_ACTOR_PREFIX: Final = "patient:"

_SUBJECT: Final = b"medledger.subject\x00"
_RESOURCE: Final = b"medledger.resource\x00"
_ACTOR: Final = b"medledger.actor\x00"
_NONCE: Final = b"medledger.nonce\x00"
_SCAN: Final = b"medledger.scan\x00"
_SCAN_SALT: Final = b"medledger.salt\x00"


def _mac(salt: bytes, label: bytes, *parts: str | bytes) -> bytes:
    message = label + b"\x00".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(salt, message, hashlib.sha256).digest()


def entry_nonce(salt: bytes) -> bytes:
    """The public nonce of the entry blinded with ``salt``: one-way, so it reveals nothing of
    the salt, and fixed by it, so the same salt makes the same entry."""
    return hashlib.sha256(_NONCE + salt).digest()[:NONCE_SIZE]


def scan_key(scan_secret: bytes) -> bytes:
    """What tests entries for the patient whose scan secret is ``scan_secret``: whoever holds
    it (and the pseudonym) finds all their entries."""
    return hmac.new(scan_secret, _SCAN, hashlib.sha256).digest()


def legacy_scan_key(pseudonym: bytes) -> bytes:
    """The scan key of entries written for a patient with no scan secret known: keyed by the
    pseudonym, so recomputable by whoever holds the deployment's subject key and the patient
    id, even after erasure."""
    return scan_key(pseudonym)


def subject_salt(key: bytes, nonce: bytes) -> bytes:
    """The key of the subject of the entry with ``nonce``, about the patient whose scan key
    is ``key``."""
    return hmac.new(key, _SCAN_SALT + nonce, hashlib.sha256).digest()


@dataclass(frozen=True)
class Opening:
    """What proves one entry is about a patient: its salt, the patient's pseudonym and scan
    key, and the clear values of the fields blinded in it."""

    salt: bytes
    pseudonym: bytes
    resource_type: str = ""
    resource_id: str = ""
    resource_version: int = 0
    # The patient's own user id when the patient acted; "" otherwise.
    patient_actor: str = ""
    # The entry's public nonce (:func:`entry_nonce` of the salt); b"" for an entry appended
    # before nonces, whose subject is keyed by the salt.
    nonce: bytes = b""
    # The scan key the subject salt was derived with (the patient's, or the legacy one of
    # the pseudonym); b"" for an entry without a nonce.
    scan_key: bytes = b""

    @classmethod
    def derived(
        cls,
        salt: bytes,
        pseudonym: bytes,
        resource_type: str = "",
        resource_id: str = "",
        resource_version: int = 0,
        patient_actor: str = "",
        *,
        scan_key: bytes,
    ) -> Opening:
        """The opening of a new entry: its nonce from its salt, its subject from the scan key,
        the nonce and the pseudonym (findable by whoever holds the scan key and pseudonym)."""
        return cls(
            salt,
            pseudonym,
            resource_type,
            resource_id,
            resource_version,
            patient_actor,
            entry_nonce(salt),
            scan_key,
        )

    def subject_salt(self) -> bytes:
        """The key of the entry's subject: derived from the scan key and the nonce, or (an
        entry from before nonces) the salt itself. Revealing it opens this entry's subject
        and no other's."""
        if not self.nonce:
            return self.salt
        if not self.scan_key:
            raise ValueError("an opening with a nonce needs the scan key its subject used")
        return subject_salt(self.scan_key, self.nonce)

    def subject(self) -> bytes:
        return _mac(self.subject_salt(), _SUBJECT, self.pseudonym)

    def resource(self) -> ledger_pb2.ResourceRef | None:
        if not self.resource_type:
            return None
        blinded = _mac(
            self.salt,
            _RESOURCE,
            self.resource_type,
            self.resource_id,
            str(self.resource_version),
        )
        return ledger_pb2.ResourceRef(type=self.resource_type, id=blinded.hex(), version=0)

    def actor(self) -> str:
        """The blinded actor; "" when the patient did not act."""
        if not self.patient_actor:
            return ""
        return PATIENT_ACTOR_PREFIX + _mac(self.salt, _ACTOR, self.patient_actor).hex()


def finds(entry: ledger_pb2.LedgerEntry, pseudonym: bytes, key: bytes) -> bool:
    """Whether ``entry`` is about the patient with ``pseudonym`` whose scan key is ``key``, by
    its nonce alone (False for an entry without one: only its opening tells)."""
    if not entry.nonce or not entry.subject:
        return False
    expected = _mac(subject_salt(key, entry.nonce), _SUBJECT, pseudonym)
    return hmac.compare_digest(entry.subject, expected)


def opens(entry: ledger_pb2.LedgerEntry, opening: Opening) -> bool:
    """Whether ``opening`` shows that ``entry`` is about the patient with its pseudonym (and
    about its resource, and by the patient when it says so). Constant-time comparisons."""
    if len(opening.salt) != SALT_SIZE or (opening.nonce and len(opening.scan_key) != SALT_SIZE):
        return False
    # An opening with another nonce (or one for an entry from before nonces) is not this one's.
    same_nonce = hmac.compare_digest(entry.nonce, opening.nonce)
    if not same_nonce or not hmac.compare_digest(entry.subject, opening.subject()):
        return False
    resource = opening.resource()
    if resource is not None:
        if not entry.HasField("resource"):
            return False
        if (entry.resource.type, entry.resource.version) != (resource.type, resource.version):
            return False
        if not hmac.compare_digest(entry.resource.id.encode(), resource.id.encode()):
            return False
    actor = opening.actor()
    return not actor or hmac.compare_digest(entry.actor.encode(), actor.encode())
