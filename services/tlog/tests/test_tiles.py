"""C2SP tlog-tiles layout: node addresses, paths, and what a proof costs in tile reads."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medledger.tlog import (
    TILE_WIDTH,
    CompactRange,
    NodeId,
    Tile,
    TileCoordinates,
    consistency_nodes,
    entries_path,
    inclusion_nodes,
    leaf_hash,
    node_hash_from_tile,
    reference,
    root_nodes,
    stored_node,
    tile_coordinates,
    tile_for_node,
    tile_path,
    tile_span,
    tiles_for_nodes,
    tree_tiles,
    verify_consistency,
    verify_inclusion,
)

Store = dict[NodeId, bytes]
MILLION = 1_000_000


@given(st.integers(0, 7), st.integers(0, 1 << 40), st.integers(0, 255))
def test_stored_nodes_round_trip_through_tile_coordinates(
    tile_level: int, tile_index: int, offset: int
) -> None:
    coordinates = TileCoordinates(tile_level, tile_index, offset)
    node = stored_node(coordinates)
    assert node.level == 8 * tile_level
    assert tile_coordinates(node) == coordinates


@given(st.integers(0, 60), st.integers(0, 1 << 40))
def test_any_node_is_one_slice_of_one_tile(level: int, index: int) -> None:
    span = tile_span(NodeId(level, index))
    assert span.count == 1 << (level % 8)
    assert span.offset >= 0
    assert span.offset + span.count <= TILE_WIDTH
    first = stored_node(TileCoordinates(span.tile_level, span.tile_index, span.offset))
    assert first.begin == NodeId(level, index).begin


def test_only_levels_that_are_multiples_of_8_are_stored() -> None:
    assert tile_coordinates(NodeId(16, 70_000)) == TileCoordinates(2, 273, 112)
    with pytest.raises(ValueError, match="level 9 is not stored"):
        tile_coordinates(NodeId(9, 0))
    with pytest.raises(ValueError, match="invalid"):
        TileCoordinates(0, 0, 256)


def test_paths_follow_the_spec() -> None:
    assert tile_path(0, 1_234_067) == "tile/0/x001/x234/067"
    assert tile_path(1, 0) == "tile/1/000"
    assert tile_path(2, 1000, 17) == "tile/2/x001/000.p/17"
    assert tile_path(0, 273, 112) == "tile/0/273.p/112"
    assert Tile(3, 5, 1).path() == "tile/3/005.p/1"
    assert entries_path(1_234_067) == "tile/entries/x001/x234/067"
    assert entries_path(7, 255) == "tile/entries/007.p/255"
    for bad in (0, 257):
        with pytest.raises(ValueError, match="width"):
            tile_path(0, 0, bad)
    with pytest.raises(ValueError, match="tile level 64"):
        tile_path(64, 0)


def test_tiles_of_a_tree_match_the_spec_examples() -> None:
    tiles = list(tree_tiles(70_000))
    assert sum(1 for tile in tiles if tile.level == 0 and not tile.is_partial) == 273
    assert [tile for tile in tiles if tile.is_partial] == [
        Tile(0, 273, 112),
        Tile(1, 1, 17),
        Tile(2, 0, 1),
    ]
    assert Tile(1, 0) in tiles
    assert list(tree_tiles(256)) == [Tile(0, 0), Tile(1, 0, 1)]
    assert list(tree_tiles(0)) == []


def test_tile_widths_follow_the_tree_size() -> None:
    assert tile_for_node(NodeId(0, 5), 6) == Tile(0, 0, 6)
    assert tile_for_node(NodeId(3, 0), 70_000) == Tile(0, 0)
    assert tile_for_node(NodeId(9, 2), 70_000) == Tile(1, 0)
    assert tile_for_node(NodeId(12, 16), 70_000) == Tile(1, 1, 17)
    with pytest.raises(ValueError, match="not complete"):
        tile_for_node(NodeId(2, 1), 7)


@pytest.fixture(scope="module")
def tiled_log() -> tuple[list[bytes], dict[tuple[int, int], bytearray], CompactRange]:
    """70,000 leaves sequenced as the ledger does: stored levels go to tile rows as they appear."""
    leaves = [leaf_hash(b"tiled %d" % index) for index in range(70_000)]
    rows: dict[tuple[int, int], bytearray] = {}

    def write(level: int, index: int, value: bytes) -> None:
        if level % 8 == 0:
            where = tile_coordinates(NodeId(level, index))
            row = rows.setdefault((where.tile_level, where.tile_index), bytearray())
            assert len(row) == where.offset * len(value)  # tiles only grow at the end
            row += value

    compact = CompactRange()
    compact.extend(leaves, write)
    return leaves, rows, compact


def read_tiles(
    rows: dict[tuple[int, int], bytearray], tiles: list[Tile]
) -> dict[tuple[int, int], bytes]:
    """What storage answers for a tree of some size: each tile cut to the width asked for."""
    return {
        (tile.level, tile.index): bytes(rows[tile.level, tile.index][: tile.width * 32])
        for tile in tiles
    }


def hashes_from_tiles(
    nodes: tuple[NodeId, ...],
    size: int,
    rows: dict[tuple[int, int], bytearray],
    known: dict[NodeId, bytes],
) -> tuple[list[bytes], int]:
    tiles = tiles_for_nodes(nodes, size, known.keys())
    data = read_tiles(rows, tiles)
    hashes = []
    for node in nodes:
        if node in known:
            hashes.append(known[node])
        else:
            tile = tile_for_node(node, size)
            hashes.append(node_hash_from_tile(data[tile.level, tile.index], node))
    return hashes, len(tiles)


def border_of(rows: dict[tuple[int, int], bytearray], size: int) -> dict[NodeId, bytes]:
    """The border kept with a checkpoint, here recomputed from tiles (as a restart would)."""
    nodes = root_nodes(size)
    hashes, _ = hashes_from_tiles(tuple(nodes), size, rows, {})
    return dict(zip(nodes, hashes, strict=True))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 70_000), st.data())
def test_proofs_served_from_tiles_verify(
    tiled_log: tuple[list[bytes], dict[tuple[int, int], bytearray], CompactRange],
    size: int,
    data: st.DataObject,
) -> None:
    leaves, rows, _ = tiled_log
    root = reference.root_hash(leaves[:size])
    border = border_of(rows, size)
    compact = CompactRange.from_border(size, list(border.values()))
    assert compact.root() == root

    index = data.draw(st.integers(0, size - 1))
    plan = inclusion_nodes(index, size)
    hashes, reads = hashes_from_tiles(plan.nodes, size, rows, border)
    verify_inclusion(leaves[index], index, size, plan.rehash(hashes), root)
    assert reads <= 3  # tree levels 0..16 span tile levels 0, 1, 2

    size1 = data.draw(st.integers(1, size))
    plan = consistency_nodes(size1, size)
    hashes, reads = hashes_from_tiles(plan.nodes, size, rows, border)
    root1 = reference.root_hash(leaves[:size1])
    verify_consistency(size1, size, plan.rehash(hashes), root1, root)
    assert reads <= 3


def test_node_hash_from_tile_checks_the_tile(
    tiled_log: tuple[list[bytes], dict[tuple[int, int], bytearray], CompactRange],
) -> None:
    _, rows, _ = tiled_log
    row = bytes(rows[0, 0])
    with pytest.raises(ValueError, match="not a row of hashes"):
        node_hash_from_tile(row[:-1], NodeId(0, 0))
    with pytest.raises(ValueError, match="needs 8 hashes of its tile, which has 7"):
        node_hash_from_tile(row[: 7 * 32], NodeId(3, 0))


def reads_at_a_million(nodes: tuple[NodeId, ...], known: frozenset[NodeId]) -> int:
    return len(tiles_for_nodes(nodes, MILLION, known))


BORDER = frozenset(root_nodes(MILLION))
NOTHING: frozenset[NodeId] = frozenset()


@settings(max_examples=300)
@given(st.integers(0, MILLION - 1))
def test_inclusion_at_a_million_leaves_reads_at_most_3_tiles(index: int) -> None:
    nodes = inclusion_nodes(index, MILLION).nodes
    assert reads_at_a_million(nodes, BORDER) <= 3
    assert reads_at_a_million(nodes, NOTHING) <= 5


@settings(max_examples=300)
@given(st.integers(1, MILLION))
def test_consistency_to_a_million_leaves_reads_at_most_3_tiles(size1: int) -> None:
    nodes = consistency_nodes(size1, MILLION).nodes
    assert reads_at_a_million(nodes, BORDER) <= 3
    assert reads_at_a_million(nodes, NOTHING) <= 5


def test_the_worst_cases_at_a_million_leaves_are_as_documented() -> None:
    # Leaf 0: its path crosses tile levels 0, 1, 2; the border adds the partial tiles
    # tile/0/x003/906.p/64 and tile/1/015.p/66 (tile/2/000.p/15 is shared with the path).
    nodes = inclusion_nodes(0, MILLION).nodes
    assert tiles_for_nodes(nodes, MILLION, BORDER) == [Tile(0, 0), Tile(1, 0), Tile(2, 0, 15)]
    assert set(tiles_for_nodes(nodes, MILLION)) == {
        Tile(0, 0),
        Tile(1, 0),
        Tile(2, 0, 15),
        Tile(1, 15, 66),
        Tile(0, 3906, 64),
    }
    # The last leaf: siblings inside its own partial tile, the rest is border.
    last = inclusion_nodes(MILLION - 1, MILLION).nodes
    assert tiles_for_nodes(last, MILLION, BORDER) == [Tile(0, 3906, 64)]
    assert reads_at_a_million(consistency_nodes(999_999, MILLION).nodes, BORDER) <= 3
