"""The errors ``medledger.tlog`` raises for bad input from outside.

Every one is a ``ValueError``, so a caller that only wants "the input was wrong" catches one thing;
the subclasses say which check failed, and the message says exactly why.
"""


class TlogError(ValueError):
    """Base of every error about untrusted tlog data (proofs, notes, checkpoints)."""


class ProofError(TlogError):
    """An inclusion or consistency proof does not verify."""


class NoteError(TlogError):
    """A signed note is malformed, or a signature from a known key does not verify."""


class CheckpointError(TlogError):
    """A checkpoint is malformed, or is not signed as the verification policy demands."""
