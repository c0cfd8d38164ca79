"""The proof paths (bit arithmetic, walked from the leaf up, no objects per node) name the
nodes RFC 6962's own top-down recursion names, and the NodeID forms group them alike."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.errors import InvalidProofError
from sealog.client.proof import (
    MAX_TREE_SIZE,
    NodeID,
    consistency_path,
    consistency_proof_nodes,
    inclusion_path,
    inclusion_proof_nodes,
)

Ranges = list[tuple[int, int]]


def _split(n: int) -> int:
    """RFC 6962 §2.1: the largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _rfc_path(m: int, begin: int, end: int) -> Ranges:
    """PATH(m, D[begin:end]) (RFC 6962 §2.1.1), each element as the range it hashes."""
    if end - begin == 1:
        return []
    k = _split(end - begin)
    if m < k:
        return [*_rfc_path(m, begin, begin + k), (begin + k, end)]
    return [*_rfc_path(m - k, begin + k, end), (begin, begin + k)]


def _rfc_subproof(m: int, begin: int, end: int, whole: bool) -> Ranges:
    """SUBPROOF(m, D[begin:end], b) (RFC 6962 §2.1.2), each element as the range it hashes."""
    if m == end - begin:
        return [] if whole else [(begin, end)]
    k = _split(end - begin)
    if m <= k:
        return [*_rfc_subproof(m, begin, begin + k, whole), (begin + k, end)]
    return [*_rfc_subproof(m - k, begin + k, end, False), (begin, begin + k)]


def _as_path(ranges: Ranges) -> tuple[list[tuple[int, int]], list[int]]:
    """Each range split into its perfect subtrees, largest first, as ``(level, index)``."""
    nodes: list[tuple[int, int]] = []
    groups: list[int] = []
    for first, end in ranges:
        begin, count = first, 0
        while begin < end:
            level = (end - begin).bit_length() - 1
            nodes.append((level, begin >> level))
            begin += 1 << level
            count += 1
        groups.append(count)
    return nodes, groups


def _flat(groups: list[tuple[NodeID, ...]]) -> tuple[list[tuple[int, int]], list[int]]:
    nodes = [(n.level, n.index) for g in groups for n in g]
    return nodes, [len(g) for g in groups]


def _check_inclusion(index: int, size: int) -> None:
    path = inclusion_path(index, size)
    assert path == _as_path(_rfc_path(index, 0, size))
    assert _flat(inclusion_proof_nodes(index, size)) == path


def _check_consistency(size1: int, size2: int) -> None:
    path = consistency_path(size1, size2)
    assert path == _as_path(_rfc_subproof(size1, 0, size2, True))
    assert _flat(consistency_proof_nodes(size1, size2)) == path


def test_every_index_of_small_trees() -> None:
    for size in range(1, 130):
        for index in range(size):
            _check_inclusion(index, size)
        for size1 in range(1, size + 1):
            _check_consistency(size1, size)


sizes = st.integers(min_value=1, max_value=MAX_TREE_SIZE - 1)


@given(sizes, st.data())
def test_inclusion_path_matches_the_reference(size: int, data: st.DataObject) -> None:
    _check_inclusion(data.draw(st.integers(min_value=0, max_value=size - 1)), size)


@given(sizes, st.data())
def test_consistency_path_matches_the_reference(size: int, data: st.DataObject) -> None:
    _check_consistency(data.draw(st.integers(min_value=1, max_value=size)), size)


@pytest.mark.parametrize(("index", "size"), [(0, 0), (5, 5), (-1, 3), (0, MAX_TREE_SIZE)], ids=str)
def test_inclusion_path_rejects_what_the_reference_rejects(index: int, size: int) -> None:
    with pytest.raises(InvalidProofError):
        inclusion_proof_nodes(index, size)
    with pytest.raises(InvalidProofError):
        inclusion_path(index, size)


@pytest.mark.parametrize(("size1", "size2"), [(0, 3), (4, 3), (1, MAX_TREE_SIZE)], ids=str)
def test_consistency_path_rejects_what_the_reference_rejects(size1: int, size2: int) -> None:
    with pytest.raises(InvalidProofError):
        consistency_proof_nodes(size1, size2)
    with pytest.raises(InvalidProofError):
        consistency_path(size1, size2)
