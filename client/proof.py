"""Which tree nodes an RFC 6962 proof is made of: the prover's side.

A tree stores the hashes of its *perfect* subtrees only: the node at ``level``
and ``index`` covers leaves ``[index << level, (index + 1) << level)``. For a
tree of size 6 that is::

              (2,0)                 level 2: leaves 0-3
          /          \\
       (1,0)        (1,1)     (1,2) level 1
       /   \\        /   \\      /  \\
    (0,0) (0,1)  (0,2) (0,3) (0,4) (0,5)

The root of the size-6 tree, ``MTH(D[0:6]) = H((2,0), (1,2))``, is not a
perfect subtree, so it is never stored. Every element of an inclusion or
consistency proof (RFC 6962 §2.1.1 ``PATH`` and §2.1.2 ``PROOF``) is the hash of
a subtree ``D[begin:end]``; this module names, for each element, the perfect
subtrees that subtree splits into. A prover reads those O(log n) stored hashes
and folds each group with :func:`fold_subtree`; only the right edge of the tree
ever needs more than one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sealog.client.errors import InvalidProofError
from sealog.client.hashing import node_hash

__all__ = [
    "NodeID",
    "Path",
    "consistency_path",
    "consistency_proof_nodes",
    "fold_subtree",
    "inclusion_path",
    "inclusion_proof_nodes",
    "largest_power_of_two_below",
    "subtree_nodes",
]

MAX_TREE_SIZE = 1 << 63
"""Sizes and indices are unsigned 64-bit on the wire; we keep them below 2^63."""


@dataclass(frozen=True, slots=True, order=True)
class NodeID:
    """A perfect subtree: ``2**level`` leaves starting at leaf ``index << level``."""

    level: int
    index: int

    @property
    def begin(self) -> int:
        """The first leaf under this node."""
        return self.index << self.level

    @property
    def end(self) -> int:
        """One past the last leaf under this node."""
        return (self.index + 1) << self.level


def largest_power_of_two_below(n: int) -> int:
    """Return ``k``, the largest power of two with ``k < n`` (RFC 6962 §2.1). Needs n > 1."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_nodes(begin: int, end: int) -> tuple[NodeID, ...]:
    """Split ``D[begin:end]`` into perfect subtrees, largest (leftmost) first.

    Precondition: ``D[begin:end]`` is a subtree RFC 6962's split produces, i.e.
    ``begin`` is a multiple of the largest power of two ``>= end - begin``. The
    sizes of the parts are then the set bits of ``end - begin``, high to low.
    """
    nodes: list[NodeID] = []
    size = end - begin
    while size:
        level = size.bit_length() - 1
        nodes.append(NodeID(level, begin >> level))
        begin += 1 << level
        size -= 1 << level
    return tuple(nodes)


def fold_subtree(hashes: Sequence[bytes]) -> bytes:
    """Hash the perfect subtrees of :func:`subtree_nodes`, given in its order.

    ``MTH`` splits a non-perfect subtree into a perfect left part and the rest,
    so its hash is a right fold: ``H(p0, H(p1, ... H(p[n-2], p[n-1])))``.
    """
    if not hashes:
        raise ValueError("fold_subtree needs at least one hash")
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _check_size(name: str, value: int) -> None:
    if not 0 <= value < MAX_TREE_SIZE:
        raise InvalidProofError(f"{name}: {value}, want 0 <= {name} < 2^63")


Path = tuple[list[tuple[int, int]], list[int]]
"""A proof's nodes as plain ``(level, index)`` pairs in proof order, and how many of
them make up each proof element (largest first within one, as :func:`subtree_nodes`)."""


def _add_subtrees(begin: int, end: int, nodes: list[tuple[int, int]]) -> int:
    """Append the perfect subtrees of ``D[begin:end]`` (largest first); return how many."""
    count = 0
    while begin < end:
        level = (end - begin).bit_length() - 1
        nodes.append((level, begin >> level))
        begin += 1 << level
        count += 1
    return count


def _walk(
    level: int, first: int, size: int, nodes: list[tuple[int, int]], groups: list[int]
) -> None:
    """Append the siblings on the way from the node of ``level`` that holds leaf ``first``
    up to the root of ``D[0:size]``.

    At each level the sibling is a stored perfect subtree, except on the right
    edge: a sibling that starts at or beyond ``size`` is no sibling at all (the
    node is carried up unchanged, as RFC 6962's split leaves it), and one that
    runs past ``size`` is the subtree ``D[begin:size]``, split into perfect
    subtrees. This is RFC 6962's recursion walked bottom up.
    """
    top = (size - 1).bit_length()  # the root's level
    # Below the lowest level at which the node holding the leaf reaches past the
    # tree's end, every sibling is a whole perfect subtree: those need no tests.
    # That node's level is the higher of two: the highest bit in which first and
    # size - 1 differ, plus one, and the trailing one bits of size - 1, plus one.
    last = size - 1
    whole = min(top, max((first ^ last).bit_length(), (last ^ (last + 1)).bit_length()) - 1)
    for lvl in range(level, whole):
        nodes.append((lvl, (first >> lvl) ^ 1))
        groups.append(1)
    for lvl in range(max(level, whole), top):
        sibling = (first >> lvl) ^ 1
        begin = sibling << lvl
        if begin >= size:
            continue
        if begin + (1 << lvl) <= size:
            nodes.append((lvl, sibling))
            groups.append(1)
        else:
            groups.append(_add_subtrees(begin, size, nodes))


def inclusion_path(index: int, size: int) -> Path:
    """The nodes of the inclusion proof ``PATH(index, D[0:size])`` (RFC 6962 §2.1.1) as a
    :data:`Path`, leaf end first: the order RFC 9162 §2.1.3.2 verifies in.

    Raises :class:`InvalidProofError` unless ``0 <= index < size``.
    """
    _check_size("size", size)
    if not 0 <= index < size:
        raise InvalidProofError(f"index: {index}, want 0 <= index < size {size}")
    nodes: list[tuple[int, int]] = []
    groups: list[int] = []
    _walk(0, index, size, nodes, groups)
    return nodes, groups


def consistency_path(size1: int, size2: int) -> Path:
    """The nodes of the consistency proof ``PROOF(size1, D[0:size2])`` (RFC 6962 §2.1.2)
    as a :data:`Path`, in proof order.

    The proof between equal sizes is empty. ``size1 == 0`` is rejected, as
    golang.org/x/mod/sumdb/tlog does: every tree is consistent with the empty
    one, so such a proof proves nothing.
    Raises :class:`InvalidProofError` unless ``0 < size1 <= size2``.
    """
    _check_size("size2", size2)
    if not 0 < size1 <= size2:
        raise InvalidProofError(f"size1: {size1}, want 0 < size1 <= size2 {size2}")
    nodes: list[tuple[int, int]] = []
    groups: list[int] = []
    if size1 == size2:
        return nodes, groups
    # RFC 6962's SUBPROOF descends to the largest perfect subtree that ends at
    # size1; the proof is that subtree (unless it is the whole old tree, which
    # the verifier knows as the old root) and then its path to the new root.
    level = (size1 & -size1).bit_length() - 1
    index = (size1 - 1) >> level
    if index:
        nodes.append((level, index))
        groups.append(1)
    _walk(level, index << level, size2, nodes, groups)
    return nodes, groups


def _grouped(path: Path) -> list[tuple[NodeID, ...]]:
    nodes, groups = path
    out: list[tuple[NodeID, ...]] = []
    pos = 0
    for n in groups:
        if n == 1:  # most elements: one whole perfect subtree
            out.append((NodeID(*nodes[pos]),))
        else:
            out.append(tuple(NodeID(level, index) for level, index in nodes[pos : pos + n]))
        pos += n
    return out


def inclusion_proof_nodes(index: int, size: int) -> list[tuple[NodeID, ...]]:
    """:func:`inclusion_path` as one group of :class:`NodeID` per proof element."""
    return _grouped(inclusion_path(index, size))


def consistency_proof_nodes(size1: int, size2: int) -> list[tuple[NodeID, ...]]:
    """:func:`consistency_path` as one group of :class:`NodeID` per proof element."""
    return _grouped(consistency_path(size1, size2))
