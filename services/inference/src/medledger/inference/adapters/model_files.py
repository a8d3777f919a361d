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


def _sha256(path: Path) -> bytes | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return digest.digest()


class ModelFiles:
    def __init__(self, repository: Path) -> None:
        self._repository = repository

    def path(self, name: str, version: int) -> Path:
        """``<repository>/<name>/<version>/model.onnx`` (the name is a checked model name:
        no separators, never '.' or '..')."""
        return self._repository / name / str(version) / MODEL_FILE

    async def sha256(self, name: str, version: int) -> bytes | None:
        # Models may be large: hashed off the event loop.
        try:
            return await asyncio.to_thread(_sha256, self.path(name, version))
        except OSError as error:  # unreadable: the volume, not the caller
            raise Unavailable("model repository") from error
