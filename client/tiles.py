"""C2SP tlog-tiles: tile paths, tile and entry-bundle bytes, node hashes from tiles.

A log of ``size`` leaves publishes, for tile height 8 (c2sp.org/tlog-tiles):

- ``tile/<L>/<N>``: the hashes of the 256 nodes at tree level ``8·L`` with
  indices ``256·N .. 256·N + 255``, 32 bytes each, concatenated. A level-0 tile
  holds leaf hashes; a level-``L`` node hash is the root of ``256^L`` leaves.
- ``tile/<L>/<N>.p/<W>``: the same with only the first ``W`` hashes
  (``1 <= W <= 255``), for the right edge of the tree.
- ``tile/entries/<N>`` and ``tile/entries/<N>.p/<W>``: the leaves
  ``256·N ..`` themselves, each prefixed with its length as a big-endian
  uint16 (an *entry bundle*).

``N`` is written in groups of three decimal digits, every group but the last
prefixed with ``x``: 1234067 is ``x001/x234/067``. A full tile never changes;
a partial one is replaced by wider ones and finally by the full tile, and a
reader may use a wider tile than it needs (its first ``W`` hashes are the same).

This module is the core both sides share: the server and the archive build
paths and bytes with it, readers parse them and compute any node hash of a
tree from the tiles it covers (:func:`tiles_for_node`, :func:`node_from_tile`).
It reads no network and no storage.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from sealog.client.errors import SealogError
from sealog.client.hashing import HASH_SIZE, node_hash

__all__ = [
    "ENTRIES_LEVEL",
    "MAX_BUNDLE_LEAF_BYTES",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "TileFormatError",
    "TileID",
    "bundle_for_size",
    "decode_bundle",
    "decode_tile",
    "encode_bundle",
    "encode_index",
    "node_from_tile",
    "parse_path",
    "tile_for_node",
    "tile_of_level",
    "tiles_for_size",
]

TILE_HEIGHT = 8
"""Levels of the tree per tile: the only height c2sp.org/tlog-tiles allows."""
TILE_WIDTH = 1 << TILE_HEIGHT
"""Hashes in a full tile; leaves in a full entry bundle."""
MAX_BUNDLE_LEAF_BYTES = 0xFFFF
"""A leaf's length is a uint16 in an entry bundle."""
ENTRIES_LEVEL = -1
"""The level :class:`TileID` gives an entry bundle (its path says ``entries``)."""

_MAX_INDEX = (1 << 63) // TILE_WIDTH
_LEN = struct.Struct(">H")
_GROUP = re.compile(r"[0-9]{3}")


class TileFormatError(SealogError):
    """A tile path, a tile or an entry bundle that does not follow c2sp.org/tlog-tiles."""


@dataclass(frozen=True, slots=True, order=True)
class TileID:
    """One tile (``level >= 0``) or entry bundle (``level == ENTRIES_LEVEL``).

    ``width`` is how many hashes or leaves it holds: ``TILE_WIDTH`` for a full one.
    """

    level: int
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level < ENTRIES_LEVEL or self.level > 63 // TILE_HEIGHT:
            raise TileFormatError(f"tile level {self.level} out of range")
        if not 0 <= self.index < _MAX_INDEX:
            raise TileFormatError(f"tile index {self.index} out of range")
        if not 1 <= self.width <= TILE_WIDTH:
            raise TileFormatError(f"tile width {self.width}, want 1..{TILE_WIDTH}")

    @property
    def is_entries(self) -> bool:
        return self.level == ENTRIES_LEVEL

    @property
    def is_full(self) -> bool:
        return self.width == TILE_WIDTH

    @property
    def path(self) -> str:
        """The tile's path below the log's prefix, e.g. ``tile/0/x001/234.p/7``."""
        level = "entries" if self.is_entries else str(self.level)
        tail = "" if self.is_full else f".p/{self.width}"
        return f"tile/{level}/{encode_index(self.index)}{tail}"

    @property
    def first_leaf(self) -> int:
        """The first leaf this tile or bundle covers."""
        per_hash = 1 if self.is_entries else 1 << (TILE_HEIGHT * self.level)
        return self.index * TILE_WIDTH * per_hash

    def full(self) -> TileID:
        """The full tile this one is a prefix of."""
        return TileID(self.level, self.index)


def encode_index(n: int) -> str:
    """``N`` as a tile path writes it: ``1234067`` is ``x001/x234/067``."""
    if n < 0:
        raise TileFormatError(f"tile index {n} is negative")
    digits = str(n)
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    return "/".join([f"x{g}" for g in groups[:-1]] + groups[-1:])


def _decode_index(parts: Sequence[str]) -> int:
    if not parts:
        raise TileFormatError("tile path has no index")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        group = part if last else part[1:]
        if (not last and not part.startswith("x")) or not _GROUP.fullmatch(group):
            raise TileFormatError(f"tile path element {part!r} is not a 3-digit group")
    n = int("".join(p.lstrip("x") for p in parts))
    if encode_index(n) != "/".join(parts):
        raise TileFormatError("tile index is not written in its one canonical form")
    return n


def parse_path(path: str) -> TileID:
    """The tile or entry bundle a path below the log's prefix names.

    Only the canonical form is accepted (no leading ``x000/`` groups, no ``.p/256``,
    no ``.p/0``, no leading zeros in ``W``), so each tile has one path.
    """
    parts = path.split("/")
    if len(parts) < 3 or parts[0] != "tile":
        raise TileFormatError(f"not a tile path: {path!r}")
    if parts[1] == "entries":
        level = ENTRIES_LEVEL
    elif re.fullmatch(r"[0-9]", parts[1]):
        level = int(parts[1])
    else:
        raise TileFormatError(f"tile level {parts[1]!r} is not 0..7 or 'entries'")
    rest = parts[2:]
    width = TILE_WIDTH
    if len(rest) >= 2 and rest[-2].endswith(".p"):
        w = rest[-1]
        if not re.fullmatch(r"[1-9][0-9]{0,2}", w) or int(w) >= TILE_WIDTH:
            raise TileFormatError(f"partial tile width {w!r} is not 1..{TILE_WIDTH - 1}")
        width = int(w)
        rest = [*rest[:-2], rest[-2].removesuffix(".p")]
    return TileID(level, _decode_index(rest), width)


def tiles_for_size(size: int) -> Iterator[TileID]:
    """Every tile a tree of ``size`` leaves publishes, level by level, ending with the
    right edge's partial tile of each level (entry bundles not included)."""
    level = 0
    count = size
    while count > 0:
        full, rest = divmod(count, TILE_WIDTH)
        for n in range(full):
            yield TileID(level, n)
        if rest:
            yield TileID(level, full, rest)
        level += 1
        count >>= TILE_HEIGHT
        if count == 0:
            break


def tile_of_level(level: int, index: int, size: int) -> TileID | None:
    """Tile ``index`` of ``level`` as a tree of ``size`` leaves publishes it (full or
    partial), or None if that tree has no such tile."""
    count = size >> (TILE_HEIGHT * level)
    width = min(TILE_WIDTH, count - index * TILE_WIDTH)
    if width <= 0:
        return None
    return TileID(level, index, width)


def bundle_for_size(index: int, size: int) -> TileID | None:
    """Entry bundle ``index`` as a tree of ``size`` leaves publishes it, or None."""
    width = min(TILE_WIDTH, size - index * TILE_WIDTH)
    if width <= 0:
        return None
    return TileID(ENTRIES_LEVEL, index, width)


def tile_for_node(level: int, index: int, size: int) -> TileID:
    """The tile a reader fetches to compute the perfect-subtree node ``(level, index)``
    of a tree of ``size`` leaves: it holds the ``2^(level mod 8)`` hashes at level
    ``8·⌊level/8⌋`` under that node (:func:`node_from_tile`)."""
    if (index + 1) << level > size:
        raise TileFormatError(f"node ({level}, {index}) is not in a tree of size {size}")
    tile_level, height = divmod(level, TILE_HEIGHT)
    first = index << height
    tile = tile_of_level(tile_level, first // TILE_WIDTH, size)
    if tile is None:
        raise TileFormatError(f"node ({level}, {index}) is not in a tree of size {size}")
    return tile


def node_from_tile(tile: TileID, hashes: Sequence[bytes], level: int, index: int) -> bytes:
    """The hash of node ``(level, index)``, from the hashes of ``tile`` (which
    :func:`tile_for_node` named, or a wider version of it)."""
    tile_level, height = divmod(level, TILE_HEIGHT)
    if tile_level != tile.level or tile.is_entries:
        raise TileFormatError(f"node ({level}, {index}) is not in tile {tile.path}")
    first = (index << height) - tile.index * TILE_WIDTH
    count = 1 << height
    if first < 0 or first + count > len(hashes):
        raise TileFormatError(f"node ({level}, {index}) is not in tile {tile.path}")
    return _fold_perfect(hashes[first : first + count])


def _fold_perfect(hashes: Sequence[bytes]) -> bytes:
    row = list(hashes)
    while len(row) > 1:
        row = [node_hash(row[i], row[i + 1]) for i in range(0, len(row), 2)]
    return row[0]


def decode_tile(tile: TileID, data: bytes) -> list[bytes]:
    """The hashes of a tile's bytes, which must hold exactly ``tile.width`` of them."""
    if tile.is_entries:
        raise TileFormatError(f"{tile.path} is an entry bundle, not a hash tile")
    if len(data) != tile.width * HASH_SIZE:
        raise TileFormatError(
            f"{tile.path}: {len(data)} bytes, want {tile.width} hashes = "
            f"{tile.width * HASH_SIZE} bytes"
        )
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def encode_bundle(leaves: Iterable[bytes]) -> bytes:
    """An entry bundle: each leaf prefixed with its length as a big-endian uint16."""
    out = bytearray()
    for leaf in leaves:
        if len(leaf) > MAX_BUNDLE_LEAF_BYTES:
            raise TileFormatError(
                f"a leaf of {len(leaf)} bytes does not fit an entry bundle "
                f"(at most {MAX_BUNDLE_LEAF_BYTES})"
            )
        out += _LEN.pack(len(leaf))
        out += leaf
    return bytes(out)


def decode_bundle(bundle: TileID, data: bytes) -> list[bytes]:
    """The leaves of an entry bundle's bytes, which must hold exactly ``bundle.width``."""
    if not bundle.is_entries:
        raise TileFormatError(f"{bundle.path} is a hash tile, not an entry bundle")
    leaves: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise TileFormatError(f"{bundle.path}: truncated length at byte {at}")
        (n,) = _LEN.unpack_from(data, at)
        at += 2
        if at + n > len(data):
            raise TileFormatError(f"{bundle.path}: leaf {len(leaves)} runs past the end")
        leaves.append(data[at : at + n])
        at += n
    if len(leaves) != bundle.width:
        raise TileFormatError(f"{bundle.path}: {len(leaves)} leaves, want {bundle.width}")
    return leaves
