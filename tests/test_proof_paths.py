"""The server's proof paths (bit arithmetic, no objects per node) name the same nodes
as the client's reference walk (sealog.client.proof), which the RFC vectors pin down."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.errors import InvalidProofError
from sealog.client.proof import MAX_TREE_SIZE, consistency_proof_nodes, inclusion_proof_nodes
from sealog.server.proofs import consistency_path, inclusion_path


def _flat(groups: list[tuple[object, ...]]) -> tuple[list[tuple[int, int]], list[int]]:
    nodes = [(n.level, n.index) for g in groups for n in g]  # type: ignore[attr-defined]
    return nodes, [len(g) for g in groups]


def test_every_index_of_small_trees() -> None:
    for size in range(1, 130):
        for index in range(size):
            assert inclusion_path(index, size) == _flat(inclusion_proof_nodes(index, size))
        for size1 in range(1, size + 1):
            assert consistency_path(size1, size) == _flat(consistency_proof_nodes(size1, size))


sizes = st.integers(min_value=1, max_value=MAX_TREE_SIZE - 1)


@given(sizes, st.data())
def test_inclusion_path_matches_the_reference(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=size - 1))
    assert inclusion_path(index, size) == _flat(inclusion_proof_nodes(index, size))


@given(sizes, st.data())
def test_consistency_path_matches_the_reference(size: int, data: st.DataObject) -> None:
    size1 = data.draw(st.integers(min_value=1, max_value=size))
    assert consistency_path(size1, size) == _flat(consistency_proof_nodes(size1, size))


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
