"""The served model file's digest: hashed once while the file stays as it is, hashed again
as soon as it is rewritten or replaced, None when it is gone."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medledger.inference.adapters.model_files import ModelFiles


async def test_the_digest_follows_the_file(tmp_path: Path) -> None:
    files = ModelFiles(tmp_path)
    path = files.path("m", 1)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first model")
    assert await files.sha256("m", 1) == hashlib.sha256(b"first model").digest()
    assert await files.sha256("m", 1) == hashlib.sha256(b"first model").digest()
    # Rewritten in place with as many bytes (size unchanged): another digest.
    path.write_bytes(b"other model")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert await files.sha256("m", 1) == hashlib.sha256(b"other model").digest()
    # Replaced by another file (a new inode).
    replacement = path.with_name("new.onnx")
    replacement.write_bytes(b"third")
    replacement.replace(path)
    assert await files.sha256("m", 1) == hashlib.sha256(b"third").digest()
    path.unlink()
    assert await files.sha256("m", 1) is None
