"""The right border of a growing tree: enough to append leaves and give the root, in O(log n).

The border of a tree of ``size`` leaves is the hashes of ``nodes.root_nodes(size)``: one perfect
subtree per set bit of ``size``. Appending a leaf merges the equal-sized subtrees at the right
end, like carrying in binary addition; each merge creates a perfect node that will never change,
and the callback reports it, so the sequencer can write it to storage (tiles) as it goes instead
of recomputing anything later. A sequencer that restarts rebuilds the border from stored node
hashes with ``CompactRange.from_border``.
"""

from collections.abc import Callable, Iterable, Sequence

from medledger.tlog.hashing import EMPTY_ROOT, HASH_SIZE, border_hash, node_hash
from medledger.tlog.nodes import NodeId, root_nodes

NodeCallback = Callable[[int, int, bytes], None]
"""Called as ``(level, index, hash)`` for each perfect node an append creates, leaf included."""


class CompactRange:
    """The roots of the perfect subtrees covering leaves ``[0, size)``, largest first."""

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_border(cls, size: int, hashes: Sequence[bytes]) -> "CompactRange":
        """The border of a tree of ``size`` leaves from the hashes of ``root_nodes(size)``."""
        expected = len(root_nodes(size))
        if len(hashes) != expected:
            raise ValueError(
                f"a tree of size {size} has {expected} border nodes, not {len(hashes)}"
            )
        for position, value in enumerate(hashes):
            if len(value) != HASH_SIZE:
                raise ValueError(f"border hash {position} is {len(value)} bytes, not {HASH_SIZE}")
        compact = cls()
        compact._size = size
        compact._hashes = list(hashes)
        return compact

    @property
    def size(self) -> int:
        """Number of leaves covered."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Hashes of ``root_nodes(size)``, in that order."""
        return tuple(self._hashes)

    def nodes(self) -> list[tuple[NodeId, bytes]]:
        """The border as ``(node id, hash)`` pairs."""
        return list(zip(root_nodes(self._size), self._hashes, strict=True))

    def append(self, leaf_hash: bytes, on_node: NodeCallback | None = None) -> None:
        """Add one leaf; ``on_node`` sees the leaf and every perfect node this completes."""
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash is {len(leaf_hash)} bytes, not {HASH_SIZE}")
        index = self._size
        value = leaf_hash
        level = 0
        if on_node is not None:
            on_node(0, index, value)
        while (index >> level) & 1:
            value = node_hash(self._hashes.pop(), value)
            level += 1
            if on_node is not None:
                on_node(level, index >> level, value)
        self._hashes.append(value)
        self._size = index + 1

    def extend(self, leaf_hashes: Iterable[bytes], on_node: NodeCallback | None = None) -> None:
        """Append each of ``leaf_hashes`` in order."""
        for value in leaf_hashes:
            self.append(value, on_node)

    def root(self) -> bytes:
        """The RFC 9162 root hash of the tree of ``size`` leaves."""
        if not self._hashes:
            return EMPTY_ROOT
        return border_hash(self._hashes)

    def copy(self) -> "CompactRange":
        """An independent copy, to try appends without touching this one."""
        return CompactRange.from_border(self._size, self._hashes)
