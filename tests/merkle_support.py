"""What the Merkle tests share: a log's stored subtree hashes, and flipping one bit."""

from __future__ import annotations

from collections.abc import Sequence

from sealog.client.compact import CompactRange
from sealog.client.proof import NodeID

__all__ = ["flip_bit", "stored_hashes"]


def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit ``bit`` (0 = the first byte's most significant bit) inverted."""
    out = bytearray(data)
    out[bit // 8] ^= 0x80 >> (bit % 8)
    return bytes(out)


def stored_hashes(leaf_hashes: Sequence[bytes]) -> dict[NodeID, bytes]:
    """The hash of every perfect subtree, recorded as :meth:`CompactRange.append` completes
    it: what a log stores while it appends."""
    compact = CompactRange()
    stored: dict[NodeID, bytes] = {}
    for index, h in enumerate(leaf_hashes):
        for level, completed in enumerate(compact.append(h)):
            stored[NodeID(level, index >> level)] = completed
    return stored
