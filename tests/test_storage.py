"""The storage contract (server/storage.py), run against every backend (today: LMDB)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.proof import NodeID
from sealog.server.lmdb_layout import GROUP_NODES, stored_before
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.storage import (
    DIGEST_BYTES,
    RetryBatchError,
    Storage,
    StorageCorruptError,
)


@pytest.fixture(params=["lmdb"])
def open_storage(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., LmdbStorage]]:
    opened: list[Storage] = []

    def factory(**kwargs: Any) -> LmdbStorage:
        s = LmdbStorage(tmp_path / "db", **kwargs)
        opened.append(s)
        return s

    yield factory
    for s in opened:
        s.close()


def _append(
    storage: Storage,
    tree: CompactRange,
    leaves: list[bytes],
    digests: dict[bytes, bytes] | None = None,
) -> None:
    """Append ``leaves``; ``digests`` gives some of them an idempotency key digest."""
    with storage.write() as w:
        for leaf in leaves:
            index = tree.size
            w.append_leaf(index, leaf, tree.append(leaf_hash(leaf)), (digests or {}).get(leaf))


def test_stored_hashes_are_the_perfect_subtrees(open_storage: Callable[..., LmdbStorage]) -> None:
    storage = open_storage()
    tree = CompactRange()
    leaves = [b"%d" % i for i in range(37)]
    _append(storage, tree, leaves[:20])
    _append(storage, tree, leaves[20:])
    with storage.read() as snap:
        assert snap.stored_size() == 37
        assert list(snap.leaves(3, 9)) == leaves[3:9]
        assert snap.leaf(36) == leaves[36]
        for level in range(6):
            for index in range(37 >> level):
                sub = CompactRange()
                sub.extend(leaf_hash(x) for x in leaves[index << level : (index + 1) << level])
                assert snap.read_hashes([NodeID(level, index)]) == [sub.root()]
        with pytest.raises(StorageCorruptError, match="level 1 index 18"):
            snap.read_hashes([NodeID(1, 18)])
        with pytest.raises(StorageCorruptError, match="level 3 index 4"):
            snap.read_hashes([NodeID(3, 4)])
        with pytest.raises(StorageCorruptError, match="no leaf at index 37"):
            list(snap.leaves(35, 38))


def test_leaf_hash_index_tells_colliding_prefixes_apart(
    open_storage: Callable[..., LmdbStorage],
) -> None:
    storage = open_storage()
    prefix = b"P" * 8
    h0, h1 = prefix + b"a" * 24, prefix + b"b" * 24
    with storage.write() as w:
        w.append_leaf(0, b"zero", [h0])
        w.append_leaf(1, b"one", [h1, hashlib.sha256(b"x").digest()])
        w.index_leaves([(h1, 1), (h0, 0)], [])
    with storage.read() as snap:
        assert snap.find_leaf_hash(h0, below=2) == 0
        assert snap.find_leaf_hash(h1, below=2) == 1
        assert snap.find_leaf_hash(h1, below=1) is None
        assert snap.find_leaf_hash(prefix + b"c" * 24, below=2) is None


def test_a_failed_batch_stores_nothing(open_storage: Callable[..., LmdbStorage]) -> None:
    storage = open_storage()
    tree = CompactRange()
    _append(storage, tree, [b"a"])
    with pytest.raises(RuntimeError), storage.write() as w:
        w.append_leaf(1, b"b", tree.copy().append(leaf_hash(b"b")), b"d" * DIGEST_BYTES)
        w.put_idempotency(b"k" * DIGEST_BYTES, 1)
        w.set_checkpoint(b"never", 2)
        raise RuntimeError("crash mid-batch")
    with storage.read() as snap:
        assert snap.stored_size() == 1
        assert snap.find_idempotency(b"k" * DIGEST_BYTES) is None
        assert snap.checkpoint() is None
        assert list(snap.iter_pending_digests()) == []
        assert list(snap.iter_leaf_hashes(0, 2)) == [(0, leaf_hash(b"a")), (1, None)]


def test_readers_see_a_snapshot(open_storage: Callable[..., LmdbStorage]) -> None:
    storage = open_storage()
    tree = CompactRange()
    _append(storage, tree, [b"a"])
    with storage.read() as before:
        _append(storage, tree, [b"b"])
        assert before.stored_size() == 1
    with storage.read() as after:
        assert after.stored_size() == 2


def test_state_survives_reopening(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db")
    tree = CompactRange()
    _append(storage, tree, [b"a", b"b", b"c"], {b"c": b"k" * DIGEST_BYTES})
    with storage.write() as w:
        w.set_checkpoint(b"note", 3)
        w.put_idempotency(b"k" * DIGEST_BYTES, 2)
    storage.close()
    storage = LmdbStorage(tmp_path / "db")
    try:
        with storage.read() as snap:
            assert snap.checkpoint() == b"note"
            assert snap.find_idempotency(b"k" * DIGEST_BYTES) == 2
            assert list(snap.leaves(0, 3)) == [b"a", b"b", b"c"]
    finally:
        storage.close()


def test_the_map_grows_when_full(open_storage: Callable[..., LmdbStorage]) -> None:
    storage = open_storage(map_size=1 << 20)
    tree = CompactRange()
    leaves = [bytes([i % 256]) * 2000 for i in range(2000)]  # ~4 MB, 4x the first map
    retries = 0
    for start in range(0, len(leaves), 100):
        saved = tree.copy()
        while True:
            try:
                _append(storage, tree, leaves[start : start + 100])
                break
            except RetryBatchError:
                retries += 1
                tree = saved.copy()
    assert retries >= 2
    with storage.read() as snap:
        assert snap.stored_size() == 2000
        assert list(snap.leaves(1990, 2000)) == leaves[1990:]


# --- where node hashes live (docs/storage.md; the arithmetic: test_lmdb_layout.py) ----------
def test_groups_fill_in_order(open_storage: Callable[..., LmdbStorage]) -> None:
    """Every value is appended after the last one; each group holds GROUP_NODES of them."""
    storage = open_storage()
    tree = CompactRange()
    leaves = [b"%d" % i for i in range(700)]
    for start in range(0, len(leaves), 61):
        _append(storage, tree, leaves[start : start + 61])
    with storage.read() as snap:
        records = list(snap.iter_hash_records())
    assert len(records) == stored_before(700)
    positions = [group * GROUP_NODES + value[0] for group, value in records]
    assert positions == list(range(len(records)))
    assert all(len(value) == 33 for _, value in records)


def test_missing_leaf_hashes_are_named(open_storage: Callable[..., LmdbStorage]) -> None:
    storage = open_storage()
    tree = CompactRange()
    _append(storage, tree, [b"%d" % i for i in range(9)])
    with storage.read() as snap:
        assert [i for i, h in snap.iter_leaf_hashes(7, 11) if h is not None] == [7, 8]
        with pytest.raises(
            StorageCorruptError, match=r"level 2 index 2 needs the leaf hash of leaf 9"
        ):
            snap.read_node_hashes([(2, 2)])
