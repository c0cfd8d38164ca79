"""The leaves the leaf-hash and idempotency indexes do not hold yet, kept in memory.

The sequencer commits each batch of leaves with their node hashes, their key
digests (kept with the batch) and the index by identity only; it writes the
two hash-keyed indexes later, in large sorted batches (docs/storage.md,
"Deferred indexing"). Until then every leaf from ``indexed_upto`` on is in
this tail: its leaf hash and its idempotency key digest, in dictionaries.

The tail is made of segments: the *active* one, which the sequencer adds each
leaf to *before* the batch that holds it commits, and, while a flush is
writing them to storage, the *frozen* one before it. :attr:`IndexTail.view`
is replaced, never changed in place, when a flush starts and when it ends,
so a reader can take it in one step. A reader that opened its snapshot
*before* taking the view finds every leaf of its snapshot either in the
snapshot's indexes (below the snapshot's ``indexed_upto``) or in the view,
provided the view's ``low`` is not above the snapshot's ``indexed_upto``;
when it is, the snapshot predates a flush the view has already forgotten,
and the reader opens a newer one (:meth:`sealog.server.log.Log.inclusion_proof_by_hash`).
"""

from __future__ import annotations

from collections.abc import Iterator

from sealog.server.storage import ReadSnapshot

__all__ = ["IndexTail", "StaleSnapshotError", "TailSegment", "find_leaf_hash"]


class TailSegment:
    """Leaves ``[start, ...)`` not indexed yet: leaf hash and key digest to leaf index."""

    __slots__ = ("by_digest", "by_hash", "extra_hashes", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.by_hash: dict[bytes, int] = {}
        """Each leaf hash to the smallest index that has it."""
        self.by_digest: dict[bytes, int] = {}
        self.extra_hashes: list[tuple[bytes, int]] = []
        """Later leaves whose hash :attr:`by_hash` already has (the index must hold them too)."""

    def add(self, index: int, leaf_hash: bytes, key_digest: bytes | None) -> None:
        """Add leaf ``index`` (leaves are added in index order)."""
        if self.by_hash.setdefault(leaf_hash, index) != index:
            self.extra_hashes.append((leaf_hash, index))
        if key_digest is not None:
            self.by_digest[key_digest] = index

    def discard(self, index: int, leaf_hash: bytes, key_digest: bytes | None) -> None:
        """Undo :meth:`add` of the last leaf added (its batch was not stored)."""
        if self.by_hash.get(leaf_hash) == index:
            del self.by_hash[leaf_hash]
        elif self.extra_hashes and self.extra_hashes[-1] == (leaf_hash, index):
            self.extra_hashes.pop()
        if key_digest is not None and self.by_digest.get(key_digest) == index:
            del self.by_digest[key_digest]

    def leaf_hash_pairs(self) -> Iterator[tuple[bytes, int]]:
        """Every ``(leaf hash, index)`` of the segment."""
        yield from self.by_hash.items()
        yield from self.extra_hashes


class IndexTail:
    """Every leaf from :attr:`low` on that the hash-keyed indexes may not hold yet.

    Only the sequencer's thread changes it; readers take :attr:`view`.
    """

    __slots__ = ("view",)

    def __init__(self, low: int) -> None:
        self.view: tuple[int, tuple[TailSegment, ...]] = (low, (TailSegment(low),))
        """``(low, segments)``: the segments hold every leaf from ``low`` on, oldest first."""

    @property
    def low(self) -> int:
        """The first leaf the indexes may not hold."""
        return self.view[0]

    @property
    def active(self) -> TailSegment:
        """The segment new leaves go to."""
        return self.view[1][-1]

    @property
    def flushing(self) -> TailSegment | None:
        """The frozen segment a flush is writing, if one is."""
        segments = self.view[1]
        return segments[0] if len(segments) > 1 else None

    def freeze(self, at: int) -> TailSegment:
        """Start a flush of every leaf below ``at`` (the tree's size): return their segment."""
        low, segments = self.view
        if len(segments) > 1:
            raise RuntimeError("a flush is already running")
        frozen = segments[0]
        self.view = (low, (frozen, TailSegment(at)))
        return frozen

    def flushed(self) -> None:
        """The frozen segment is in the indexes (committed): forget it."""
        _, segments = self.view
        if len(segments) != 2:
            raise RuntimeError("no flush is running")
        active = segments[1]
        self.view = (active.start, (active,))

    def find_digest(self, key_digest: bytes) -> int | None:
        """The leaf stored with this idempotency key digest, if it is in the tail."""
        for segment in self.view[1]:
            index = segment.by_digest.get(key_digest)
            if index is not None:
                return index
        return None


class StaleSnapshotError(Exception):
    """The snapshot predates a flush whose leaves the view no longer holds: take a newer one."""


def find_leaf_hash(
    snapshot: ReadSnapshot,
    view: tuple[int, tuple[TailSegment, ...]],
    leaf_hash: bytes,
    below: int,
) -> int | None:
    """The smallest index ``< below`` whose leaf hash is ``leaf_hash``, in the indexes of
    ``snapshot`` or in ``view`` (an :attr:`IndexTail.view` taken *after* the snapshot opened).

    Raises :class:`StaleSnapshotError` when the view starts above the snapshot's
    ``indexed_upto``: leaves between the two would be in neither.
    """
    low, segments = view
    if low > snapshot.indexed_upto():
        raise StaleSnapshotError(
            f"view from leaf {low}, snapshot indexed up to {snapshot.indexed_upto()}"
        )
    found = None
    for segment in segments:  # oldest first: the first hit is the smallest index
        found = segment.by_hash.get(leaf_hash)
        if found is not None:
            break
    if found is not None and found >= below:
        found = None
    indexed = snapshot.find_leaf_hash(leaf_hash, below if found is None else found)
    return found if indexed is None else indexed
