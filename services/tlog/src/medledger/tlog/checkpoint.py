"""C2SP tlog-checkpoint: the note text that states a log's tree head.

    <origin>\\n<tree size>\\n<base64 root hash>\\n[<extension line>\\n ...]

Parsing is strict: one exact encoding per checkpoint, so two byte strings never mean the same
tree head.
"""

import base64
import binascii
import re
from dataclasses import dataclass

from medledger.tlog.errors import CheckpointError
from medledger.tlog.hashing import HASH_SIZE

_SIZE = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_MAX_SIZE = (1 << 64) - 1


def _check_line(what: str, line: str) -> None:
    if not line:
        raise CheckpointError(f"{what} is empty")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in line):
        raise CheckpointError(f"{what} contains a control character")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A log's tree head: its origin, tree size and root hash, plus opaque extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line("origin", self.origin)
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointError(f"tree size {self.size} is not a 64-bit unsigned integer")
        if len(self.root_hash) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(self.root_hash)} bytes, not {HASH_SIZE}")
        for position, line in enumerate(self.extensions):
            _check_line(f"extension line {position}", line)

    def body(self) -> bytes:
        """The note text to sign, final newline included."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root_hash).decode("ascii"),
            *self.extensions,
        ]
        return "".join(f"{line}\n" for line in lines).encode("utf-8")

    @classmethod
    def parse(cls, text: str | bytes) -> "Checkpoint":
        """The checkpoint in a note's text; raises ``CheckpointError`` on any deviation."""
        if isinstance(text, bytes):
            try:
                text = text.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CheckpointError("checkpoint is not valid UTF-8") from error
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint has {len(lines)} lines, needs at least 3")
        origin, size_line, root_line, *extensions = lines
        if len(size_line) > len(str(_MAX_SIZE)) or not _SIZE.fullmatch(size_line):
            raise CheckpointError(f"tree size {size_line!r} is not a decimal without leading zeros")
        try:
            root_hash = base64.b64decode(root_line, validate=True)
        except binascii.Error as error:
            raise CheckpointError(f"root hash {root_line!r} is not base64") from error
        if base64.b64encode(root_hash).decode("ascii") != root_line:
            raise CheckpointError(f"root hash {root_line!r} is not canonical base64")
        return cls(origin, int(size_line), root_hash, tuple(extensions))
