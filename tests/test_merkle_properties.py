"""Merkle proofs, built and checked, against the RFC 6962 reference for every small tree.

In the manner of golang.org/x/mod/sumdb/tlog's tests: for every tree size up to
a few hundred and every index (or every pair of sizes) the proof sealog builds
from node IDs must equal the RFC's ``PATH`` / ``PROOF``, must verify, and must
stop verifying once anything about it is altered. Hypothesis then samples
larger trees, and trees of up to ``2**63 - 1`` leaves in which every perfect
subtree off the proof's path is an opaque stand-in hash (:class:`SparseTree`).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from merkle_support import flip_bit, stored_hashes
from rfc6962_reference import ReferenceTree

import sealog.client.verify as verify_module
from sealog.client.compact import CompactRange
from sealog.client.errors import InvalidProofError, RootMismatchError
from sealog.client.hashing import HASH_SIZE, leaf_hash
from sealog.client.proof import (
    NodeID,
    consistency_proof_nodes,
    fold_subtree,
    inclusion_proof_nodes,
    subtree_nodes,
)
from sealog.client.verify import (
    consistency_proof_length,
    inclusion_proof_length,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

EXHAUSTIVE = 300
"""Every index and every pair of tree sizes up to this is proved and checked."""
EXHAUSTIVE_PAIRS_ALTERED = 200
"""Up to this size, every consistency proof is also altered in every way below."""
SAMPLED_TREE = 5000
"""Hypothesis picks tree sizes up to this many leaves."""
MAX_SIZE = (1 << 63) - 1

REJECTED = (InvalidProofError, RootMismatchError)


def build_proof(
    groups: Sequence[tuple[NodeID, ...]], size: int, node_hash_of: Callable[[NodeID], bytes]
) -> list[bytes]:
    """Fold each group of stored perfect-subtree hashes into one proof element."""
    for group in groups:
        assert all(node.end <= size for node in group), f"{group} reaches past tree size {size}"
    return [fold_subtree([node_hash_of(node) for node in group]) for group in groups]


class Tree:
    """A tree of real leaves: the reference beside the node hashes a log would store."""

    def __init__(self, size: int) -> None:
        self.leaves = [b"leaf %d" % i for i in range(size)]
        self.leaf_hashes = [leaf_hash(leaf) for leaf in self.leaves]
        self.reference = ReferenceTree(self.leaves)
        self.stored = stored_hashes(self.leaf_hashes)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return build_proof(inclusion_proof_nodes(index, size), size, self.stored.__getitem__)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return build_proof(consistency_proof_nodes(size1, size2), size2, self.stored.__getitem__)


@cache
def tree() -> Tree:
    return Tree(SAMPLED_TREE)


class SparseTree(ReferenceTree):
    """An RFC 6962 tree of any size in which only a few leaves are hashed for real.

    Every perfect subtree that holds none of ``special`` leaves is an opaque
    stand-in hash, derived from its position; every other subtree is computed
    from its children as ``MTH`` says. Proofs about the special leaves only
    ever hash their way up through subtrees that hold them, so the tree is
    as good as a real one of that size for proving and checking them.
    """

    def __init__(self, *special: int) -> None:
        super().__init__(())
        self.special = special

    def _compute_mth(self, begin: int, end: int) -> bytes:
        n = end - begin
        perfect = n > 0 and n & (n - 1) == 0
        if perfect and (n == 1 or not any(begin <= s < end for s in self.special)):
            return hashlib.sha256(b"stand-in %d %d" % (begin, end)).digest()
        return super()._compute_mth(begin, end)

    def node_hash_of(self, node: NodeID) -> bytes:
        return self.mth(node.begin, node.end)


def expect_rejected(
    error: type[Exception], what: str, check: Callable[..., None], *args: object
) -> None:
    """Fail, naming the alteration, unless ``check(*args)`` raises ``error``."""
    try:
        check(*args)
    except error:
        return
    except Exception as e:
        pytest.fail(f"{what}: raised {e!r}, want {error.__name__}")
    pytest.fail(f"{what}: accepted, want {error.__name__}")


def inclusion_rejections(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> Iterator[tuple[str, tuple[int, int, bytes, list[bytes], bytes], type[Exception]]]:
    """Every way to alter a valid inclusion proof, with the error it must raise."""
    for i, h in enumerate(proof):
        bad = list(proof)
        bad[i] = flip_bit(h, (i * 67 + index) % 256)
        yield f"proof[{i}] bit flipped", (index, size, leaf, bad, root), RootMismatchError
    yield (
        "root bit flipped",
        (index, size, leaf, proof, flip_bit(root, index % 256)),
        (RootMismatchError),
    )
    yield (
        "leaf bit flipped",
        (index, size, flip_bit(leaf, size % 256), proof, root),
        (RootMismatchError),
    )
    if proof:
        yield "proof truncated", (index, size, leaf, proof[:-1], root), InvalidProofError
        yield "proof without first", (index, size, leaf, proof[1:], root), InvalidProofError
    yield "proof extended", (index, size, leaf, [*proof, root], root), InvalidProofError
    yield "proof prefixed", (index, size, leaf, [leaf, *proof], root), InvalidProofError
    if len(set(proof)) > 1:
        yield "proof reversed", (index, size, leaf, proof[::-1], root), RootMismatchError
        swapped = [proof[1], proof[0], *proof[2:]]
        if swapped != proof:
            yield "proof[0] and [1] swapped", (index, size, leaf, swapped, root), RootMismatchError


def check_inclusion_rejections(
    index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes
) -> None:
    for what, args, error in inclusion_rejections(index, size, leaf, proof, root):
        expect_rejected(error, f"{what}, index {index}, size {size}", verify_inclusion, *args)


def consistency_rejections(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> Iterator[tuple[str, tuple[int, int, bytes, bytes, list[bytes]], type[Exception]]]:
    """Every way to alter a valid consistency proof, with the error it must raise."""
    for i, h in enumerate(proof):
        bad = list(proof)
        bad[i] = flip_bit(h, (i * 67 + size1) % 256)
        yield f"proof[{i}] bit flipped", (size1, size2, root1, root2, bad), RootMismatchError
    yield (
        "root1 bit flipped",
        (size1, size2, flip_bit(root1, size2 % 256), root2, proof),
        (RootMismatchError),
    )
    yield (
        "root2 bit flipped",
        (size1, size2, root1, flip_bit(root2, size1 % 256), proof),
        (RootMismatchError),
    )
    if proof:
        yield "proof truncated", (size1, size2, root1, root2, proof[:-1]), InvalidProofError
        yield "proof without first", (size1, size2, root1, root2, proof[1:]), InvalidProofError
    yield "proof extended", (size1, size2, root1, root2, [*proof, root1]), InvalidProofError
    yield "proof prefixed", (size1, size2, root1, root2, [root1, *proof]), InvalidProofError
    if len(set(proof)) > 1:
        yield "proof reversed", (size1, size2, root1, root2, proof[::-1]), RootMismatchError
    if root1 != root2:
        yield "roots swapped", (size1, size2, root2, root1, proof), RootMismatchError


def check_consistency_rejections(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    for what, args, error in consistency_rejections(size1, size2, root1, root2, proof):
        expect_rejected(error, f"{what}, sizes {size1} to {size2}", verify_consistency, *args)


# --- Every small tree, exhaustively ------------------------------------------------------------


def test_compact_range_root_equals_mth_for_every_prefix() -> None:
    t = tree()
    compact = CompactRange()
    for size, h in enumerate(t.leaf_hashes, start=1):
        compact.append(h)
        assert compact.root() == t.reference.root(size), size
        assert compact.nodes() == subtree_nodes(0, size)
        assert list(compact.hashes) == [t.reference.mth(n.begin, n.end) for n in compact.nodes()]


def test_stored_hashes_are_mth_of_their_leaves() -> None:
    t = tree()
    for node, h in t.stored.items():
        assert h == t.reference.mth(node.begin, node.end), node
    assert len(t.stored) == 2 * SAMPLED_TREE - SAMPLED_TREE.bit_count()


def test_inclusion_proof_for_every_index_up_to_size_300() -> None:
    t = tree()
    for size in range(1, EXHAUSTIVE + 1):
        root = t.reference.root(size)
        for index in range(size):
            proof = t.inclusion_proof(index, size)
            assert proof == t.reference.path(index, size), (index, size)
            assert inclusion_proof_length(index, size) == len(proof)
            leaf = t.leaf_hashes[index]
            assert root_from_inclusion_proof(index, size, leaf, proof) == root
            verify_inclusion(index, size, leaf, proof, root)


def test_consistency_proof_for_every_pair_up_to_size_300() -> None:
    t = tree()
    for size2 in range(1, EXHAUSTIVE + 1):
        root2 = t.reference.root(size2)
        for size1 in range(1, size2 + 1):
            proof = t.consistency_proof(size1, size2)
            assert proof == t.reference.proof(size1, size2), (size1, size2)
            assert consistency_proof_length(size1, size2) == len(proof)
            verify_consistency(size1, size2, t.reference.root(size1), root2, proof)


def test_altered_inclusion_proofs_are_rejected_up_to_size_300() -> None:
    t = tree()
    for size in range(1, EXHAUSTIVE + 1):
        root = t.reference.root(size)
        for index in range(size):
            proof = t.inclusion_proof(index, size)
            check_inclusion_rejections(index, size, t.leaf_hashes[index], proof, root)


def test_altered_consistency_proofs_are_rejected_up_to_size_200() -> None:
    t = tree()
    for size2 in range(1, EXHAUSTIVE_PAIRS_ALTERED + 1):
        root2 = t.reference.root(size2)
        for size1 in range(1, size2 + 1):
            proof = t.consistency_proof(size1, size2)
            root1 = t.reference.root(size1)
            check_consistency_rejections(size1, size2, root1, root2, proof)


def test_inclusion_proof_does_not_prove_a_neighbouring_index_up_to_size_300() -> None:
    # The proof of leaf i, presented as proof that the same leaf hash sits at i - 1 or i + 1.
    t = tree()
    for size in range(1, EXHAUSTIVE + 1):
        root = t.reference.root(size)
        for index in range(size):
            proof = t.inclusion_proof(index, size)
            for other in (index - 1, index + 1):
                with pytest.raises(REJECTED):
                    verify_inclusion(other, size, t.leaf_hashes[index], proof, root)


def test_inclusion_proof_does_not_prove_a_neighbouring_tree_size_up_to_size_300() -> None:
    # The proof for size n, checked against the real root of the tree of size n - 1 or n + 1.
    t = tree()
    for size in range(1, EXHAUSTIVE + 1):
        for index in range(size):
            proof = t.inclusion_proof(index, size)
            for other in (size - 1, size + 1):
                root = t.reference.root(other)
                with pytest.raises(REJECTED):
                    verify_inclusion(index, other, t.leaf_hashes[index], proof, root)


def test_consistency_proof_does_not_prove_neighbouring_sizes_up_to_size_200() -> None:
    # The proof from m to n, checked as a proof from m +- 1 to n or from m to n +- 1, each
    # with the real roots of the sizes claimed.
    t = tree()
    for size2 in range(1, EXHAUSTIVE_PAIRS_ALTERED + 1):
        for size1 in range(1, size2 + 1):
            proof = t.consistency_proof(size1, size2)
            for m, n in (
                (size1 - 1, size2),
                (size1 + 1, size2),
                (size1, size2 - 1),
                (size1, size2 + 1),
            ):
                with pytest.raises(REJECTED):
                    verify_consistency(m, n, t.reference.root(m), t.reference.root(n), proof)


def test_a_tree_size_is_bound_by_the_checkpoint_not_by_the_proof() -> None:
    # RFC 6962 roots do not commit to the tree size: the proof of leaf 0 in the tree of
    # size 3, [leaf 1, leaf 2], hashes to MTH(D[0:3]) whether it is read as a proof for
    # size 3 or for size 4. Only a root from a signed (size, root) pair pins the size.
    t = tree()
    proof = t.inclusion_proof(0, 3)
    assert proof == [t.leaf_hashes[1], t.leaf_hashes[2]]
    verify_inclusion(0, 4, t.leaf_hashes[0], proof, t.reference.root(3))
    with pytest.raises(RootMismatchError):
        verify_inclusion(0, 4, t.leaf_hashes[0], proof, t.reference.root(4))


# --- Shape errors are caught before any hashing --------------------------------------------


@pytest.fixture
def no_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(left: bytes, right: bytes) -> bytes:
        raise AssertionError("hashed before the proof's shape was checked")

    monkeypatch.setattr(verify_module, "node_hash", fail)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
@pytest.mark.parametrize("which", ["leaf", "root", "proof[0]", "proof[2]"])
@pytest.mark.usefixtures("no_hashing")
def test_inclusion_hash_of_wrong_length_is_rejected(which: str, length: int) -> None:
    t = tree()
    leaf, proof, root = t.leaf_hashes[5], t.inclusion_proof(5, 8), t.reference.root(8)
    wrong = b"\x5a" * length
    if which == "leaf":
        leaf = wrong
    elif which == "root":
        root = wrong
    else:
        proof[int(which[-2])] = wrong
    with pytest.raises(InvalidProofError):
        verify_inclusion(5, 8, leaf, proof, root)


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
@pytest.mark.parametrize("which", ["root1", "root2", "proof[0]", "proof[2]"])
@pytest.mark.usefixtures("no_hashing")
def test_consistency_hash_of_wrong_length_is_rejected(which: str, length: int) -> None:
    t = tree()
    root1, root2, proof = t.reference.root(3), t.reference.root(8), t.consistency_proof(3, 8)
    wrong = b"\x5a" * length
    if which == "root1":
        root1 = wrong
    elif which == "root2":
        root2 = wrong
    else:
        proof[int(which[-2])] = wrong
    with pytest.raises(InvalidProofError):
        verify_consistency(3, 8, root1, root2, proof)


@pytest.mark.parametrize("change", [-1, 1])
@pytest.mark.usefixtures("no_hashing")
def test_proof_of_wrong_length_is_rejected(change: int) -> None:
    t = tree()
    inclusion = t.inclusion_proof(5, 13)
    consistency = t.consistency_proof(5, 13)
    extra = [t.leaf_hashes[0]] if change > 0 else []
    with pytest.raises(InvalidProofError):
        verify_inclusion(5, 13, t.leaf_hashes[5], inclusion[:change] + extra, t.reference.root(13))
    with pytest.raises(InvalidProofError):
        verify_consistency(
            5, 13, t.reference.root(5), t.reference.root(13), consistency[:change] + extra
        )


@pytest.mark.parametrize(
    ("index", "size"),
    [(0, 0), (1, 1), (8, 8), (9, 8), (-1, 8), (0, -1), (0, 1 << 63), ((1 << 63) - 1, 1 << 63)],
)
@pytest.mark.usefixtures("no_hashing")
def test_index_outside_tree_is_rejected(index: int, size: int) -> None:
    leaf = tree().leaf_hashes[0]
    with pytest.raises(InvalidProofError):
        verify_inclusion(index, size, leaf, [], leaf)
    with pytest.raises(InvalidProofError):
        inclusion_proof_nodes(index, size)
    with pytest.raises(InvalidProofError):
        inclusion_proof_length(index, size)


@pytest.mark.parametrize(
    ("size1", "size2"),
    [(0, 0), (0, 1), (0, 8), (2, 1), (9, 8), (-1, 8), (1, 1 << 63), (1 << 63, 1 << 63)],
)
@pytest.mark.usefixtures("no_hashing")
def test_consistency_sizes_out_of_order_are_rejected(size1: int, size2: int) -> None:
    root = tree().reference.root(1)
    with pytest.raises(InvalidProofError):
        verify_consistency(size1, size2, root, root, [])
    with pytest.raises(InvalidProofError):
        consistency_proof_nodes(size1, size2)
    with pytest.raises(InvalidProofError):
        consistency_proof_length(size1, size2)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 8, 300, MAX_SIZE])
def test_equal_sizes_need_an_empty_proof_and_equal_roots(size: int) -> None:
    root = SparseTree(size - 1).root(size)
    other = flip_bit(root, 0)
    assert consistency_proof_nodes(size, size) == []
    assert consistency_proof_length(size, size) == 0
    verify_consistency(size, size, root, root, [])
    with pytest.raises(RootMismatchError):
        verify_consistency(size, size, root, other, [])
    with pytest.raises(RootMismatchError):
        verify_consistency(size, size, other, root, [])
    with pytest.raises(InvalidProofError):
        verify_consistency(size, size, root, root, [root])


# --- Larger trees, sampled -----------------------------------------------------------------

SAMPLED = settings(deadline=None, max_examples=300)


@st.composite
def index_and_size(draw: st.DrawFn, max_size: int) -> tuple[int, int]:
    size = draw(st.integers(1, max_size))
    return draw(st.integers(0, size - 1)), size


@st.composite
def size_pair(draw: st.DrawFn, max_size: int) -> tuple[int, int]:
    size2 = draw(st.integers(1, max_size))
    return draw(st.integers(1, size2)), size2


@SAMPLED
@given(index_and_size(SAMPLED_TREE), st.randoms(use_true_random=False))
def test_sampled_inclusion_proof(case: tuple[int, int], rnd: random.Random) -> None:
    index, size = case
    t = tree()
    proof, root, leaf = t.inclusion_proof(index, size), t.reference.root(size), t.leaf_hashes[index]
    assert proof == t.reference.path(index, size)
    assert root_from_inclusion_proof(index, size, leaf, proof) == root
    verify_inclusion(index, size, leaf, proof, root)
    check_inclusion_rejections(index, size, leaf, proof, root)
    for i, h in enumerate(proof):
        bad = list(proof)
        bad[i] = flip_bit(h, rnd.randrange(8 * HASH_SIZE))
        with pytest.raises(RootMismatchError):
            verify_inclusion(index, size, leaf, bad, root)


@SAMPLED
@given(size_pair(SAMPLED_TREE), st.randoms(use_true_random=False))
def test_sampled_consistency_proof(case: tuple[int, int], rnd: random.Random) -> None:
    size1, size2 = case
    t = tree()
    proof = t.consistency_proof(size1, size2)
    root1, root2 = t.reference.root(size1), t.reference.root(size2)
    assert proof == t.reference.proof(size1, size2)
    verify_consistency(size1, size2, root1, root2, proof)
    check_consistency_rejections(size1, size2, root1, root2, proof)
    for i, h in enumerate(proof):
        bad = list(proof)
        bad[i] = flip_bit(h, rnd.randrange(8 * HASH_SIZE))
        with pytest.raises(RootMismatchError):
            verify_consistency(size1, size2, root1, root2, bad)


@SAMPLED
@given(index_and_size(MAX_SIZE))
def test_inclusion_proof_in_huge_tree(case: tuple[int, int]) -> None:
    index, size = case
    sparse = SparseTree(index)
    groups = inclusion_proof_nodes(index, size)
    proof = build_proof(groups, size, sparse.node_hash_of)
    leaf, root = sparse.mth(index, index + 1), sparse.root(size)
    assert proof == sparse.path(index, size)
    assert inclusion_proof_length(index, size) == len(groups)
    assert root_from_inclusion_proof(index, size, leaf, proof) == root
    verify_inclusion(index, size, leaf, proof, root)
    check_inclusion_rejections(index, size, leaf, proof, root)


@SAMPLED
@given(size_pair(MAX_SIZE))
def test_consistency_proof_in_huge_tree(case: tuple[int, int]) -> None:
    size1, size2 = case
    sparse = SparseTree(size1 - 1)
    groups = consistency_proof_nodes(size1, size2)
    proof = build_proof(groups, size2, sparse.node_hash_of)
    root1, root2 = sparse.root(size1), sparse.root(size2)
    assert proof == sparse.proof(size1, size2)
    assert consistency_proof_length(size1, size2) == len(groups)
    verify_consistency(size1, size2, root1, root2, proof)
    check_consistency_rejections(size1, size2, root1, root2, proof)


@settings(deadline=None, max_examples=2000)
@given(index_and_size(MAX_SIZE), size_pair(MAX_SIZE))
def test_proof_lengths_match_node_lists(inclusion: tuple[int, int], pair: tuple[int, int]) -> None:
    assert inclusion_proof_length(*inclusion) == len(inclusion_proof_nodes(*inclusion))
    assert consistency_proof_length(*pair) == len(consistency_proof_nodes(*pair))


@pytest.mark.parametrize("size", [1, 2, 3, (1 << 62) + 1, MAX_SIZE - 1, MAX_SIZE])
def test_proof_lengths_at_the_edges(size: int) -> None:
    for index in {i for i in (0, 1, size // 2, size - 2, size - 1) if 0 <= i < size}:
        assert inclusion_proof_length(index, size) == len(inclusion_proof_nodes(index, size))
        assert consistency_proof_length(index + 1, size) == len(
            consistency_proof_nodes(index + 1, size)
        )


@settings(deadline=None, max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=70), st.integers(0, 70))
def test_compact_range_over_any_leaves(leaves: list[bytes], cut: int) -> None:
    reference = ReferenceTree(leaves)
    compact = CompactRange()
    for size, leaf in enumerate(leaves, start=1):
        completed = compact.append(leaf_hash(leaf))
        index = size - 1
        # The leaf hash, then the root of each perfect subtree it completes.
        nodes = [NodeID(level, index >> level) for level in range((size & -size).bit_length())]
        assert completed == [reference.mth(node.begin, node.end) for node in nodes]
        assert compact.root() == reference.root(size)
    assert compact.size == len(leaves)
    # A frontier saved part way, then resumed or copied, reaches the same root as one
    # built in one go, and the copy does not move when the original grows.
    cut = min(cut, len(leaves))
    early = CompactRange()
    early.extend(leaf_hash(leaf) for leaf in leaves[:cut])
    resumed = CompactRange(early.size, early.hashes)
    copied = early.copy()
    rest = [leaf_hash(leaf) for leaf in leaves[cut:]]
    resumed.extend(rest)
    early.extend(rest)
    assert resumed.root() == early.root() == reference.root(len(leaves))
    assert copied.size == cut
    assert copied.root() == reference.root(cut)


@pytest.mark.parametrize(
    ("size", "count", "length"),
    [(5, 1, 32), (5, 3, 32), (5, 2, 31), (5, 2, 33), (0, 1, 32), (-1, 0, 32), (1 << 63, 1, 32)],
)
def test_compact_range_refuses_a_frontier_of_the_wrong_shape(
    size: int, count: int, length: int
) -> None:
    # Resuming needs one 32-byte hash per set bit of the size.
    with pytest.raises(InvalidProofError):
        CompactRange(size, [b"\x11" * length] * count)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_compact_range_refuses_a_leaf_hash_of_the_wrong_length(length: int) -> None:
    compact = CompactRange()
    compact.append(b"\x22" * HASH_SIZE)
    with pytest.raises(InvalidProofError):
        compact.append(b"\x22" * length)
    assert compact.size == 1
    assert compact.root() == b"\x22" * HASH_SIZE
