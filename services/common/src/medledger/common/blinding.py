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

Without the salt these values are uniformly random to a reader. The service that owns the
patient keeps each salt, encrypted, in the patient's leaf index (:mod:`medledger.common.
patient_log`): it can list the patient's entries, and prove one is about the patient by
revealing its :class:`Opening`, which anyone checks with :func:`opens` against the public
entry. Destroying the index (erasure) destroys the salts: nobody, not even the holder of the
deployment key, can link those entries to the patient again.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from medledger.api.ledger.v1 import ledger_pb2

SALT_SIZE: Final = 32
PATIENT_ACTOR_PREFIX: Final = "patient:"

_SUBJECT: Final = b"medledger.subject\x00"
_RESOURCE: Final = b"medledger.resource\x00"
_ACTOR: Final = b"medledger.actor\x00"


def _mac(salt: bytes, label: bytes, *parts: str | bytes) -> bytes:
    message = label + b"\x00".join(p.encode() if isinstance(p, str) else p for p in parts)
    return hmac.new(salt, message, hashlib.sha256).digest()


@dataclass(frozen=True)
class Opening:
    """What proves one entry is about a patient: its salt, the patient's pseudonym, and the
    clear values of the fields blinded in it."""

    salt: bytes
    pseudonym: bytes
    resource_type: str = ""
    resource_id: str = ""
    resource_version: int = 0
    # The patient's own user id when the patient acted; "" otherwise.
    patient_actor: str = ""

    def subject(self) -> bytes:
        return _mac(self.salt, _SUBJECT, self.pseudonym)

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


def opens(entry: ledger_pb2.LedgerEntry, opening: Opening) -> bool:
    """Whether ``opening`` shows that ``entry`` is about the patient with its pseudonym (and
    about its resource, and by the patient when it says so). Constant-time comparisons."""
    if len(opening.salt) != SALT_SIZE:
        return False
    if not hmac.compare_digest(entry.subject, opening.subject()):
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
