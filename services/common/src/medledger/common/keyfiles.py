"""Client key files: a private JWK (0600, for ``medledger token``) and its public JWKS (what
identity registers for the client).

Keys are OKP Ed25519, EC P-256 or RSA (at least 2048 bits), the kinds identity accepts for
client assertions. Generated keys carry their RFC 7638 thumbprint as ``kid``, so identity
picks the registered key by id and a rotated key never shadows the old one.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey

ClientKey = OKPKey | ECKey | RSAKey

PRIVATE_FILE_MODE: Final = 0o600
PUBLIC_FILE_MODE: Final = 0o644
KEYS_DIR_MODE: Final = 0o700
MIN_RSA_BITS: Final = 2048
# The algorithm a client assertion is signed with, by key type, when the key names none.
DEFAULT_ALGORITHMS: Final = {"OKP": "EdDSA", "EC": "ES256", "RSA": "RS256"}
ALLOWED_ALGORITHMS: Final = {
    "OKP": frozenset({"EdDSA", "Ed25519"}),
    "EC": frozenset({"ES256"}),
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
}


class KeyFileError(ValueError):
    """The key file cannot be used; the message says why (never the key itself)."""


def _private_key(document: Any, path: Path) -> ClientKey:
    if isinstance(document, dict) and isinstance(document.get("keys"), list):
        keys = document["keys"]
        if len(keys) != 1:
            raise KeyFileError(f"{path}: a JWKS key file must hold exactly one key")
        document = keys[0]
    if not isinstance(document, dict):
        raise KeyFileError(f"{path}: not a JWK (a JSON object)")
    kty = document.get("kty")
    try:
        if kty == "OKP" and document.get("crv") == "Ed25519":
            key: ClientKey = OKPKey.import_key(document)
        elif kty == "EC" and document.get("crv") == "P-256":
            key = ECKey.import_key(document)
        elif kty == "RSA":
            key = RSAKey.import_key(document)
        else:
            raise KeyFileError(
                f"{path}: the key must be OKP Ed25519, EC P-256 or RSA (found kty={kty!r})"
            )
    except (JoseError, ValueError, TypeError) as error:
        if isinstance(error, KeyFileError):
            raise
        raise KeyFileError(f"{path}: not a valid {kty} key ({type(error).__name__})") from None
    if not key.is_private:
        raise KeyFileError(f"{path}: holds a public key; a private key (with 'd') is needed")
    if isinstance(key, RSAKey) and key.raw_value.key_size < MIN_RSA_BITS:
        raise KeyFileError(f"{path}: RSA keys must have at least {MIN_RSA_BITS} bits")
    return key


def load_private_key(path: Path) -> ClientKey:
    """The private key in the JWK (or one-key JWKS) file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such file") from None
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read it ({error.strerror})") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a JWK (not UTF-8 text)") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise KeyFileError(f"{path}: not a JWK (not JSON)") from None
    return _private_key(document, path)


def signing_algorithm(key: ClientKey) -> str:
    """The JWS algorithm for ``key``: its own ``alg`` member, or the default for its type."""
    named = key.get("alg")
    if isinstance(named, str) and named:
        if named not in ALLOWED_ALGORITHMS[key.key_type]:
            raise KeyFileError(f"the key's alg {named!r} does not suit a {key.key_type} key")
        return named
    return DEFAULT_ALGORITHMS[key.key_type]


def public_jwks(*keys: ClientKey) -> str:
    """The public half of ``keys`` as a JWKS, the form identity registers."""
    return json.dumps({"keys": [k.as_dict(private=False) for k in keys]}, indent=2) + "\n"


def new_client_key() -> OKPKey:
    """A fresh Ed25519 signing key, its thumbprint as ``kid``."""
    key = OKPKey.generate_key("Ed25519", parameters={"use": "sig"})
    return OKPKey.import_key({**key.as_dict(private=True), "kid": key.thumbprint()})


def _write(path: Path, text: str, mode: int) -> None:
    """Writes ``path`` atomically, created with ``mode``: a secret never exists with wider
    permissions, not even for a moment."""
    path.parent.mkdir(mode=KEYS_DIR_MODE, parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_private(path: Path, text: str) -> None:
    """A secret file, readable by its owner only (0600)."""
    _write(path, text, PRIVATE_FILE_MODE)


def write_public(path: Path, text: str) -> None:
    _write(path, text, PUBLIC_FILE_MODE)


def restrict(path: Path) -> None:
    """Makes an existing secret file 0600 again if someone widened it."""
    if stat.S_IMODE(path.stat().st_mode) != PRIVATE_FILE_MODE:
        path.chmod(PRIVATE_FILE_MODE)


@dataclass(frozen=True)
class KeyPair:
    """A client's key files, and whether this run created the private key."""

    client_id: str
    private_file: Path
    public_file: Path
    key: ClientKey
    created: bool

    @property
    def jwks_json(self) -> str:
        return public_jwks(self.key)


def ensure_key_pair(client_id: str, private_file: Path, public_file: Path) -> KeyPair:
    """The client's key pair, generated on the first call and reused after: an existing
    private key is never replaced (identity holds its public half). The public JWKS is
    rewritten from the private key when missing or different."""
    created = not private_file.exists()
    if created:
        key: ClientKey = new_client_key()
        write_private(private_file, json.dumps(key.as_dict(private=True), indent=2) + "\n")
    else:
        restrict(private_file)
        key = load_private_key(private_file)
    jwks = public_jwks(key)
    if not public_file.is_file() or public_file.read_text(encoding="utf-8") != jwks:
        write_public(public_file, jwks)
    return KeyPair(client_id, private_file, public_file, key, created)


def ensure_secret(path: Path, make: Callable[[], str]) -> tuple[str, bool]:
    """The secret stored at ``path`` (0600), made with ``make()`` on the first call."""
    if path.exists():
        restrict(path)
        return path.read_text(encoding="utf-8").rstrip("\r\n"), False
    secret = make()
    write_private(path, secret + "\n")
    return secret, True
