"""The logs a witness follows, from their C2SP verifier keys.

A log's key name is its checkpoint origin (as C2SP tlog-checkpoint recommends), so the vkey
alone says which checkpoints the key may sign. Several keys may name the same origin: a log
that rotates its key is trusted under the old and the new one while checkpoints signed by
either are still around.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from medledger.tlog import Ed25519Verifier, NoteError, VerifierKey, open_note


class TrustedLogs:
    """Origin → the Ed25519 (type 0x01) keys trusted to sign that log's checkpoints."""

    def __init__(self, verifiers: Iterable[Ed25519Verifier]) -> None:
        by_origin: dict[str, list[Ed25519Verifier]] = {}
        for verifier in verifiers:
            keys = by_origin.setdefault(verifier.name, [])
            if any(known.key_id == verifier.key_id for known in keys):
                raise ValueError(f"a key of {verifier.name} is listed twice")
            keys.append(verifier)
        self._by_origin: Mapping[str, tuple[Ed25519Verifier, ...]] = MappingProxyType(
            {origin: tuple(keys) for origin, keys in by_origin.items()}
        )

    @classmethod
    def from_vkeys(cls, vkeys: Iterable[str]) -> TrustedLogs:
        """Parses each vkey; raises ``ValueError`` saying which one is wrong, without quoting
        it (a private key pasted by mistake must not end up in a log)."""
        verifiers = []
        for position, text in enumerate(vkeys, start=1):
            try:
                verifiers.append(Ed25519Verifier.from_vkey(VerifierKey.parse(text.strip())))
            except ValueError as error:
                raise ValueError(
                    f"entry {position} is not a C2SP verifier key of an Ed25519 (type 0x01) "
                    "log key: <origin>+<8 hex digits key id>+<base64(0x01 || public key)>"
                ) from error
        return cls(verifiers)

    @property
    def origins(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_origin))

    def follows(self, origin: str) -> bool:
        return origin in self._by_origin

    def verify(self, origin: str, note: bytes) -> bool:
        """Whether ``note`` carries a valid signature by one of ``origin``'s keys, and no
        invalid one (signatures by keys we do not know are ignored, as the spec says)."""
        try:
            open_note(note, self._by_origin.get(origin, ()))
        except NoteError:
            return False
        return True
