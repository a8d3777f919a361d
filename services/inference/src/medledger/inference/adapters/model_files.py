"""The model repository Triton serves, read by this service to hash the files Triton loads
(Triton reports no file hashes). Locally it is the folder the stack's Triton serves; in
Kubernetes the volume Triton's pods mount, mounted read-only here too
(``INFERENCE_MODEL_REPOSITORY``).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Final

from medledger.common.errors import Unavailable
from medledger.inference.domain.registration import MODEL_FILE

_CHUNK: Final = 1024 * 1024


# The file's identity as stat tells it: a replaced or rewritten file changes one of these.
_Stamp = tuple[int, int, int, int]


def _stamp(path: Path) -> _Stamp | None:
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def _sha256(path: Path) -> tuple[_Stamp, bytes] | None:
    """The file's digest and its stamp taken before reading (a file changed during the read
    gets another stamp at the next call, so a stale digest is never kept)."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return stamp, digest.digest()


class ModelFiles:
    """Every Predict asks for the served file's digest: it is hashed again only when the
    file's stat stamp (inode, size, modification and change times) differs from the last
    hash's."""

    def __init__(self, repository: Path) -> None:
        self._repository = repository
        self._digests: dict[Path, tuple[_Stamp, bytes]] = {}

    def path(self, name: str, version: int) -> Path:
        """``<repository>/<name>/<version>/model.onnx`` (the name is a checked model name:
        no separators, never '.' or '..')."""
        return self._repository / name / str(version) / MODEL_FILE

    async def sha256(self, name: str, version: int) -> bytes | None:
        path = self.path(name, version)
        try:
            stamp = await asyncio.to_thread(_stamp, path)
            if stamp is None:
                self._digests.pop(path, None)
                return None
            known = self._digests.get(path)
            if known is not None and known[0] == stamp:
                return known[1]
            # Models may be large: hashed off the event loop.
            hashed = await asyncio.to_thread(_sha256, path)
        except OSError as error:  # unreadable: the volume, not the caller
            raise Unavailable("model repository") from error
        if hashed is None:
            return None
        self._digests[path] = hashed
        return hashed[1]
