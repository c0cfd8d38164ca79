"""The closed-form layout of node hashes in LMDB's ``hashes`` table (server/lmdb_layout.py)."""

from __future__ import annotations

import pytest

from sealog.client.proof import NodeID
from sealog.server.lmdb_layout import (
    GROUP_NODES,
    RECOMPUTED_LEVELS,
    hash_count,
    hash_location,
    hash_position,
    is_stored,
    node_at,
    stored_before,
)


def _completion_order(leaves: int) -> list[tuple[int, int]]:
    """The stored nodes in the order appending ``leaves`` leaves completes them."""
    order: list[tuple[int, int]] = []
    for i in range(leaves):
        completed = (i ^ (i + 1)).bit_length()  # the leaf, then one node a trailing one bit
        order.extend((level, i >> level) for level in range(completed) if is_stored(level))
    return order


def test_positions_are_the_completion_order() -> None:
    order = _completion_order(1 << 12)
    for position, (level, index) in enumerate(order):
        assert hash_position(level, index) == position
        assert node_at(position) == (level, index)
    for leaf in range(1 << 12):
        assert stored_before(leaf) == hash_position(0, leaf)
        assert stored_before(leaf + 1) - stored_before(leaf) == hash_count(leaf)


@pytest.mark.parametrize("level", [0, RECOMPUTED_LEVELS + 1, 30, 62])
def test_positions_far_out_have_the_closed_form(level: int) -> None:
    """Near the largest tree, positions still follow one another and slots fit one byte."""
    for index in ((1 << (63 - level)) - 2, (1 << (63 - level)) - 1, 12345):
        last = ((index + 1) << level) - 1
        position = hash_position(level, index)
        assert stored_before(last) <= position < stored_before(last + 1)
        assert node_at(position) == (level, index)
        group, slot = hash_location(NodeID(level, index))
        assert 0 <= slot < GROUP_NODES <= 256
        assert group * GROUP_NODES + slot == position


def test_only_leaf_hashes_and_high_levels_are_stored() -> None:
    assert [is_stored(level) for level in range(RECOMPUTED_LEVELS + 2)] == [True] + [
        False
    ] * RECOMPUTED_LEVELS + [True]
    with pytest.raises(ValueError, match="not stored"):
        hash_position(1, 0)
