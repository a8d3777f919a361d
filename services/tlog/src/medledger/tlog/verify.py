"""RFC 9162 proof verification, written step by step from §2.1.3.2 and §2.1.4.2.

This module is the independent check on everything the ledger serves: it shares no code with
the proof builder, the compact range or the tile code, and not even the hashing helpers, so a
bug there cannot hide itself here. Step numbers in comments are the RFC's.
"""

import hashlib
import hmac
from collections.abc import Sequence

from medledger.tlog.errors import ProofError

_HASH_SIZE = 32


def _hash_children(left: bytes, right: bytes) -> bytes:
    # HASH(0x01 || left || right), RFC 9162 §2.1.1; deliberately not imported from ``hashing``.
    return hashlib.sha256(b"\x01" + left + right).digest()


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != _HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, not {_HASH_SIZE}")


def _check_proof(proof: Sequence[bytes]) -> None:
    for position, value in enumerate(proof):
        _check_hash(f"proof hash {position}", value)


def _check_root(what: str, calculated: bytes, expected: bytes) -> None:
    if not hmac.compare_digest(calculated, expected):
        raise ProofError(
            f"calculated {what} {calculated.hex()} does not match the expected {expected.hex()}"
        )


def root_from_inclusion_proof(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` gives for leaf ``index`` with ``leaf_hash`` in a tree of ``size``.

    Raises ``ProofError`` if the proof cannot belong to such a leaf at all (wrong length, index
    outside the tree, malformed hashes). Comparing the result with a trusted root is the
    caller's job; ``verify_inclusion`` does both.
    """
    _check_hash("leaf hash", leaf_hash)
    _check_proof(proof)
    # 1. leaf_index must be below tree_size.
    if index < 0 or index >= size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    # 2. fn = leaf_index, sn = tree_size - 1.
    fn, sn = index, size - 1
    # 3. r = hash.
    r = leaf_hash
    # 4. for each p in the inclusion path:
    for position, p in enumerate(proof):
        # a. sn == 0 with hashes left: the proof is too long.
        if sn == 0:
            raise ProofError(
                f"proof has {len(proof)} hashes, but the path to the root ends after {position}"
            )
        # b. p is a left sibling if fn is a right child, or if fn is on the right border.
        if fn & 1 or fn == sn:
            r = _hash_children(p, r)
            # ii. skip the levels where the border node has no sibling.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _hash_children(r, p)
        # c. one level up.
        fn >>= 1
        sn >>= 1
    # 5. the path must have reached the root.
    if sn != 0:
        raise ProofError(f"proof has {len(proof)} hashes, too few to reach the root")
    return r


def verify_inclusion(
    leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``proof`` shows leaf ``index`` with ``leaf_hash`` is in the tree with ``root``.

    Raises ``ProofError`` saying what is wrong; returns nothing when the proof holds.
    """
    _check_hash("root hash", root)
    calculated = root_from_inclusion_proof(leaf_hash, index, size, proof)
    _check_root("root", calculated, root)


def _check_sizes(size1: int, size2: int, proof: Sequence[bytes]) -> None:
    # §2.1.4.2 is defined for 0 < first < second; equal sizes need no proof, and no proof can
    # start from the empty tree (any tree extends it).
    if size1 < 0 or size2 < size1:
        raise ProofError(f"size1 {size1} must be in 0..size2 ({size2})")
    if size1 == 0:
        raise ProofError("a consistency proof from the empty tree is meaningless")
    if size1 == size2 and proof:
        raise ProofError(f"sizes are equal ({size1}) but the proof has {len(proof)} hashes")
    # 1. an empty path fails.
    if size1 != size2 and not proof:
        raise ProofError(f"empty proof between different sizes {size1} and {size2}")


def root_from_consistency_proof(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes
) -> bytes:
    """The root of tree ``size2`` that ``proof`` gives, after checking it against ``root1``.

    Raises ``ProofError`` unless the proof reconstructs ``root1`` for ``size1``; the result must
    still be compared with a trusted root of ``size2`` (``verify_consistency`` does both).
    """
    _check_hash("first root hash", root1)
    _check_proof(proof)
    _check_sizes(size1, size2, proof)
    if size1 == size2:
        return root1
    # 2. if first is a power of two, its root is the first path element.
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = size1 - 1, size2 - 1
    # 4. skip the levels where the old tree's last node is a right child.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first element.
    fr = sr = path[0]
    # 6. for each later element c:
    for position, c in enumerate(path[1:], start=1):
        # a. sn == 0 with hashes left: the proof is too long.
        if sn == 0:
            raise ProofError(
                f"proof has {len(path)} path hashes, but the path to the root ends after {position}"
            )
        # b. c is a left sibling for both trees, or a right sibling for the new tree only.
        if fn & 1 or fn == sn:
            fr = _hash_children(c, fr)
            sr = _hash_children(c, sr)
            # iii. skip the levels where the border node has no sibling.
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _hash_children(sr, c)
        # c. one level up.
        fn >>= 1
        sn >>= 1
    # 7. both roots must come out, and the path must reach the new root.
    if sn != 0:
        raise ProofError(f"proof has {len(proof)} hashes, too few to reach the second root")
    _check_root("first root", fr, root1)
    return sr


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Check that the tree ``(size2, root2)`` extends ``(size1, root1)`` using ``proof``.

    Raises ``ProofError`` saying what is wrong; returns nothing when the proof holds.
    """
    _check_hash("second root hash", root2)
    calculated = root_from_consistency_proof(size1, size2, proof, root1)
    _check_root("second root", calculated, root2)
