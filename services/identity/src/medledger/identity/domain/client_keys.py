"""Partner clients' public keys (RFC 7517 JWK / JWKS) and what they may sign with.

Accepted: OKP Ed25519 (EdDSA), EC P-256 (ES256), RSA of at least 2048 bits (RS256/384/512,
PS256/384/512). Symmetric keys, other curves, and any private member are refused: a
client registers only what verifies its signatures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from medledger.common.bounded_json import parse_json
from medledger.common.errors import FieldViolation, InvalidArgument

MAX_KEYS: Final = 10
MAX_JWKS_BYTES: Final = 32 * 1024
MIN_RSA_BITS: Final = 2048
PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Algorithms a client assertion may use, by key type (never none, never HMAC).
ALGORITHMS_BY_KEY_TYPE: Final[Mapping[str, frozenset[str]]] = {
    "OKP": frozenset({"EdDSA", "Ed25519"}),
    "EC": frozenset({"ES256"}),
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
}
ASSERTION_ALGORITHMS: Final = frozenset().union(*ALGORITHMS_BY_KEY_TYPE.values())


class RefusedKey(ValueError):
    """Why a key is refused (a client-safe description)."""


def _check_members(entry: Any) -> str:
    """Checks a key's JWK members; returns its key type."""
    if not isinstance(entry, dict):
        raise RefusedKey("each key must be a JSON object")
    if PRIVATE_MEMBERS & entry.keys():
        raise RefusedKey("must hold public keys only (no private or symmetric key members)")
    kty = entry.get("kty")
    if not isinstance(kty, str) or kty not in ALGORITHMS_BY_KEY_TYPE:
        raise RefusedKey("key type must be OKP (Ed25519), EC (P-256) or RSA")
    if entry.get("use", "sig") != "sig":
        raise RefusedKey('key "use" must be "sig"')
    alg = entry.get("alg")
    if alg is not None and alg not in ALGORITHMS_BY_KEY_TYPE[kty]:
        raise RefusedKey('key "alg" does not suit its key type')
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= 128):
        raise RefusedKey('key "kid" must be a string of 1 to 128 characters')
    if kty == "OKP" and entry.get("crv") != "Ed25519":
        raise RefusedKey("OKP keys must use the Ed25519 curve")
    if kty == "EC" and entry.get("crv") != "P-256":
        raise RefusedKey("EC keys must use the P-256 curve")
    return kty


def _check_key(entry: Any) -> None:
    kty = _check_members(entry)
    try:
        if kty == "OKP":
            OKPKey.import_key(entry)
        elif kty == "EC":
            ECKey.import_key(entry)
        else:
            raw = RSAKey.import_key(entry).raw_value
            if not isinstance(raw, RSAPublicKey) or raw.key_size < MIN_RSA_BITS:
                raise RefusedKey(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    except RefusedKey:
        raise
    except (JoseError, ValueError, TypeError):
        raise RefusedKey("is not a valid public key") from None


def validate_client_jwks(text: str, field: str) -> str:
    """The client's keys as a JWKS JSON document, or InvalidArgument naming ``field``."""

    def refuse(description: str) -> InvalidArgument:
        return InvalidArgument([FieldViolation(field, description)])

    if not text:
        raise refuse("is required")
    if len(text.encode()) > MAX_JWKS_BYTES:
        raise refuse(f"must be at most {MAX_JWKS_BYTES} bytes")
    try:
        document = parse_json(text)
    except ValueError:
        raise refuse("must be a JWK or a JWKS in JSON") from None
    if not isinstance(document, dict):
        raise refuse("must be a JWK or a JWKS in JSON")
    keys = document.get("keys") if "keys" in document else [document]
    if not isinstance(keys, list) or not 0 < len(keys) <= MAX_KEYS:
        raise refuse(f"must hold 1 to {MAX_KEYS} keys")
    try:
        for entry in keys:
            _check_key(entry)
    except RefusedKey as exc:
        raise refuse(str(exc)) from None
    kids = [k.get("kid") for k in keys]
    if len(keys) > 1 and (None in kids or len(set(kids)) != len(kids)):
        raise refuse('with several keys, each needs its own "kid"')
    return json.dumps({"keys": keys}, separators=(",", ":"), sort_keys=True)


def client_key_set(jwks_json: str) -> KeySet:
    """The stored (already validated) keys of a client."""
    return KeySet.import_key_set(parse_json(jwks_json))
