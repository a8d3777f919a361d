"""Where node hashes live in C2SP tlog-tiles storage, and how many tiles a proof reads.

A tile at tile level ``L`` and index ``N`` stores one row: up to 256 consecutive hashes of tree
level ``8L``, nodes ``(8L, 256N)`` to ``(8L, 256N + 255)``. Those 256 hashes are the leaves of a
subtree of height 8, so every node at tree levels ``8L`` to ``8L + 7`` above them is recomputed
from a slice of that single row: any perfect node costs one tile read plus at most 255 hashes.
The tile's own root, level ``8L + 8``, is stored as one hash of tile level ``L + 1``.

Cost of a proof. Every proof element but one is the sibling of a node on one path to the root,
and a node and its sibling share their parent's tile: siblings at tree levels ``8L..8L+7`` all
come from the path's single tile at tile level ``L``. So the path costs one read per tile level
it crosses: ``ceil(height / 8)`` reads, 3 for any tree of up to 2**24 leaves. At 1,000,000
leaves (tree levels 0..19) an inclusion proof reads tile levels 0, 1 and 2 once each: 3 reads;
a consistency proof is the same path from the old tree's last perfect node: at most 3.

The exception is the "ephemeral" sibling on the right border of a tree whose size is not a
power of two: it is folded from that size's border nodes (``nodes.root_nodes(size)``), which sit
in the rightmost, partial tile of each tile level. The ledger keeps each published size's border
with its checkpoint (``CompactRange.hashes``, one hash per set bit of the size), so pass them as
``known`` and they cost no read. Read from tiles instead, they add up to one partial tile per tile
level other than the top one (a tree under 2**24 leaves has a single level-2 tile): up to 5 reads
at 1,000,000 leaves.

Paths follow the spec: ``tile/<L>/<N>[.p/<W>]`` and ``tile/entries/<N>[.p/<W>]``, with ``N`` in
3-digit groups (``x001/x234/067``), relative to the log's URL prefix.
"""

from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

from medledger.tlog.hashing import HASH_SIZE, node_hash
from medledger.tlog.nodes import NodeId

TILE_HEIGHT = 8
"""Tree levels per tile level."""

TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes in a full tile: 256."""

MAX_TILE_LEVEL = 63


@dataclass(frozen=True, slots=True, order=True)
class Tile:
    """A tile as a tree of some size has it: the first ``width`` hashes of its row."""

    level: int
    index: int
    width: int = TILE_WIDTH

    @property
    def is_partial(self) -> bool:
        """Whether the tree still has to grow to fill this tile."""
        return self.width < TILE_WIDTH

    def path(self) -> str:
        """Its resource path, ``tile/<L>/<N>[.p/<W>]``."""
        return tile_path(self.level, self.index, self.width)


@dataclass(frozen=True, slots=True, order=True)
class TileCoordinates:
    """Where a node of a stored level sits: tile level, tile index, position in the row."""

    tile_level: int
    tile_index: int
    offset: int

    def __post_init__(self) -> None:
        if (
            not 0 <= self.tile_level <= MAX_TILE_LEVEL
            or self.tile_index < 0
            or not 0 <= self.offset < TILE_WIDTH
        ):
            raise ValueError(f"invalid {self}")


@dataclass(frozen=True, slots=True)
class TileSpan:
    """The ``count`` row hashes starting at ``offset`` in a tile that hash up to one node."""

    tile_level: int
    tile_index: int
    offset: int
    count: int


def _check_node(node: NodeId) -> None:
    if node.level < 0 or node.index < 0:
        raise ValueError(f"invalid {node}")
    if node.level // TILE_HEIGHT > MAX_TILE_LEVEL:
        raise ValueError(f"node level {node.level} is above the highest tile level")


def tile_coordinates(node: NodeId) -> TileCoordinates:
    """Where the hash of ``node`` is stored; its level must be a multiple of 8."""
    _check_node(node)
    if node.level % TILE_HEIGHT:
        raise ValueError(f"level {node.level} is not stored: tiles hold levels 0, 8, 16, ...")
    tile_index, offset = divmod(node.index, TILE_WIDTH)
    return TileCoordinates(node.level // TILE_HEIGHT, tile_index, offset)


def stored_node(coordinates: TileCoordinates) -> NodeId:
    """The node whose hash is stored at ``coordinates`` (the inverse of ``tile_coordinates``)."""
    return NodeId(
        coordinates.tile_level * TILE_HEIGHT,
        coordinates.tile_index * TILE_WIDTH + coordinates.offset,
    )


def tile_span(node: NodeId) -> TileSpan:
    """The single tile row slice that ``node``'s hash is computed from."""
    _check_node(node)
    tile_level, height = divmod(node.level, TILE_HEIGHT)
    first = node.index << height
    return TileSpan(tile_level, first // TILE_WIDTH, first % TILE_WIDTH, 1 << height)


def tile_for_node(node: NodeId, size: int) -> Tile:
    """The tile (with its width at tree ``size``) to read for ``node``'s hash."""
    if node.end > size:
        raise ValueError(f"{node} is not complete in a tree of size {size}")
    span = tile_span(node)
    row = size >> (span.tile_level * TILE_HEIGHT)
    width = min(TILE_WIDTH, row - span.tile_index * TILE_WIDTH)
    return Tile(span.tile_level, span.tile_index, width)


def tiles_for_nodes(
    nodes: Iterable[NodeId], size: int, known: Collection[NodeId] = ()
) -> list[Tile]:
    """The distinct tiles to read for the hashes of ``nodes`` in a tree of ``size`` leaves.

    Pass a ``ProofPlan``'s ``nodes``, or ``root_nodes(size)`` for a historical root. Nodes in
    ``known`` (such as the size's border, kept with its checkpoint) are not read.
    """
    tiles: dict[tuple[int, int], Tile] = {}
    for node in nodes:
        if node in known:
            continue
        tile = tile_for_node(node, size)
        tiles.setdefault((tile.level, tile.index), tile)
    return list(tiles.values())


def node_hash_from_tile(tile_data: bytes, node: NodeId) -> bytes:
    """``node``'s hash from the bytes of the tile that ``tile_span(node)`` names.

    ``tile_data`` is the tile's concatenated hashes; a wider version of the tile (a later partial
    or the full one) serves as well, since tiles only ever grow at the end.
    """
    if len(tile_data) % HASH_SIZE or len(tile_data) > TILE_WIDTH * HASH_SIZE:
        raise ValueError(f"a tile of {len(tile_data)} bytes is not a row of hashes")
    span = tile_span(node)
    end = span.offset + span.count
    if end * HASH_SIZE > len(tile_data):
        have = len(tile_data) // HASH_SIZE
        raise ValueError(f"{node} needs {end} hashes of its tile, which has {have}")
    row = [
        tile_data[position * HASH_SIZE : (position + 1) * HASH_SIZE]
        for position in range(span.offset, end)
    ]
    while len(row) > 1:
        row = [node_hash(row[position], row[position + 1]) for position in range(0, len(row), 2)]
    return row[0]


def tree_tiles(size: int) -> Iterator[Tile]:
    """Every tile a tree of ``size`` leaves has, full and partial, level by level."""
    if size < 0:
        raise ValueError(f"tree size {size} is negative")
    level = 0
    row = size
    while row and level <= MAX_TILE_LEVEL:
        full, rest = divmod(row, TILE_WIDTH)
        for index in range(full):
            yield Tile(level, index)
        if rest:
            yield Tile(level, full, rest)
        level += 1
        row >>= TILE_HEIGHT


def _index_path(index: int) -> str:
    if index < 0:
        raise ValueError(f"tile index {index} is negative")
    digits = str(index)
    digits = digits.zfill(-(-len(digits) // 3) * 3)
    groups = [digits[start : start + 3] for start in range(0, len(digits), 3)]
    return "/".join([*(f"x{group}" for group in groups[:-1]), groups[-1]])


def _width_suffix(width: int) -> str:
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is not in 1..{TILE_WIDTH}")
    return "" if width == TILE_WIDTH else f".p/{width}"


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]`` for the tile at tile level ``level``."""
    if not 0 <= level <= MAX_TILE_LEVEL:
        raise ValueError(f"tile level {level} is not in 0..{MAX_TILE_LEVEL}")
    return f"tile/{level}/{_index_path(index)}{_width_suffix(width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]`` for the entry bundle matching level-0 tile ``index``."""
    return f"tile/entries/{_index_path(index)}{_width_suffix(width)}"
