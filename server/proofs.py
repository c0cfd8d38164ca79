"""Building proofs from a read snapshot: O(log n) stored hashes per proof.

Each proof element is the hash of a subtree; :mod:`sealog.client.proof` names
the perfect subtrees it splits into, all of which are stored. Only subtrees on
the right edge of a tree that is not a power of two split into more than one,
and those few are re-hashed here. Nothing walks the tree.
"""

from __future__ import annotations

from collections.abc import Sequence

from sealog.client.proof import (
    NodeID,
    consistency_proof_nodes,
    fold_subtree,
    inclusion_proof_nodes,
)
from sealog.client.range_proof import range_proof_nodes
from sealog.server.storage import ReadSnapshot

__all__ = ["build_consistency_proof", "build_inclusion_proof", "build_range_proof"]


def _hash_groups(snapshot: ReadSnapshot, groups: Sequence[tuple[NodeID, ...]]) -> list[bytes]:
    flat = [node for group in groups for node in group]
    hashes = snapshot.read_hashes(flat)
    out = []
    pos = 0
    for group in groups:
        out.append(fold_subtree(hashes[pos : pos + len(group)]))
        pos += len(group)
    return out


def build_inclusion_proof(snapshot: ReadSnapshot, index: int, size: int) -> list[bytes]:
    """The inclusion proof of leaf ``index`` in the tree of ``size`` (RFC 6962 §2.1.1).

    Precondition: the snapshot holds at least ``size`` leaves.
    """
    return _hash_groups(snapshot, inclusion_proof_nodes(index, size))


def build_consistency_proof(snapshot: ReadSnapshot, size1: int, size2: int) -> list[bytes]:
    """The consistency proof from ``size1`` to ``size2`` (RFC 6962 §2.1.2).

    Precondition: the snapshot holds at least ``size2`` leaves.
    """
    return _hash_groups(snapshot, consistency_proof_nodes(size1, size2))


def build_range_proof(
    snapshot: ReadSnapshot, start: int, end: int, size: int
) -> tuple[list[bytes], list[bytes]]:
    """The range proof of leaves ``[start, end)`` in the tree of ``size``.

    Returns ``(left_frontier, consistency_proof)``; see :mod:`sealog.client.range_proof`.
    """
    frontier, groups = range_proof_nodes(start, end, size)
    return snapshot.read_hashes(frontier), _hash_groups(snapshot, groups)
