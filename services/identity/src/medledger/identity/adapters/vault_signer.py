"""Access-token signing inside Vault transit: the Ed25519 private key never leaves Vault.

We build the JWS signing input (RFC 7515 §5.1) and Vault signs it. The header names the
key version by ``kid``: the RFC 7638 thumbprint of that version's public JWK, so the id
is stable, derived from public material only, and the same on every replica. Vault signs
with its latest version; if that is not the one the header named (another replica
rotated meanwhile), we learn the new keys and sign again.

The JWKS lists the current version and the previous one, so tokens signed just before a
rotation keep verifying until they expire.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Final

from joserfc.jwk import OKPKey

from medledger.common.errors import FailedPrecondition
from medledger.common.vault import VaultTransit

ALGORITHM: Final = "EdDSA"
PUBLISHED_VERSIONS: Final = 2  # current + previous


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _compact_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class KeyVersion:
    version: int
    kid: str
    jwk: dict[str, str]


def key_version(version: int, public_key: bytes) -> KeyVersion:
    jwk: dict[str, str] = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(public_key)}
    kid = OKPKey.import_key(dict(jwk)).thumbprint()
    return KeyVersion(version, kid, {**jwk, "kid": kid, "use": "sig", "alg": ALGORITHM})


class VaultTokenSigner:
    def __init__(self, vault: VaultTransit, key: str) -> None:
        self._vault = vault
        self._key = key
        self._versions: dict[int, KeyVersion] = {}

    @property
    def key_name(self) -> str:
        return self._key

    async def refresh(self) -> dict[int, KeyVersion]:
        keys = await self._vault.public_keys(self._key)
        if not keys:
            raise FailedPrecondition("the token signing key has no public key", reason="NO_KEY")
        versions = {version: key_version(version, public) for version, public in keys.items()}
        self._versions = versions
        return versions

    async def _latest(self) -> KeyVersion:
        versions = self._versions or await self.refresh()
        return versions[max(versions)]

    async def current_version(self) -> int:
        return (await self._latest()).version

    async def sign(self, claims: dict[str, object]) -> str:
        payload = _b64url(_compact_json(claims))
        for _ in range(3):
            current = await self._latest()
            header = _b64url(_compact_json({"alg": ALGORITHM, "kid": current.kid, "typ": "JWT"}))
            signing_input = f"{header}.{payload}"
            signature = await self._vault.sign(self._key, signing_input.encode("ascii"))
            if signature.key_version == current.version:
                return f"{signing_input}.{_b64url(signature.signature)}"
            await self.refresh()  # rotated elsewhere: name the version that signs
        raise FailedPrecondition("the token signing key keeps changing", reason="KEY_UNSTABLE")

    async def jwks(self) -> str:
        """Read from Vault each time, so a rotation by any replica shows at once."""
        versions = await self.refresh()
        published = sorted(versions, reverse=True)[:PUBLISHED_VERSIONS]
        return json.dumps({"keys": [versions[v].jwk for v in published]}, separators=(",", ":"))

    async def rotate(self) -> str:
        await self._vault.rotate(self._key)
        versions = await self.refresh()
        return versions[max(versions)].kid
