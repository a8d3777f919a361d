"""RFC 9162 §2.1.1 Merkle tree hashing with SHA-256.

Leaves and interior nodes get different one-byte prefixes, so a leaf can never be passed off as an
interior node (second-preimage resistance).
"""

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
"""Bytes in every hash: SHA-256."""

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}): the root hash of the empty tree."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one leaf's data."""
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node from its two children."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def border_hash(hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash of consecutive perfect subtrees of strictly decreasing size.

    ``hashes`` are their roots, left to right, as on the right border of a tree (see
    ``nodes.root_nodes``). RFC 9162 splits such a range at its largest power of two, which is the
    first subtree, so the hash folds from the right: ``H(a, H(b, H(c, d)))``.
    """
    if not hashes:
        raise ValueError("border_hash needs at least one hash")
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result
