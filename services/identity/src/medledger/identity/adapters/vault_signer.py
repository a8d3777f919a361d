"""Access-token signing inside Vault transit: the Ed25519 private key never leaves Vault.

We build the JWS signing input (RFC 7515 §5.1) and Vault signs it. The header names the
key version by ``kid``: the RFC 7638 thumbprint of that version's public JWK, so the id
is stable, derived from public material only, and the same on every replica. Vault signs
with its latest version; if that is not the one the header named (another replica
rotated meanwhile), we learn the new keys and sign again.

The JWKS lists the current version and the previous one, so tokens signed just before a
rotation keep verifying until they expire.

Identity's own Vault policy cannot rotate its key: an operator does, in Vault
(``bao write -f transit/keys/identity-token/rotate`` under ``medledger-operator``), and an admin
then calls RotateSigningKey, which ledgers the rotation and publishes the new version
(:meth:`VaultTokenSigner.rotate`).
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
        # The newest version whose rotation this signer has published (ledgered): the one Vault
        # had when we first looked, then each one ``rotate`` adopted.
        self._published: int | None = None

    @property
    def key_name(self) -> str:
        return self._key

    async def refresh(self) -> dict[int, KeyVersion]:
        keys = await self._vault.public_keys(self._key)
        if not keys:
            raise FailedPrecondition("the token signing key has no public key", reason="NO_KEY")
        versions = {version: key_version(version, public) for version, public in keys.items()}
        self._versions = versions
        if self._published is None:
            self._published = max(versions)
        return versions

    async def _latest(self) -> KeyVersion:
        versions = self._versions or await self.refresh()
        return versions[max(versions)]

    async def current_version(self) -> int:
        return (await self._latest()).version

    async def _published_version(self) -> int:
        if self._published is None:
            await self.refresh()
        assert self._published is not None
        return self._published

    async def next_version(self) -> int:
        """The version an operator created by rotating the key in Vault, which ``rotate``
        publishes (identity may not rotate the key itself). Refused while Vault has none newer
        than the last one published: the operator rotates first."""
        published = await self._published_version()
        latest = max(await self.refresh())
        if latest <= published:
            raise FailedPrecondition(
                f"no new version of {self._key} to publish: an operator rotates it in Vault "
                "first (policy medledger-operator)",
                reason="KEY_NOT_ROTATED",
            )
        return latest

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
        """Publishes ``next_version``; returns its kid."""
        version = await self.next_version()
        self._published = version
        return self._versions[version].kid
