"""Sealing a resource version under its patient's data key (AES-256-GCM).

Each version is sealed twice, with fresh random 96-bit nonces: its *content* at prepare
time and its ledger *receipt* at commit time. The associated data names what is sealed
(``content`` or ``receipt``), the resource (by its keyed digest of type and id, which is
how the database names it), the version and the patient's pseudonym, so a ciphertext moved
to another version, resource, patient or part, or one whose stored version number or
resource was changed, fails authentication: every such change is DATA_LOSS, never another
resource's data or a wrong version.

The content holds, besides the resource JSON, its type and id (checked against the digest
it is stored under), the patient id (the RPC layer checks access before it reads the
resource), the write time, the commitment salt (erasure must shred it with the key) and the
version's blind-index tokens, so a search checks that each result really was indexed under
what was asked, whatever the index collection says.

Random nonces: a data key seals only one patient's versions, far below the 2^32 messages
at which random 96-bit GCM nonces start to risk a collision.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from medledger.common.errors import DataLoss
from medledger.record.domain.ports import Sealed, VersionSlot

NONCE_SIZE: Final = 12
KEY_SIZE: Final = 32
_FORMAT: Final = "medledger.record/v1"
Part = Literal["content", "receipt"]


def damaged() -> DataLoss:
    """The one error for stored record data that fails its checks (no detail: the client
    can do nothing with it, and the logs of the failing check are ours)."""
    return DataLoss("stored record data is damaged", reason="RECORD_DAMAGED")


def associated_data(part: Part, slot: VersionSlot, patient: bytes) -> bytes:
    return json.dumps(
        [_FORMAT, part, slot.resource.hex(), slot.version, patient.hex()],
        separators=(",", ":"),
    ).encode()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> Sealed:
    nonce = os.urandom(NONCE_SIZE)
    return Sealed(nonce, AESGCM(key).encrypt(nonce, plaintext, aad))


def unseal(key: bytes, sealed: Sealed, aad: bytes) -> bytes:
    """The plaintext, or DataLoss when the key, nonce, ciphertext or associated data is
    not the one it was sealed with."""
    if len(key) != KEY_SIZE or len(sealed.nonce) != NONCE_SIZE:
        raise damaged()
    try:
        return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)
    except InvalidTag:
        raise damaged() from None


@dataclass(frozen=True)
class VersionContent:
    resource_type: str
    resource_id: str
    patient_id: str
    resource_json: str
    salt: bytes
    updated_time: datetime
    index_tokens: tuple[bytes, ...]


def encode_content(content: VersionContent) -> bytes:
    """A one-line JSON header, a newline, then the resource JSON as given."""
    header = json.dumps(
        {
            "resource_type": content.resource_type,
            "resource_id": content.resource_id,
            "patient_id": content.patient_id,
            "salt": base64.b64encode(content.salt).decode(),
            "updated_time": content.updated_time.isoformat(),
            "index_tokens": [base64.b64encode(t).decode() for t in content.index_tokens],
        },
        separators=(",", ":"),
    )
    return header.encode() + b"\n" + content.resource_json.encode()


def decode_content(data: bytes) -> VersionContent:
    try:
        header, resource = data.split(b"\n", 1)
        fields = json.loads(header)
        updated = datetime.fromisoformat(fields["updated_time"])
        return VersionContent(
            resource_type=str(fields["resource_type"]),
            resource_id=str(fields["resource_id"]),
            patient_id=str(fields["patient_id"]),
            resource_json=resource.decode(),
            salt=base64.b64decode(fields["salt"], validate=True),
            updated_time=updated,
            index_tokens=tuple(base64.b64decode(t, validate=True) for t in fields["index_tokens"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        # Authenticated yet unreadable: written by a version of this code that no longer
        # exists, or by a bug. Either way not an answer to give.
        raise damaged() from None
