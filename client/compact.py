"""A compact range: the O(log n) frontier of a growing RFC 6962 tree.

The leaves ``D[0:size]`` split into perfect subtrees whose sizes are the set
bits of ``size``, largest first; their roots are all one needs to keep in
order to append more leaves and to compute the root hash. For ``size = 6``
the frontier is the roots of ``D[0:4]`` and ``D[4:6]``; appending leaf 6 adds
``D[6:7]``, appending leaf 7 then merges ``D[6:8]`` and ``D[4:8]`` into
``D[0:8]``, a frontier of one hash.

The sequencer uses the hashes :meth:`CompactRange.append` completes as the
stored node hashes of the tree; monitors use it to re-derive a root from
entries they downloaded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from sealog.client.errors import InvalidProofError
from sealog.client.hashing import EMPTY_ROOT, HASH_SIZE
from sealog.client.proof import MAX_TREE_SIZE, NodeID, fold_subtree, subtree_nodes

__all__ = ["CompactRange"]

_sha256 = hashlib.sha256


class CompactRange:
    """The frontier of the tree ``D[0:size]``; appends in amortised O(1) hashes."""

    __slots__ = ("_hashes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        """Resume a frontier: ``hashes`` are the roots of :meth:`nodes`, in that order."""
        if not 0 <= size < MAX_TREE_SIZE:
            raise InvalidProofError(f"size: {size}, want 0 <= size < 2^63")
        if len(hashes) != size.bit_count():
            raise InvalidProofError(
                f"compact range of size {size}: {len(hashes)} hashes, want {size.bit_count()}"
            )
        for i, h in enumerate(hashes):
            if len(h) != HASH_SIZE:
                raise InvalidProofError(f"hashes[{i}]: {len(h)} bytes, want {HASH_SIZE}")
        self._size = size
        self._hashes = list(hashes)

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """The roots of the perfect subtrees in :meth:`nodes`, largest first."""
        return tuple(self._hashes)

    def nodes(self) -> tuple[NodeID, ...]:
        """The perfect subtrees that make up ``D[0:size]``, largest first."""
        return subtree_nodes(0, self._size)

    def append(self, leaf_hash: bytes) -> list[bytes]:
        """Append one leaf hash; return the hashes of the subtrees it completes.

        The result starts with ``leaf_hash`` itself (level 0), then the root of
        each perfect subtree that now ends at this leaf, one level up each time.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise InvalidProofError(f"leaf_hash: {len(leaf_hash)} bytes, want {HASH_SIZE}")
        completed = [leaf_hash]
        h = leaf_hash
        n = self._size
        frontier = self._hashes
        # Each trailing 1 bit of size is a perfect subtree of the same height
        # as the one just completed: merge them.
        while n & 1:
            h = _sha256(b"\x01" + frontier.pop() + h).digest()
            completed.append(h)
            n >>= 1
        frontier.append(h)
        self._size += 1
        return completed

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes."""
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        """Return ``MTH(D[0:size])`` (RFC 6962 §2.1)."""
        if not self._hashes:
            return EMPTY_ROOT
        return fold_subtree(self._hashes)

    def copy(self) -> CompactRange:
        """Return an independent copy."""
        return CompactRange(self._size, self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"
