"""Reading c2sp.org/tlog-tiles tiles and entry bundles out of a log snapshot.

Tiles are not stored: a hash tile is the stored node hashes of one level of the
tree (:meth:`~sealog.server.storage.ReadSnapshot.read_node_hashes`), an entry
bundle the stored leaves, both read in one snapshot so they match the
checkpoint it holds. Any width up to what the snapshot's tree has is served: a
tile of ``W`` hashes is the prefix of every wider one (:mod:`sealog.client.tiles`).
"""

from __future__ import annotations

from sealog.client.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileID,
    bundle_for_size,
    encode_bundle,
    tile_of_level,
)
from sealog.server.errors import LogError, NotFoundError
from sealog.server.storage import ReadSnapshot

__all__ = ["EntriesPrunedError", "read_bundle", "read_tile", "tile_bytes"]


class EntriesPrunedError(LogError):
    """An entry bundle covers leaves whose contents the retention policy pruned; their
    leaf hashes (the level-0 tile) are still served."""


def _published(snap: ReadSnapshot, tile: TileID) -> None:
    size = snap.size()
    if tile.is_entries:
        have = bundle_for_size(tile.index, size)
    else:
        have = tile_of_level(tile.level, tile.index, size)
    if have is None or have.width < tile.width:
        raise NotFoundError(f"{tile.path}: not in the tree of size {size}")


def read_tile(snap: ReadSnapshot, tile: TileID) -> bytes:
    """The bytes of hash tile ``tile`` (``width`` hashes, 32 bytes each).

    :class:`NotFoundError` if the snapshot's tree does not have that many hashes there.
    """
    if tile.is_entries:
        raise ValueError("read_tile reads hash tiles; use read_bundle")
    _published(snap, tile)
    level = TILE_HEIGHT * tile.level
    first = tile.index * TILE_WIDTH
    nodes = [(level, first + i) for i in range(tile.width)]
    return b"".join(snap.read_node_hashes(nodes))


def read_bundle(snap: ReadSnapshot, bundle: TileID) -> bytes:
    """The bytes of entry bundle ``bundle``.

    :class:`NotFoundError` past the tree; :class:`EntriesPrunedError` if any of its
    leaves were pruned.
    """
    if not bundle.is_entries:
        raise ValueError("read_bundle reads entry bundles; use read_tile")
    _published(snap, bundle)
    start = bundle.first_leaf
    pruned = snap.pruned_below()
    if start < pruned:
        raise EntriesPrunedError(
            f"{bundle.path}: leaves below {pruned} were pruned by the retention policy"
        )
    return encode_bundle(snap.leaves(start, start + bundle.width))


def tile_bytes(snap: ReadSnapshot, tile: TileID) -> bytes:
    """:func:`read_bundle` or :func:`read_tile`, by the kind of ``tile``."""
    return read_bundle(snap, tile) if tile.is_entries else read_tile(snap, tile)
