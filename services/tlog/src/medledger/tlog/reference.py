"""RFC 9162 §2.1 written as the RFC defines it: recursive, over the full list of leaf hashes.

This is the yardstick the fast code is tested against, and what an offline auditor uses when it
holds every leaf anyway. Each function costs O(n) hashes; nothing here reads stored nodes.
"""

from collections.abc import Sequence

from medledger.tlog.hashing import EMPTY_ROOT, node_hash


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(leaves: Sequence[bytes], begin: int, end: int) -> bytes:
    n = end - begin
    if n == 1:
        return leaves[begin]
    k = _split(n)
    return node_hash(_mth(leaves, begin, begin + k), _mth(leaves, begin + k, end))


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) (§2.1.1) for the tree whose leaf hashes are ``leaf_hashes``."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return _mth(leaf_hashes, 0, len(leaf_hashes))


def _path(m: int, leaves: Sequence[bytes], begin: int, end: int) -> list[bytes]:
    n = end - begin
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, leaves, begin, begin + k), _mth(leaves, begin + k, end)]
    return [*_path(m - k, leaves, begin + k, end), _mth(leaves, begin, begin + k)]


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (§2.1.3.1): the inclusion proof of leaf ``index``."""
    if not 0 <= index < len(leaf_hashes):
        raise ValueError(f"leaf index {index} is outside a tree of size {len(leaf_hashes)}")
    return _path(index, leaf_hashes, 0, len(leaf_hashes))


def _subproof(m: int, leaves: Sequence[bytes], begin: int, end: int, b: bool) -> list[bytes]:
    n = end - begin
    if m == n:
        return [] if b else [_mth(leaves, begin, end)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves, begin, begin + k, b), _mth(leaves, begin + k, end)]
    return [*_subproof(m - k, leaves, begin + k, end, False), _mth(leaves, begin, begin + k)]


def consistency_proof(size1: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) (§2.1.4.1): the consistency proof from size ``size1`` to the whole list."""
    if not 0 < size1 <= len(leaf_hashes):
        raise ValueError(f"size1 {size1} must be in 1..{len(leaf_hashes)}")
    return _subproof(size1, leaf_hashes, 0, len(leaf_hashes), True)
