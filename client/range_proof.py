"""Proving a run of consecutive leaves at once: range proofs.

To show that leaves ``[start, end)`` are at those indices in the tree of
``size`` (``0 <= start < end <= size``), the prover sends

- the *left frontier*: the roots of the perfect subtrees that make up
  ``D[0:start]``, largest first (``subtree_nodes(0, start)``), and
- the RFC 6962 consistency proof from ``end`` to ``size`` (none if equal).

The verifier appends the leaf hashes to a :class:`CompactRange` seeded with the
frontier, which yields ``MTH(D[0:end])``, and checks that root against the
signed root with the consistency proof (RFC 9162 §2.1.4.2). If it holds, the
leaves are where the prover says: a different leaf or position would need a
SHA-256 collision. The proof costs ``O(log size)`` hashes however many leaves
it covers, and verifying it ``O(end - start)`` hashes, against
``O((end - start) log size)`` for one inclusion proof per leaf.

From a verified range proof, the inclusion proof of any leaf in the range can
be derived without asking the server: every node on its path is either in the
frontier, completed while appending, part of the consistency proof, or a hash
of those (:meth:`VerifiedRange.inclusion_proof`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sealog.client.compact import CompactRange
from sealog.client.errors import InvalidProofError, RootMismatchError
from sealog.client.hashing import node_hash
from sealog.client.proof import (
    NodeID,
    consistency_proof_nodes,
    inclusion_proof_nodes,
    largest_power_of_two_below,
    subtree_nodes,
)
from sealog.client.verify import verify_consistency, verify_inclusion

__all__ = ["VerifiedRange", "range_proof_nodes", "verify_range"]


def range_proof_nodes(
    start: int, end: int, size: int
) -> tuple[tuple[NodeID, ...], list[tuple[NodeID, ...]]]:
    """Name the nodes of the range proof of ``[start, end)`` in the tree of ``size``.

    Returns the left frontier (one perfect node per hash) and the consistency
    proof groups (as :func:`consistency_proof_nodes`).
    Raises :class:`InvalidProofError` unless ``0 <= start < end <= size``.
    """
    if not 0 <= start < end <= size:
        raise InvalidProofError(
            f"range [{start}, {end}) in tree size {size}: want 0 <= start < end <= size"
        )
    return subtree_nodes(0, start), consistency_proof_nodes(end, size)


@dataclass(frozen=True)
class VerifiedRange:
    """Leaves ``[start, start + len(leaf_hashes))`` proven in the tree of ``size``, ``root``."""

    start: int
    size: int
    root: bytes
    leaf_hashes: tuple[bytes, ...]
    left_frontier: tuple[bytes, ...]
    consistency_proof: tuple[bytes, ...]
    _known: dict[tuple[int, int], bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def end(self) -> int:
        """One past the last leaf of the range."""
        return self.start + len(self.leaf_hashes)

    def _subtree_hash(self, begin: int, end: int) -> bytes:
        known = self._known
        h = known.get((begin, end))
        if h is None:
            if end - begin < 2:
                raise InvalidProofError(f"leaf {begin} is outside the proven range")
            mid = begin + largest_power_of_two_below(end - begin)
            h = node_hash(self._subtree_hash(begin, mid), self._subtree_hash(mid, end))
            known[(begin, end)] = h
        return h

    def _learn(self) -> None:
        known = self._known
        for node, h in zip(subtree_nodes(0, self.start), self.left_frontier, strict=True):
            known[(node.begin, node.end)] = h
        cr = CompactRange(self.start, self.left_frontier)
        for j, lh in enumerate(self.leaf_hashes, self.start):
            for level, h in enumerate(cr.append(lh)):
                known[(j + 1 - (1 << level), j + 1)] = h
        if self.end < self.size:
            groups = consistency_proof_nodes(self.end, self.size)
            for group, h in zip(groups, self.consistency_proof, strict=True):
                known[(group[0].begin, group[-1].end)] = h

    def inclusion_proof(self, index: int) -> list[bytes]:
        """Derive, and verify, the inclusion proof of leaf ``index`` in the tree of ``size``."""
        if not self.start <= index < self.end:
            raise InvalidProofError(
                f"index: {index}, want {self.start} <= index < {self.end} (the proven range)"
            )
        if not self._known:
            self._learn()
        proof = [
            self._subtree_hash(group[0].begin, group[-1].end)
            for group in inclusion_proof_nodes(index, self.size)
        ]
        verify_inclusion(index, self.size, self.leaf_hashes[index - self.start], proof, self.root)
        return proof


def verify_range(
    start: int,
    leaf_hashes: Sequence[bytes],
    size: int,
    root: bytes,
    left_frontier: Sequence[bytes],
    consistency_proof: Sequence[bytes],
) -> VerifiedRange:
    """Check a range proof; return the :class:`VerifiedRange` or raise.

    Raises :class:`InvalidProofError` for a malformed proof (wrong sizes,
    frontier length or hash lengths) and :class:`RootMismatchError` when the
    leaves do not lead to ``root``.
    """
    end = start + len(leaf_hashes)
    if not 0 <= start < end <= size:
        raise InvalidProofError(
            f"range [{start}, {end}) in tree size {size}: want 0 <= start < end <= size"
        )
    cr = CompactRange(start, left_frontier)
    cr.extend(leaf_hashes)
    root_end = cr.root()
    if end == size:
        if consistency_proof:
            raise InvalidProofError(
                f"range proof of [{start}, {end}) in tree size {size}: "
                f"{len(consistency_proof)} consistency hashes, want 0"
            )
        if root_end != root:
            raise RootMismatchError(
                f"range proof of [{start}, {end}) in tree size {size}",
                expected=root,
                calculated=root_end,
            )
    else:
        verify_consistency(end, size, root_end, root, consistency_proof)
    return VerifiedRange(
        start, size, root, tuple(leaf_hashes), tuple(left_frontier), tuple(consistency_proof)
    )
