"""The tlog-tiles core (paths, tile and bundle bytes, node hashes from tiles) and the
server's tile reads from storage, against RFC 6962 computed directly."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rfc6962_reference import ReferenceTree

from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.proof import fold_subtree, subtree_nodes
from sealog.client.tiles import (
    ENTRIES_LEVEL,
    TILE_WIDTH,
    TileFormatError,
    TileID,
    decode_bundle,
    decode_tile,
    encode_bundle,
    encode_index,
    node_from_tile,
    parse_path,
    tile_for_node,
    tiles_for_size,
)
from sealog.server.errors import NotFoundError
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.tiles import read_bundle, read_tile


@pytest.mark.parametrize(
    ("n", "path"),
    [(0, "000"), (7, "007"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")],
)
def test_index_encoding_follows_the_spec(n: int, path: str) -> None:
    assert encode_index(n) == path
    assert parse_path(f"tile/0/{path}") == TileID(0, n)


@pytest.mark.parametrize(
    ("tile", "path"),
    [
        (TileID(0, 1234067), "tile/0/x001/x234/067"),
        (TileID(2, 5, 7), "tile/2/005.p/7"),
        (TileID(ENTRIES_LEVEL, 1000, 255), "tile/entries/x001/000.p/255"),
        (TileID(ENTRIES_LEVEL, 0), "tile/entries/000"),
    ],
)
def test_paths_round_trip(tile: TileID, path: str) -> None:
    assert tile.path == path
    assert parse_path(path) == tile


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/001",  # a leading zero group
        "tile/0/1",  # not three digits
        "tile/0/0001",
        "tile/0/001.p/256",  # a full tile written as partial
        "tile/0/001.p/0",
        "tile/0/001.p/07",
        "tile/8/000",  # no level 8 for 64-bit sizes
        "tile/01/000",
        "tile/entries/x1/000",
        "tiles/0/000",
        "tile/0/",
        "tile/0/001/",
        "tile/0/y001/000",
        "tile/entries/001.p/",
    ],
)
def test_non_canonical_paths_are_refused(path: str) -> None:
    with pytest.raises(TileFormatError):
        parse_path(path)


@given(st.integers(min_value=0, max_value=(1 << 55) - 1), st.integers(min_value=1, max_value=256))
def test_any_tile_path_parses_back(n: int, width: int) -> None:
    for level in (ENTRIES_LEVEL, 0, 3):
        tile = TileID(level, n, width)
        assert parse_path(tile.path) == tile


def test_tiles_for_size_lists_full_and_right_edge_tiles() -> None:
    assert list(tiles_for_size(0)) == []
    assert list(tiles_for_size(1)) == [TileID(0, 0, 1)]
    assert list(tiles_for_size(256)) == [TileID(0, 0), TileID(1, 0, 1)]
    assert list(tiles_for_size(257)) == [TileID(0, 0), TileID(0, 1, 1), TileID(1, 0, 1)]
    tiles = list(tiles_for_size(70_000))
    assert [t for t in tiles if t.level == 2] == [TileID(2, 0, 1)]
    assert [t for t in tiles if t.level == 1][-1] == TileID(1, 1, 17)
    assert [t for t in tiles if t.level == 0][-1] == TileID(0, 273, 112)
    assert len(tiles) == 274 + 2 + 1


def test_bundles_round_trip_and_reject_bad_bytes() -> None:
    leaves = [b"", b"a", b"\x00" * 300]
    data = encode_bundle(leaves)
    assert data == b"\x00\x00" + b"\x00\x01a" + struct.pack(">H", 300) + b"\x00" * 300
    bundle = TileID(ENTRIES_LEVEL, 0, 3)
    assert decode_bundle(bundle, data) == leaves
    with pytest.raises(TileFormatError, match="leaves, want"):
        decode_bundle(TileID(ENTRIES_LEVEL, 0, 4), data)
    with pytest.raises(TileFormatError, match="past the end"):
        decode_bundle(bundle, data[:-1])
    with pytest.raises(TileFormatError, match="truncated"):
        decode_bundle(TileID(ENTRIES_LEVEL, 0, 4), data + b"\x00")
    with pytest.raises(TileFormatError, match="does not fit"):
        encode_bundle([b"x" * 65_536])
    with pytest.raises(TileFormatError, match="want 2 hashes"):
        decode_tile(TileID(0, 0, 2), b"\x00" * 63)


def _fill(storage: LmdbStorage, leaves: list[bytes]) -> None:
    tree = CompactRange()
    with storage.write() as w:
        for index, leaf in enumerate(leaves):
            w.append_leaf(index, leaf, tree.append(leaf_hash(leaf)))
        w.set_checkpoint(b"checkpoint", len(leaves))


@pytest.mark.parametrize("size", [1, 255, 256, 257, 70_000])
def test_every_node_of_the_tree_comes_out_of_the_served_tiles(tmp_path: Path, size: int) -> None:
    leaves = [b"leaf %d" % i for i in range(size)]
    reference = ReferenceTree(leaves)
    storage = LmdbStorage(tmp_path / "db")
    try:
        _fill(storage, leaves)
        with storage.read() as snap:
            tiles = {t: decode_tile(t, read_tile(snap, t)) for t in tiles_for_size(size)}
            last = TileID(ENTRIES_LEVEL, (size - 1) // TILE_WIDTH, (size - 1) % TILE_WIDTH + 1)
            assert decode_bundle(last, read_bundle(snap, last)) == leaves[last.first_leaf :]
            with pytest.raises(NotFoundError):
                read_bundle(snap, TileID(ENTRIES_LEVEL, last.index + 1, 1))
            with pytest.raises(NotFoundError):
                read_tile(snap, TileID(0, last.index + 1, 1))
            if not last.is_full:
                with pytest.raises(NotFoundError):
                    read_bundle(snap, TileID(ENTRIES_LEVEL, last.index, last.width + 1))
    finally:
        storage.close()
    # Every perfect subtree of the tree, out of the tile a reader would fetch for it.
    levels = range(size.bit_length())
    nodes = [(lv, i) for lv in levels for i in range(size >> lv)]
    if size > 300:  # the reference recursion is slow: the right edge and a sample
        nodes = [(lv, i) for lv, i in nodes if i >= (size >> lv) - 3 or i % 997 == 0]
    for level, index in nodes:
        tile = tile_for_node(level, index, size)
        got = node_from_tile(tile, tiles[tile], level, index)
        assert got == reference.mth(index << level, (index + 1) << level), (level, index)
    # Its root, folded from the subtrees tiles give, is RFC 6962's.
    parts = [
        node_from_tile(
            tile_for_node(n.level, n.index, size),
            tiles[tile_for_node(n.level, n.index, size)],
            n.level,
            n.index,
        )
        for n in subtree_nodes(0, size)
    ]
    assert fold_subtree(parts) == reference.root(size)
