"""Building proofs from a read snapshot: O(log n) stored hashes per proof.

Each proof element is the hash of a subtree, which splits into perfect
subtrees, all of which are stored. Only subtrees on the right edge of a tree
that is not a power of two split into more than one, and those few are
re-hashed here. Nothing walks the tree.

:mod:`sealog.client.proof` names those subtrees
(:func:`~sealog.client.proof.inclusion_path`,
:func:`~sealog.client.proof.consistency_path`) as plain ``(level, index)``
pairs, because a proof is served thousands of times a second and objects per
node cost more than the reads.

Sizes and indexes for which no proof exists are the caller's error,
:class:`~sealog.server.errors.ProofPreconditionError`; a snapshot that lacks a
hash the proof needs is :class:`~sealog.server.storage.StorageCorruptError`.
"""

from __future__ import annotations

from sealog.client.errors import InvalidProofError
from sealog.client.proof import (
    Path,
    consistency_path,
    fold_subtree,
    inclusion_path,
    subtree_nodes,
)
from sealog.server.errors import ProofPreconditionError
from sealog.server.storage import ReadSnapshot

__all__ = ["build_consistency_proof", "build_inclusion_proof", "build_range_proof"]


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


def _inclusion_path(index: int, size: int) -> Path:
    try:
        return inclusion_path(index, size)
    except InvalidProofError as e:
        raise ProofPreconditionError(str(e)) from e


def _consistency_path(size1: int, size2: int) -> Path:
    try:
        return consistency_path(size1, size2)
    except InvalidProofError as e:
        raise ProofPreconditionError(str(e)) from e


def build_inclusion_proof(snapshot: ReadSnapshot, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` (RFC 6962 §2.1.1).

    Preconditions: ``0 <= index < size < 2^63`` (else :class:`ProofPreconditionError`),
    and the snapshot holds at least ``size`` leaves.
    """
    return _folded(snapshot, *_inclusion_path(index, size))


def build_consistency_proof(snapshot: ReadSnapshot, size1: int, size2: int) -> list[bytes]:
    """The consistency proof from ``size1`` to ``size2`` (RFC 6962 §2.1.2).

    Preconditions: ``0 < size1 <= size2 < 2^63`` (else :class:`ProofPreconditionError`),
    and the snapshot holds at least ``size2`` leaves.
    """
    return _folded(snapshot, *_consistency_path(size1, size2))


def build_range_proof(
    snapshot: ReadSnapshot, start: int, end: int, size: int
) -> tuple[list[bytes], list[bytes]]:
    """The range proof of leaves ``[start, end)`` in the tree of ``size``.

    Returns ``(left_frontier, consistency_proof)``; see :mod:`sealog.client.range_proof`.
    Preconditions: ``0 <= start < end <= size < 2^63`` (else
    :class:`ProofPreconditionError`), and the snapshot holds at least ``size`` leaves.
    """
    if not 0 <= start < end <= size:
        raise ProofPreconditionError(
            f"range [{start}, {end}) in tree size {size}: want 0 <= start < end <= size"
        )
    frontier = [(node.level, node.index) for node in subtree_nodes(0, start)]
    return snapshot.read_node_hashes(frontier), _folded(snapshot, *_consistency_path(end, size))
