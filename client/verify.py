"""Checking RFC 6962 proofs: the verifier's side.

Pure functions over bytes and ints, implemented as RFC 9162 §2.1.3.2
(inclusion) and §2.1.4.2 (consistency) state them. Each returns ``None`` or
raises: :class:`InvalidProofError` when sizes, indices, hash lengths or the
proof length are wrong (checked before any hashing), :class:`RootMismatchError`
when the recomputed root differs from the one given. Nothing returns a bool.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from sealog.client.errors import InvalidProofError, RootMismatchError
from sealog.client.hashing import HASH_SIZE, node_hash
from sealog.client.proof import MAX_TREE_SIZE

__all__ = [
    "consistency_proof_length",
    "inclusion_proof_length",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]


def _check_hash(name: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise InvalidProofError(f"{name}: {len(value)} bytes, want {HASH_SIZE}")


def _check_proof_hashes(proof: Sequence[bytes]) -> None:
    for i, h in enumerate(proof):
        _check_hash(f"proof[{i}]", h)


def _check_root(what: str, expected: bytes, calculated: bytes) -> None:
    if not hmac.compare_digest(expected, calculated):
        raise RootMismatchError(what, expected=expected, calculated=calculated)


def _decompose(index: int, size: int) -> tuple[int, int]:
    """Split the path of leaf ``index`` in a tree of ``size`` into its two parts.

    ``inner`` is the number of levels below the point where the path to
    ``index`` and the path to the last leaf ``size - 1`` part; there the proof
    holds a sibling at every level. Above it, the path runs down the right
    edge, and it needs a sibling only where ``index`` goes right: ``border``
    counts those, the set bits of ``index >> inner``.
    """
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner, border


def inclusion_proof_length(index: int, size: int) -> int:
    """Return how many hashes the inclusion proof of ``index`` in a tree of ``size`` has."""
    if not 0 <= index < size < MAX_TREE_SIZE:
        raise InvalidProofError(f"index: {index}, want 0 <= index < size {size}")
    inner, border = _decompose(index, size)
    return inner + border


def consistency_proof_length(size1: int, size2: int) -> int:
    """Return how many hashes the consistency proof from ``size1`` to ``size2`` has."""
    if not 0 < size1 <= size2 < MAX_TREE_SIZE:
        raise InvalidProofError(f"size1: {size1}, want 0 < size1 <= size2 {size2}")
    if size1 == size2:
        return 0
    inner, border = _decompose(size1 - 1, size2)
    shift = (size1 & -size1).bit_length() - 1  # trailing zeros of size1
    # The proof starts with the root of the old tree's rightmost perfect
    # subtree (2^shift leaves), unless the old tree is that subtree itself.
    seed = 0 if size1 == 1 << shift else 1
    return seed + inner - shift + border


def root_from_inclusion_proof(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root hash from an inclusion proof (RFC 9162 §2.1.3.2 steps 1-4).

    Preconditions, checked first: ``0 <= index < size``; ``leaf_hash`` and
    every proof hash are 32 bytes; the proof has the length a tree of ``size``
    requires. Raises :class:`InvalidProofError` otherwise.
    """
    want = inclusion_proof_length(index, size)
    _check_hash("leaf_hash", leaf_hash)
    _check_proof_hashes(proof)
    if len(proof) != want:
        raise InvalidProofError(
            f"inclusion proof of index {index} in tree size {size}: "
            f"{len(proof)} hashes, want {want}"
        )
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise InvalidProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                # fn is the last node of its level: the right edge skips
                # levels until fn becomes a right child again.
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise InvalidProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    index: int, size: int, leaf_hash: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` with ``root_hash``.

    RFC 9162 §2.1.3.2. Returns ``None``; raises :class:`InvalidProofError` or
    :class:`RootMismatchError`.
    """
    _check_hash("root_hash", root_hash)
    calculated = root_from_inclusion_proof(index, size, leaf_hash, proof)
    _check_root(f"inclusion proof of index {index} in tree size {size}", root_hash, calculated)


def verify_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``size2`` with ``root2`` extends the tree of ``size1`` with ``root1``.

    RFC 9162 §2.1.4.2, plus the cases the RFC leaves to implementers: equal
    sizes need an empty proof and equal roots; ``size1 == 0`` is rejected (as
    golang.org/x/mod/sumdb/tlog does), as is ``size1 > size2``. Every hash must
    be 32 bytes and the proof exactly as long as the sizes require.
    Returns ``None``; raises :class:`InvalidProofError` or :class:`RootMismatchError`.
    """
    want = consistency_proof_length(size1, size2)
    _check_hash("root1", root1)
    _check_hash("root2", root2)
    _check_proof_hashes(proof)
    if len(proof) != want:
        raise InvalidProofError(
            f"consistency proof from size {size1} to {size2}: {len(proof)} hashes, want {want}"
        )
    what = f"consistency proof from size {size1} to {size2}"
    if size1 == size2:
        _check_root(what, root2, root1)
        return
    # Step 2: a power-of-two old tree is a node of the new one; its root is
    # the proof's implicit first element.
    path = list(proof)
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5-6.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise InvalidProofError(f"{what} is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise InvalidProofError(f"{what} is shorter than the path to the root")
    _check_root(f"{what} (old root)", root1, fr)
    _check_root(f"{what} (new root)", root2, sr)
