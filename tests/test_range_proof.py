"""Range proofs: many consecutive leaves proven at once, and inclusion proofs derived from them."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rfc6962_reference import ReferenceTree

from sealog.client.compact import CompactRange
from sealog.client.errors import InvalidProofError, RootMismatchError, VerificationError
from sealog.client.proof import fold_subtree
from sealog.client.range_proof import range_proof_nodes, verify_range


def _leaves(n: int) -> list[bytes]:
    return [b"leaf %d" % i for i in range(n)]


class _Stored:
    """Every perfect-subtree hash of a tree, as a log stores them."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.ref = ReferenceTree(leaves)
        self.hashes = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves]

    def proof(self, start: int, end: int) -> tuple[list[bytes], list[bytes]]:
        frontier, groups = range_proof_nodes(start, end, self.ref.size)
        left = [self.ref.mth(n.begin, n.end) for n in frontier]
        right = [fold_subtree([self.ref.mth(n.begin, n.end) for n in g]) for g in groups]
        return left, right


@st.composite
def tree_and_range(draw: st.DrawFn) -> tuple[int, int, int]:
    size = draw(st.integers(1, 300))
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start + 1, size))
    return size, start, end


@settings(max_examples=300, deadline=None)
@given(tree_and_range())
def test_range_proof_verifies_and_derives_every_inclusion_proof(case: tuple[int, int, int]) -> None:
    size, start, end = case
    tree = _Stored(_leaves(size))
    left, right = tree.proof(start, end)
    root = tree.ref.mth(0, size)
    verified = verify_range(start, tree.hashes[start:end], size, root, left, right)
    for index in range(start, end):
        assert verified.inclusion_proof(index) == tree.ref.path(index, size)


@settings(max_examples=200, deadline=None)
@given(tree_and_range(), st.data())
def test_any_changed_hash_is_rejected(case: tuple[int, int, int], data: st.DataObject) -> None:
    size, start, end = case
    tree = _Stored(_leaves(size))
    left, right = tree.proof(start, end)
    root = tree.ref.mth(0, size)
    leaves = tree.hashes[start:end]
    parts = {"leaf": leaves, "left": left, "right": right}
    candidates = [(name, i) for name, hs in parts.items() for i in range(len(hs))]
    name, i = data.draw(st.sampled_from(candidates))
    changed = {k: list(v) for k, v in parts.items()}
    changed[name][i] = bytes([changed[name][i][0] ^ 1]) + changed[name][i][1:]
    with pytest.raises(RootMismatchError):
        verify_range(start, changed["leaf"], size, root, changed["left"], changed["right"])


def test_shifted_range_is_rejected() -> None:
    tree = _Stored(_leaves(13))
    left, right = tree.proof(5, 9)
    root = tree.ref.mth(0, 13)
    with pytest.raises(VerificationError):
        verify_range(6, tree.hashes[5:9], 13, root, left, right)
    with pytest.raises(VerificationError):
        verify_range(5, tree.hashes[5:9], 12, root, left, right)
    with pytest.raises(VerificationError):  # a leaf left out of the middle
        verify_range(5, tree.hashes[5:7] + tree.hashes[8:9], 13, root, left, right)


def test_malformed_range_proofs_are_rejected_before_hashing() -> None:
    tree = _Stored(_leaves(8))
    left, right = tree.proof(3, 5)
    root = tree.ref.mth(0, 8)
    with pytest.raises(InvalidProofError, match="compact range of size 3"):
        verify_range(3, tree.hashes[3:5], 8, root, left[:-1], right)
    with pytest.raises(InvalidProofError, match="want 0 <= start < end <= size"):
        verify_range(3, [], 8, root, left, right)
    with pytest.raises(InvalidProofError, match="want 0 <= start < end <= size"):
        verify_range(7, tree.hashes[3:5], 8, root, left, right)
    with pytest.raises(InvalidProofError, match="consistency hashes, want 0"):
        verify_range(6, tree.hashes[6:8], 8, root, tree.proof(6, 8)[0], [root])


def test_inclusion_proof_outside_the_range_is_refused() -> None:
    tree = _Stored(_leaves(10))
    left, right = tree.proof(4, 6)
    verified = verify_range(4, tree.hashes[4:6], 10, tree.ref.mth(0, 10), left, right)
    with pytest.raises(InvalidProofError, match="the proven range"):
        verified.inclusion_proof(6)


def test_compact_range_refuses_a_frontier_of_the_wrong_shape() -> None:
    with pytest.raises(InvalidProofError):
        CompactRange(5, [b"\x00" * 32])
    with pytest.raises(InvalidProofError):
        CompactRange(1, [b"\x00" * 31])
