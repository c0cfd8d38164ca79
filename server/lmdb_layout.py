"""Where the LMDB format puts each node hash: the closed-form layout of ``hashes``.

The tree is stored as the hashes of its perfect subtrees. When leaf ``i`` is
appended it completes the node at level 0 (its own leaf hash) and one node at
each level ``L`` for which the low ``L`` bits of ``i`` are all ones. Every
one of them is stored except the nodes of levels 1 to :data:`RECOMPUTED_LEVELS`:
those cover at most ``2**RECOMPUTED_LEVELS`` leaves and are recomputed from the
stored leaf hashes when a proof needs one.

Stored nodes are numbered in the order they were completed: the *position*
of a node is how many stored nodes were completed before it (see
:func:`hash_position`, a closed form). Positions are cut into groups of
:data:`GROUP_NODES`; a node is stored in group ``position // GROUP_NODES`` at
slot ``position % GROUP_NODES`` (:func:`hash_location`), so every write goes at
the end of the table and the leaf hashes of consecutive leaves are next to
each other.

docs/storage.md, "Where a node hash lives", derives the closed forms. The
tree's nodes are RFC 6962 §2.1's perfect subtrees, named as in
:mod:`sealog.client.proof`.
"""

from __future__ import annotations

from sealog.client.proof import NodeID

__all__ = [
    "GROUP_NODES",
    "RECOMPUTED_LEVELS",
    "hash_count",
    "hash_location",
    "hash_position",
    "is_stored",
    "node_at",
    "stored_before",
]


RECOMPUTED_LEVELS = 2
"""Nodes of levels 1 to this are not stored: each is recomputed from its 2 or 4 leaf hashes."""
GROUP_NODES = 123
"""Stored nodes per group. A group's values are a 1-byte slot and a 32-byte hash; 123 of
them (4,059 bytes) fill one 4 KiB LMDB page of sorted duplicates (4,080 bytes after its
header), so each group is exactly one full page and its slot fits in one byte."""


_RECOMPUTED = tuple(range(1, RECOMPUTED_LEVELS + 1))


def is_stored(level: int) -> bool:
    """Whether nodes of ``level`` are stored (else recomputed from their leaf hashes)."""
    return level == 0 or level > RECOMPUTED_LEVELS


def stored_before(leaves: int) -> int:
    """How many stored nodes the leaves ``[0, leaves)`` complete.

    Those leaves complete ``leaves >> L`` nodes at each level ``L``, and the sum of
    ``b >> L`` over every ``L >= 0`` is ``2b - popcount(b)``; the levels that are
    not stored are taken out again.
    """
    b = leaves
    n = 2 * b - b.bit_count()
    for level in _RECOMPUTED:
        n -= b >> level
    return n


def hash_position(level: int, index: int) -> int:
    """The position of stored node ``(level, index)``: how many stored nodes precede it.

    The node is completed by leaf ``c = ((index + 1) << level) - 1``, after the
    nodes of every leaf before ``c`` and, at ``c``, after its leaf hash and its
    stored nodes of the levels in between.
    """
    if not is_stored(level):
        raise ValueError(f"nodes of level {level} are not stored")
    c = ((index + 1) << level) - 1
    return stored_before(c) + (level - RECOMPUTED_LEVELS if level else 0)


def hash_location(node: NodeID) -> tuple[int, int]:
    """Return ``(group, slot)``: where the hash of stored ``node`` is (docs/storage.md)."""
    return divmod(hash_position(node.level, node.index), GROUP_NODES)


def hash_count(index: int) -> int:
    """How many node hashes appending leaf ``index`` stores: its leaf hash, and one per
    trailing one bit of ``index`` beyond the levels that are recomputed."""
    trailing_ones = (index ^ (index + 1)).bit_length() - 1
    return 1 + max(0, trailing_ones - RECOMPUTED_LEVELS)


def node_at(position: int) -> tuple[int, int]:
    """The ``(level, index)`` of the stored node at ``position``: :func:`hash_position` inverted."""
    if position < 0:
        raise ValueError(f"position: {position}, want >= 0")
    # stored_before grows by at least 1 a leaf and at most 2 on average: bisect for
    # the last leaf whose nodes start at or before position.
    low, high = position // 2, position + 1  # stored_before(low) <= position < stored_before(high)
    while high - low > 1:
        mid = (low + high) // 2
        if stored_before(mid) <= position:
            low = mid
        else:
            high = mid
    k = position - stored_before(low)
    if k == 0:
        return 0, low
    level = RECOMPUTED_LEVELS + k
    return level, low >> level
