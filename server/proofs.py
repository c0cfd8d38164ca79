"""Building proofs from a read snapshot: O(log n) stored hashes per proof.

Each proof element is the hash of a subtree, which splits into perfect
subtrees, all of which are stored. Only subtrees on the right edge of a tree
that is not a power of two split into more than one, and those few are
re-hashed here. Nothing walks the tree.

:mod:`sealog.client.proof` names those subtrees as :class:`~sealog.client.proof.NodeID` groups, the
reference the tests hold to; this module finds the same nodes as plain
``(level, index)`` pairs with bit arithmetic (:func:`inclusion_path`,
:func:`consistency_path`), because a proof is served thousands of times a
second and objects per node cost more than the reads.
"""

from __future__ import annotations

from sealog.client.errors import InvalidProofError
from sealog.client.proof import MAX_TREE_SIZE, fold_subtree
from sealog.server.storage import ReadSnapshot

__all__ = [
    "build_consistency_proof",
    "build_inclusion_proof",
    "build_range_proof",
    "consistency_path",
    "inclusion_path",
]


def inclusion_path(index: int, size: int) -> tuple[list[tuple[int, int]], list[int]]:
    """The perfect subtrees of the inclusion proof of ``index`` in a tree of ``size``.

    Returns ``(nodes, groups)``: every ``(level, node index)`` in proof order,
    leaf end first, and how many of them make up each proof element (the
    largest first within one, as :func:`~sealog.client.proof.subtree_nodes`).
    The same nodes as :func:`~sealog.client.proof.inclusion_proof_nodes`,
    found with bit arithmetic: at each level below the root, the proof has the
    sibling of the node holding the leaf, if that sibling starts inside the
    tree; a sibling that ends past ``size`` (on the right edge) is the perfect
    subtrees of the set bits of what is left.
    """
    if not 0 <= size < MAX_TREE_SIZE:
        raise InvalidProofError(f"size: {size}, want 0 <= size < 2^63")
    if not 0 <= index < size:
        raise InvalidProofError(f"index: {index}, want 0 <= index < size {size}")
    levels = (size - 1).bit_length()
    # Below the lowest level at which the node holding the leaf reaches past the
    # tree's end, every sibling is a whole perfect subtree: those need no tests.
    # That node's level is the higher of two: the highest bit in which index and
    # size - 1 differ, plus one, and the trailing one bits of size - 1, plus one.
    last = size - 1
    whole = min(levels, max((index ^ last).bit_length(), (last ^ (last + 1)).bit_length()) - 1)
    nodes = [(level, (index >> level) ^ 1) for level in range(whole)]
    groups = [1] * whole
    for level in range(whole, levels):
        sibling = (index >> level) ^ 1
        begin = sibling << level
        if begin >= size:
            continue  # no sibling: the node is carried up unchanged
        if begin + (1 << level) <= size:
            nodes.append((level, sibling))
            groups.append(1)
            continue
        rest = size - begin
        parts = 0
        while rest:
            k = rest.bit_length() - 1
            nodes.append((k, begin >> k))
            begin += 1 << k
            rest -= 1 << k
            parts += 1
        groups.append(parts)
    return nodes, groups


def _subtrees(begin: int, end: int, nodes: list[tuple[int, int]]) -> int:
    """Append the perfect subtrees of ``D[begin:end]`` (largest first); return how many."""
    size = end - begin
    count = 0
    while size:
        level = size.bit_length() - 1
        nodes.append((level, begin >> level))
        begin += 1 << level
        size -= 1 << level
        count += 1
    return count


def consistency_path(size1: int, size2: int) -> tuple[list[tuple[int, int]], list[int]]:
    """:func:`~sealog.client.proof.consistency_proof_nodes` as ``(level, index)`` pairs
    and group sizes, like :func:`inclusion_path`: the same walk, without objects per node."""
    if not 0 <= size2 < MAX_TREE_SIZE:
        raise InvalidProofError(f"size2: {size2}, want 0 <= size2 < 2^63")
    if not 0 < size1 <= size2:
        raise InvalidProofError(f"size1: {size1}, want 0 < size1 <= size2 {size2}")
    nodes: list[tuple[int, int]] = []
    groups: list[int] = []
    if size1 == size2:
        return nodes, groups
    siblings: list[tuple[int, int]] = []
    begin, end, m = 0, size2, size1
    complete = True
    while m != end - begin:
        k = 1 << ((end - begin - 1).bit_length() - 1)
        if m <= k:
            siblings.append((begin + k, end))
            end = begin + k
        else:
            siblings.append((begin, begin + k))
            begin += k
            m -= k
            complete = False
    if not complete:
        groups.append(_subtrees(begin, end, nodes))
    for b, e in reversed(siblings):
        groups.append(_subtrees(b, e, nodes))
    return nodes, groups


_FOLDS: dict[bytes, bytes] = {}
"""Recent folds of right-edge subtrees, by their input hashes. Every proof for the same
tree size whose leaf is left of the same edge folds the same hashes: with this, once."""
_MAX_FOLDS = 4096


def _fold(hashes: list[bytes]) -> bytes:
    """:func:`fold_subtree`, remembered: a pure function of the hashes, so always right."""
    key = b"".join(hashes)
    folded = _FOLDS.get(key)
    if folded is None:
        if len(_FOLDS) >= _MAX_FOLDS:
            _FOLDS.clear()
        folded = _FOLDS[key] = fold_subtree(hashes)
    return folded


def _folded(snapshot: ReadSnapshot, nodes: list[tuple[int, int]], groups: list[int]) -> list[bytes]:
    hashes = snapshot.read_node_hashes(nodes)
    if len(groups) == len(hashes):
        return hashes
    out = []
    pos = 0
    for n in groups:
        out.append(hashes[pos] if n == 1 else _fold(hashes[pos : pos + n]))
        pos += n
    return out


def build_inclusion_proof(snapshot: ReadSnapshot, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` (RFC 6962 §2.1.1).

    Precondition: the snapshot holds at least ``size`` leaves.
    """
    return _folded(snapshot, *inclusion_path(index, size))


def build_consistency_proof(snapshot: ReadSnapshot, size1: int, size2: int) -> list[bytes]:
    """The consistency proof from ``size1`` to ``size2`` (RFC 6962 §2.1.2).

    Precondition: the snapshot holds at least ``size2`` leaves.
    """
    return _folded(snapshot, *consistency_path(size1, size2))


def build_range_proof(
    snapshot: ReadSnapshot, start: int, end: int, size: int
) -> tuple[list[bytes], list[bytes]]:
    """The range proof of leaves ``[start, end)`` in the tree of ``size``.

    Returns ``(left_frontier, consistency_proof)``; see :mod:`sealog.client.range_proof`.
    """
    if not 0 <= start < end <= size:
        raise InvalidProofError(
            f"range [{start}, {end}) in tree size {size}: want 0 <= start < end <= size"
        )
    frontier: list[tuple[int, int]] = []
    _subtrees(0, start, frontier)
    return snapshot.read_node_hashes(frontier), _folded(snapshot, *consistency_path(end, size))
