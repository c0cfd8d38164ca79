"""The LMDB implementation of :mod:`sealog.server.storage` (docs/storage.md).

One LMDB environment (a folder) holds seven tables, every integer a big-endian
uint64 so LMDB's key order is index order and appends can use ``append=True``
(``MDB_APPENDDUP`` in tables of sorted duplicates):

- ``entries``: leaf index -> leaf bytes
- ``hashes``: group number -> sorted duplicates of a 1-byte slot and a 32-byte
  node hash, :data:`~sealog.server.lmdb_layout.GROUP_NODES` of them per group, in
  the order the nodes were completed (see
  :func:`~sealog.server.lmdb_layout.hash_location`); nodes of levels 1 to
  :data:`~sealog.server.lmdb_layout.RECOMPUTED_LEVELS` are recomputed from leaf hashes
- ``leaf_index``: the first 2 bytes of a leaf hash -> sorted duplicates of the
  next 4 bytes and the leaf index (the full hash is compared in ``hashes``)
- ``idempotency``: the first 2 bytes of a key digest -> sorted duplicates of the
  other 10 bytes and the leaf index (an exact match: nothing to confirm)
- ``pending_digests``: the first leaf index of a batch -> the ``(leaf index,
  key digest)`` pairs of its leaves that had an idempotency key, kept until an
  index flush puts them in ``idempotency``
- ``by_identity``: the first 8 bytes of SHA-256(identity) -> sorted duplicates
  of accepted_at_ms and the first leaf index of a run of leaves of that identity
  and time
- ``meta``: the signed checkpoint and its tree size, ``indexed_upto``, the
  origin, the storage format version, witness cosignatures

``entries``, ``hashes``, ``pending_digests``, ``by_identity`` and the checkpoint
are written in the sequencer's batch; ``leaf_index`` and ``idempotency`` later,
in large sorted batches (docs/storage.md, "Deferred indexing").

Commits are durable (LMDB's default ``sync``). The map grows by doubling when
it fills: the writer waits until no transaction is open in this process,
resizes and retries the batch. Opening a transaction takes no lock: each
thread counts its own open transactions, and a resize waits for every count
to reach zero (:class:`_TxnGate`).
"""

from __future__ import annotations

import errno
import functools
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from hashlib import sha256 as _sha256
from itertools import islice
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import lmdb

from sealog.client.errors import SealogError
from sealog.client.hashing import node_hash
from sealog.client.proof import NodeID
from sealog.server.data_folder import make_private_dir
from sealog.server.lmdb_layout import (
    GROUP_NODES,
    RECOMPUTED_LEVELS,
    hash_count,
    hash_position,
    stored_before,
)
from sealog.server.storage import (
    DIGEST_BYTES,
    FORMAT_VERSION,
    META_COSIGNATURES,
    META_FORMAT,
    META_INDEXED_UPTO,
    META_PRUNED_BELOW,
    META_SIZE,
    RetryBatchError,
    StorageCorruptError,
    StorageUnavailableError,
)

__all__ = ["LmdbStorage", "MapUse"]

_U64 = struct.Struct(">Q")
_U64x2 = struct.Struct(">QQ")
_pack = _U64.pack
_unpack = _U64.unpack
_CHECKPOINT = b"checkpoint"
_MIN_CACHE_LEVEL = 4
_CACHE_NODES_BITS = 16
_MAX_CACHED_NODES = 1 << 18
_BUCKET = 2
"""Bytes of a hash (or digest) that key the leaf-hash (and idempotency) index."""
_LEAF_REST = 4
"""Bytes of the leaf hash that follow the bucket in each leaf-hash index value: with the
bucket, 48 bits, so a lookup meets a false candidate (one wasted read) about once in
2^48 / size lookups."""
_LEAF_VALUE = _LEAF_REST + 8
_DIGEST_REST = DIGEST_BYTES - _BUCKET
"""The rest of the key digest, after the bucket, in each idempotency index value."""
_DIGEST_VALUE = _DIGEST_REST + 8
_HASH_VALUE = 33
"""A ``hashes`` value: the slot, then the hash."""
_SLOTS = [bytes([slot]) for slot in range(GROUP_NODES)]
_PENDING_ITEM = 8 + DIGEST_BYTES
"""A ``pending_digests`` item: the leaf index, then the key digest."""
_FIRST_STORED_LEVEL = RECOMPUTED_LEVELS + 1
_WINDOW_GAP = 1 << (RECOMPUTED_LEVELS + 1)
"""Recomputed nodes whose leaves are at most this far apart are read in one pass."""

if GROUP_NODES > 256:
    raise ImportError("GROUP_NODES must fit a slot in one byte")


_P = ParamSpec("_P")
_R = TypeVar("_R")
_Y = TypeVar("_Y")
_LMDB_DAMAGE = (
    lmdb.CorruptedError,
    lmdb.PageNotFoundError,
    lmdb.InvalidError,
    lmdb.VersionMismatchError,
    lmdb.IncompatibleError,
    lmdb.BadValsizeError,
    lmdb.PanicError,
)
"""What LMDB raises on a damaged file (every other lmdb.Error on a read is a fault too)."""


def _read_fault(e: lmdb.Error, path: Path) -> StorageCorruptError:
    """An LMDB error on a read path, as the storage corruption it is (DATA_LOSS)."""
    return StorageCorruptError(f"{path}: LMDB cannot read the storage: {e}")


def _reads(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise every LMDB error of a read as :class:`StorageCorruptError`."""

    @functools.wraps(method)
    def reading(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except lmdb.Error as e:
            raise _read_fault(e, args[0]._s.path) from e  # type: ignore[attr-defined]

    return reading


def _reads_iter(method: Callable[_P, Iterator[_Y]]) -> Callable[_P, Iterator[_Y]]:
    """:func:`_reads`, for a generator."""

    @functools.wraps(method)
    def reading(*args: _P.args, **kwargs: _P.kwargs) -> Iterator[_Y]:
        try:
            yield from method(*args, **kwargs)
        except lmdb.Error as e:
            raise _read_fault(e, args[0]._s.path) from e  # type: ignore[attr-defined]

    return reading


_META_PAGE = struct.Struct("<QHHHH II QQ I")
"""The start of an LMDB meta page (lmdb/mdb.c, ``MDB_page`` then ``MDB_meta``): page
number, pad, flags, lower, upper; magic, version, address, map size; the first field
of the free-pages table's ``MDB_db``, which holds the page size."""
_META_LAST_PAGE = struct.Struct("<QQ")
"""``mm_last_pg`` and ``mm_txnid``, after the two ``MDB_db`` records (48 bytes each)."""
_META_LAST_PAGE_AT = 16 + 24 + 2 * 48
_META_BYTES = _META_LAST_PAGE_AT + _META_LAST_PAGE.size
_P_META = 0x08
_MDB_MAGIC = 0xBEEFC0DE
_MDB_DATA_VERSION = 1


def check_data_file(data: Path) -> None:
    """Check ``data.mdb`` against its own meta pages before LMDB maps it.

    LMDB maps the file and trusts it: a page beyond the end of a truncated file
    kills the process with SIGBUS when it is read, and a 0-byte file is silently
    initialised as a new environment. Both meta pages must be intact (LMDB
    refuses otherwise, less clearly), and the file must reach the last page the
    newer one (the one LMDB uses) says is in use. Raises :class:`StorageCorruptError`.
    """
    size = data.stat().st_size
    with data.open("rb") as f:
        metas: list[tuple[int, int, int]] = []  # (txnid, last page, page size)
        psize = 0
        for number in (0, 1):
            f.seek(psize * number)
            head = f.read(_META_BYTES)
            if len(head) < _META_BYTES or size < 2 * max(psize, 512):
                raise StorageCorruptError(
                    f"{data}: {size} bytes, too short for LMDB's two meta pages: "
                    "the file was truncated"
                )
            _, _, flags, _, _, magic, version, _, _, page_size = _META_PAGE.unpack_from(head)
            last_page, txnid = _META_LAST_PAGE.unpack_from(head, _META_LAST_PAGE_AT)
            if not flags & _P_META or magic != _MDB_MAGIC or version != _MDB_DATA_VERSION:
                raise StorageCorruptError(
                    f"{data}: LMDB meta page {number} is damaged (flags {flags:#x}, magic "
                    f"{magic:#x}, version {version}; want a meta page, {_MDB_MAGIC:#x}, "
                    f"{_MDB_DATA_VERSION})"
                )
            if number == 0:
                if page_size < 512 or page_size > 1 << 16 or page_size & (page_size - 1):
                    raise StorageCorruptError(
                        f"{data}: LMDB meta page 0 is damaged (page size {page_size})"
                    )
                psize = page_size
            metas.append((txnid, last_page, psize))
    _, last_page, psize = max(metas)
    need = (last_page + 1) * psize
    if size < need:
        raise StorageCorruptError(
            f"{data}: {size:,} bytes, but LMDB's meta page says pages up to {last_page} are "
            f"in use ({need:,} bytes): the file was truncated"
        )


def _index(key: bytes) -> int:
    """A big-endian uint64 key; a record of another length (corruption) decodes as -1."""
    return int(_unpack(key)[0]) if len(key) == 8 else -1


def _stored_index(data: bytes, where: str) -> int:
    """A stored big-endian uint64; anything else is corruption, named by ``where``."""
    if len(data) != 8:
        raise StorageCorruptError(f"{where}: {bytes(data).hex()} is not an 8-byte index")
    return int(_unpack(data)[0])


def _index_pair(key: bytes, value: bytes, rest: int) -> tuple[bytes, int]:
    """A leaf-hash or idempotency index record as (hash prefix, index); -1 if malformed."""
    if len(key) != _BUCKET or len(value) != rest + 8:
        return key + value, -1
    return key + value[:rest], int(_unpack(value[rest:])[0])


def _encode_index(pairs: Sequence[tuple[bytes, int]], rest: int) -> list[tuple[bytes, bytes]]:
    """Index records of ``(hash, index)`` pairs, in LMDB's order (pages are then met in order)."""
    end = _BUCKET + rest
    out = [(h[:_BUCKET], h[_BUCKET:end] + _pack(i)) for h, i in pairs]
    out.sort()
    return out


def _where(position: int) -> str:
    """The place of a stored hash, as fsck and errors name it: ``hashes[group][slot]``."""
    group, slot = divmod(position, GROUP_NODES)
    return f"hashes[{group}][{slot}]"


def _fold(leaf_hashes: Sequence[bytes]) -> bytes:
    """The root of a perfect subtree from its leaf hashes (a power of two of them)."""
    if len(leaf_hashes) == 2:
        return _sha256(b"\x01" + leaf_hashes[0] + leaf_hashes[1]).digest()
    level = list(leaf_hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


class _Slot:
    """The open transactions of one thread; only that thread changes ``open``."""

    __slots__ = ("__weakref__", "open")

    def __init__(self) -> None:
        self.open = 0


class _TxnGate:
    """Transactions open freely; a map resize waits until none is open in this process.

    LMDB may only change the map size when no transaction is active in the
    process. Each thread counts its own open transactions in a slot only it
    writes, then looks at ``resizing``; the resizer sets ``resizing``, then
    waits for every slot to be zero. Under the GIL these steps are ordered,
    so either the thread sees ``resizing`` (and waits, unless it already
    holds a transaction the resizer is waiting for) or the resizer sees its
    count.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()  # a thread's ends with it
        self._slots_lock = threading.Lock()
        self._resizer = threading.Lock()
        self._done = threading.Condition()
        self.resizing = False

    def _new_slot(self) -> _Slot:
        slot = _Slot()
        with self._slots_lock:
            self._slots.add(slot)
        self._local.slot = slot
        return slot

    def enter(self) -> _Slot:
        """Count one transaction as open in this thread (waiting out a resize)."""
        try:
            slot: _Slot = self._local.slot
        except AttributeError:
            slot = self._new_slot()
        slot.open += 1
        if self.resizing and slot.open == 1:
            slot.open -= 1
            with self._done:
                self._done.wait_for(lambda: not self.resizing)
            return self.enter()
        return slot

    @staticmethod
    def leave(slot: _Slot) -> None:
        slot.open -= 1

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No transaction is open in this process while the block runs.

        The calling thread must have none open itself.
        """
        own = getattr(self._local, "slot", None)
        if own is not None and own.open:
            raise RuntimeError("the map cannot grow while this thread has a transaction open")
        with self._resizer:
            self.resizing = True
            try:
                with self._slots_lock:
                    slots = list(self._slots)
                for slot in slots:
                    while slot.open:
                        time.sleep(0.0002)
                yield
            finally:
                with self._done:
                    self.resizing = False
                    self._done.notify_all()


class _Txn:
    """A read snapshot, or, when opened for writing, a write batch."""

    __slots__ = ("_cursors", "_hcur", "_pending", "_s", "_txn")

    def __init__(self, store: LmdbStorage, txn: Any) -> None:
        self._s = store
        self._txn = txn
        self._cursors: dict[int, Any] | None = None
        self._pending: list[bytes] | None = None
        """This batch's ``pending_digests`` items, written as one record at commit."""
        self._hcur: Any = None
        """The ``hashes`` cursor, the one most used."""

    # --- ReadSnapshot -------------------------------------------------
    def checkpoint(self) -> bytes | None:
        return self.meta(_CHECKPOINT)

    @_reads
    def size(self) -> int:
        value = self._txn.get(META_SIZE, db=self._s._meta)
        return 0 if value is None else _stored_index(value, "meta[size]")

    @_reads
    def indexed_upto(self) -> int:
        value = self._txn.get(META_INDEXED_UPTO, db=self._s._meta)
        return 0 if value is None else _stored_index(value, "meta[indexed_upto]")

    @_reads
    def pruned_below(self) -> int:
        value = self._txn.get(META_PRUNED_BELOW, db=self._s._meta)
        return 0 if value is None else _stored_index(value, "meta[pruned_below]")

    @_reads
    def meta(self, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._s._meta)
        return None if value is None else bytes(value)

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        return self.read_node_hashes([(n.level, n.index) for n in nodes])

    @_reads
    def read_node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        return self._read_nodes(nodes, 1 << 30, {})  # a write batch caches nothing

    def _read_nodes(
        self, nodes: Sequence[tuple[int, int]], cache_level: int, cache: dict[int, bytes]
    ) -> list[bytes]:
        """The hashes of ``nodes``: those of levels from ``cache_level`` up through ``cache``,
        other stored ones read, the rest recomputed from leaf hashes read in one pass."""
        stored = self._stored_hash
        out: list[bytes] = []
        low: list[tuple[int, int, int]] | None = None
        for level, index in nodes:
            if level >= cache_level:
                key = (index << 6) | level
                h = cache.get(key)
                if h is None:
                    h = cache[key] = stored(level, index)
                out.append(h)
            elif level > RECOMPUTED_LEVELS:
                out.append(stored(level, index))
            else:
                if low is None:
                    low = []
                low.append((index << level, level, len(out)))
                out.append(b"")
        if low is not None:
            self._recompute(low, out)
        return out

    def _hashes_cursor(self) -> Any:
        cur = self._hcur
        if cur is None:
            cur = self._hcur = self._txn.cursor(db=self._s._hashes)
        return cur

    def _stored_hash(self, level: int, index: int) -> bytes:
        if level > RECOMPUTED_LEVELS:  # hash_position, inlined: this is the proofs' hot path
            last = ((index + 1) << level) - 1
            position = stored_before(last) + level - RECOMPUTED_LEVELS
        else:
            position = hash_position(level, index)
        group, slot = divmod(position, GROUP_NODES)
        cur = self._hcur
        if cur is None:
            cur = self._hashes_cursor()
        if cur.set_range_dup(_pack(group), _SLOTS[slot]):
            value = cur.value()
            if len(value) == _HASH_VALUE and value[0] == slot:
                return value[1:]  # type: ignore[no-any-return]
        raise StorageCorruptError(
            f"hashes: no stored hash for node level {level} index {index} (hashes[{group}][{slot}])"
        )

    def _recompute_in_block(
        self, low: list[tuple[int, int, int]], start: int, end: int, out: list[bytes]
    ) -> bool:
        """:meth:`_recompute` when leaves ``[start, end)`` are in one block of
        ``2 ** (RECOMPUTED_LEVELS + 1)`` leaves (every low node of an inclusion proof is):
        no other stored node comes between their hashes, so they are consecutive values,
        read after one seek. False, and nothing filled, if anything is amiss."""
        count = end - start
        group, slot = divmod(stored_before(start), GROUP_NODES)
        cur = self._hashes_cursor()
        if not cur.set_range_dup(_pack(group), _SLOTS[slot]):
            return False
        # The values are sorted and their positions unique: first and last in place, all are.
        last = slot + count - 1
        if last < GROUP_NODES:
            values = list(islice(cur.iternext_dup(False, True), count))
            if len(values) != count or values[-1][:1] != _SLOTS[last]:
                return False
        else:  # the block goes on in the next group
            items = list(islice(cur.iternext(True, True), count))
            if (
                len(items) != count
                or items[-1][0] != _pack(group + 1)
                or items[-1][1][:1] != _SLOTS[last - GROUP_NODES]
            ):
                return False
            values = [value for _, value in items]
        # One key's duplicates all have the length of its first (MDB_DUPFIXED).
        if (
            values[0][:1] != _SLOTS[slot]
            or len(values[0]) != _HASH_VALUE
            or len(values[-1]) != _HASH_VALUE
        ):
            return False
        for first, level, at in low:
            i = first - start
            if level == 0:
                out[at] = values[i][1:]
            elif level == 1:
                out[at] = _sha256(b"\x01" + values[i][1:] + values[i + 1][1:]).digest()
            elif level == 2:
                left = _sha256(b"\x01" + values[i][1:] + values[i + 1][1:]).digest()
                right = _sha256(b"\x01" + values[i + 2][1:] + values[i + 3][1:]).digest()
                out[at] = _sha256(b"\x01" + left + right).digest()
            else:
                out[at] = _fold([v[1:] for v in values[i : i + (1 << level)]])
        return True

    def _recompute(self, low: list[tuple[int, int, int]], out: list[bytes]) -> None:
        """Fill ``out[i]`` for each ``(first leaf, level, i)`` of ``low`` (levels up to
        RECOMPUTED_LEVELS): the leaf hash itself, or the root over its leaf hashes."""
        start = end = low[0][0]
        for first, level, _ in low:
            start = min(start, first)
            end = max(end, first + (1 << level))
        if start >> _FIRST_STORED_LEVEL == (end - 1) >> _FIRST_STORED_LEVEL and (
            self._recompute_in_block(low, start, end, out)
        ):
            return
        low.sort()
        i = 0
        while i < len(low):
            start = low[i][0]
            end = start + (1 << low[i][1])
            j = i + 1
            while j < len(low) and low[j][0] - end <= _WINDOW_GAP:
                end = max(end, low[j][0] + (1 << low[j][1]))
                j += 1
            leaves = self._leaf_window(start, end)
            for first, level, at in low[i:j]:
                part = leaves[first - start : first - start + (1 << level)]
                hashes = [h for h in part if h is not None]
                if len(hashes) != len(part):
                    missing = first + part.index(None)
                    raise StorageCorruptError(
                        f"hashes: node level {level} index {first >> level} needs the leaf hash "
                        f"of leaf {missing} ({_where(stored_before(missing))}), which is not stored"
                    )
                out[at] = hashes[0] if level == 0 else _fold(hashes)
            i = j

    def _leaf_window(self, start: int, end: int) -> list[bytes | None]:
        """The stored leaf hashes of leaves ``[start, end)``: one seek, then the values in
        order (the nodes of higher levels between them are skipped)."""
        position = stored_before(start)
        group, slot = divmod(position, GROUP_NODES)
        cur = self._hashes_cursor()
        if cur.set_range_dup(_pack(group), _SLOTS[slot]):
            out: list[bytes | None] = []
            key = _pack(group)
            leaf, want = start, position
            for k, value in cur.iternext():
                if k != key or len(value) != _HASH_VALUE or value[0] != slot:
                    break  # damage: the slow path below says where
                if position == want:
                    out.append(value[1:])
                    leaf += 1
                    if leaf == end:
                        return out
                    want += hash_count(leaf - 1)
                position += 1
                slot += 1
                if slot == GROUP_NODES:
                    slot = 0
                    group += 1
                    key = _pack(group)
        return [h for _, h in self.iter_leaf_hashes(start, end)]

    @_reads
    def leaf(self, index: int) -> bytes:
        value = self._txn.get(_pack(index), db=self._s._entries)
        if value is None:
            raise StorageCorruptError(f"entries: no leaf at index {index}")
        return bytes(value)

    @_reads_iter
    def leaves(self, start: int, end: int) -> Iterator[bytes]:
        with self._txn.cursor(db=self._s._entries) as cur:
            if start >= end or not cur.set_key(_pack(start)):
                if start < end:
                    raise StorageCorruptError(f"entries: no leaf at index {start}")
                return
            expected = start
            for key, value in cur:
                index = _stored_index(key, "entries: record key")
                if index >= end:
                    break
                if index != expected:
                    raise StorageCorruptError(f"entries: no leaf at index {expected}")
                yield bytes(value)
                expected += 1
            if expected < end:
                raise StorageCorruptError(f"entries: no leaf at index {expected}")

    def _cursor(self, db: Any) -> Any:
        """One cursor per table for the life of the transaction (cursors are not free)."""
        cursors = self._cursors
        if cursors is None:
            cursors = self._cursors = {}
        cur = cursors.get(id(db))
        if cur is None:
            cur = cursors[id(db)] = self._txn.cursor(db=db)
        return cur

    @_reads
    def find_leaf_hash(self, leaf_hash: bytes, below: int) -> int | None:
        # Each candidate with the same 8 bytes is confirmed against the stored leaf hash.
        cur = self._cursor(self._s._leaf_index)
        rest = leaf_hash[_BUCKET : _BUCKET + _LEAF_REST]
        if not cur.set_range_dup(leaf_hash[:_BUCKET], rest):
            return None
        while True:
            value = cur.value()
            if len(value) != _LEAF_VALUE or value[:_LEAF_REST] != rest:
                return None
            index = int(_unpack(value[_LEAF_REST:])[0])
            if index >= below:
                return None
            if self._stored_hash(0, index) == leaf_hash:
                return index
            if not cur.next_dup():
                return None

    @_reads
    def find_idempotency(self, key_digest: bytes) -> int | None:
        # The value holds the whole digest: one cursor positioning answers, hit or miss.
        cur = self._cursor(self._s._idempotency)
        rest = key_digest[_BUCKET:DIGEST_BYTES]
        if not cur.set_range_dup(key_digest[:_BUCKET], rest):
            return None
        value = cur.value()
        if len(value) != _DIGEST_VALUE or value[:_DIGEST_REST] != rest:
            return None
        return int(_unpack(value[_DIGEST_REST:])[0])

    @_reads_iter
    def iter_leaf_hashes(self, start: int, end: int) -> Iterator[tuple[int, bytes | None]]:
        if start >= end:
            return
        leaf = start
        want = stored_before(start)
        with self._txn.cursor(db=self._s._hashes) as cur:
            if cur.set_range(_pack(want // GROUP_NODES)):
                for key, value in cur.iternext():
                    if len(key) != 8 or len(value) != _HASH_VALUE or value[0] >= GROUP_NODES:
                        continue  # malformed: it holds no leaf hash
                    position = int(_unpack(key)[0]) * GROUP_NODES + value[0]
                    while position > want:  # the value of this leaf is not there
                        yield leaf, None
                        leaf += 1
                        if leaf == end:
                            return
                        want = stored_before(leaf)
                    if position == want:
                        yield leaf, bytes(value[1:])
                        leaf += 1
                        if leaf == end:
                            return
                        want = stored_before(leaf)
        for missing in range(leaf, end):
            yield missing, None

    def iter_pending_index(self, start: int, end: int) -> Iterator[tuple[int, bytes, bytes | None]]:
        if start >= end:
            return
        digests = {i: d for i, d in self.iter_pending_digests() if start <= i < end}
        for index, hashed in self.iter_leaf_hashes(start, end):
            if hashed is None:
                raise StorageCorruptError(
                    f"hashes: no leaf hash for leaf {index} ({_where(stored_before(index))})"
                )
            yield index, hashed, digests.get(index)

    @_reads_iter
    def iter_pending_digests(self) -> Iterator[tuple[int, bytes]]:
        if self._s._pending is None:
            return
        previous = -1
        with self._txn.cursor(db=self._s._pending) as cur:
            for key, value in cur:
                first = _index(key)
                where = f"pending_digests[{first if first >= 0 else bytes(key).hex()}]"
                if not value or len(value) % _PENDING_ITEM:
                    raise StorageCorruptError(
                        f"{where}: {len(value)} bytes, want a multiple of {_PENDING_ITEM} "
                        f"(8-byte leaf index, {DIGEST_BYTES}-byte key digest)"
                    )
                if first < 0 or _unpack(value[:8])[0] != first:
                    raise StorageCorruptError(f"{where}: the key is not its first leaf index")
                for at in range(0, len(value), _PENDING_ITEM):
                    index = int(_unpack(value[at : at + 8])[0])
                    if index <= previous:
                        raise StorageCorruptError(
                            f"{where}: leaf {index} after leaf {previous}: not in order"
                        )
                    previous = index
                    yield index, bytes(value[at + 8 : at + _PENDING_ITEM])

    @_reads_iter
    def iter_by_identity(
        self, prefix: bytes, start_ms: int, start_index: int
    ) -> Iterator[tuple[int, int]]:
        if self._s._by_identity is None:
            return
        target = _U64x2.pack(start_ms, start_index)
        with self._txn.cursor(db=self._s._by_identity) as cur:
            # The run that holds start_index began at or before it: step back to the
            # last record at or before the target when it has the same time.
            if cur.set_range_dup(prefix, target):
                if cur.value() != target and not (cur.prev_dup() and cur.value()[:8] == target[:8]):
                    cur.set_range_dup(prefix, target)
            elif cur.set_key(prefix) and cur.last_dup():
                if cur.value()[:8] != target[:8]:
                    return
            else:
                return
            for value in cur.iternext_dup():
                if len(value) != 16:
                    raise StorageCorruptError(
                        f"by_identity[{prefix.hex()}]: {bytes(value).hex()} is not 16 bytes"
                    )
                ms, index = _U64x2.unpack(value)
                yield int(ms), int(index)

    @_reads_iter
    def _iter(self, db: Any) -> Iterator[tuple[bytes, bytes]]:
        with self._txn.cursor(db=db) as cur:
            for key, value in cur:
                yield bytes(key), bytes(value)

    def iter_entries(self) -> Iterator[tuple[int, bytes]]:
        for key, value in self._iter(self._s._entries):
            yield _index(key), value

    def iter_hash_records(self) -> Iterator[tuple[int, bytes]]:
        for key, value in self._iter(self._s._hashes):
            yield _index(key), value

    def iter_leaf_index(self) -> Iterator[tuple[bytes, int]]:
        for key, value in self._iter(self._s._leaf_index):
            yield _index_pair(key, value, _LEAF_REST)

    def iter_idempotency(self) -> Iterator[tuple[bytes, int]]:
        for key, value in self._iter(self._s._idempotency):
            yield _index_pair(key, value, _DIGEST_REST)

    def iter_identity_index(self) -> Iterator[tuple[bytes, int, int]]:
        if self._s._by_identity is None:
            return
        for key, value in self._iter(self._s._by_identity):
            if len(value) == 16:
                ms, index = _U64x2.unpack(value)
                yield key, int(ms), int(index)
            else:
                yield key + value, -1, -1

    @_reads
    def stored_size(self) -> int:
        with self._txn.cursor(db=self._s._entries) as cur:
            if not cur.last():
                return 0
            return _stored_index(cur.key(), "entries: the last record's key") + 1

    # --- WriteBatch ---------------------------------------------------
    def append_leaf(
        self,
        index: int,
        leaf: bytes,
        node_hashes: Sequence[bytes],
        key_digest: bytes | None = None,
    ) -> None:
        completed = len(node_hashes)
        if completed != (index ^ (index + 1)).bit_length():
            raise ValueError(
                f"node_hashes: {completed} hashes, but leaf {index} completes "
                f"{(index ^ (index + 1)).bit_length()} nodes (itself, one a trailing one bit)"
            )
        key = _pack(index)
        if not self._txn.put(key, leaf, db=self._s._entries, append=True, overwrite=False):
            raise StorageCorruptError(f"entries: leaf {index} already stored")
        # Every stored node goes after the last one: MDB_APPENDDUP, pages filled to the end.
        put = self._hashes_cursor().put
        position = stored_before(index)
        group, slot = divmod(position, GROUP_NODES)
        if not put(_pack(group), _SLOTS[slot] + node_hashes[0], append=True):
            raise StorageCorruptError(f"{_where(position)}: already stored")
        if completed > _FIRST_STORED_LEVEL:
            for h in node_hashes[_FIRST_STORED_LEVEL:]:
                position += 1
                group, slot = divmod(position, GROUP_NODES)
                if not put(_pack(group), _SLOTS[slot] + h, append=True):
                    raise StorageCorruptError(f"{_where(position)}: already stored")
        if key_digest is not None:
            if len(key_digest) != DIGEST_BYTES:
                raise ValueError(f"key_digest: {len(key_digest)} bytes, want {DIGEST_BYTES}")
            if self._pending is None:
                self._pending = []
            self._pending.append(key + key_digest)

    def _finish(self) -> None:
        """Write what the batch keeps until its commit: its key digests, one record."""
        pending = self._pending
        if pending:
            if self._s._pending is None:
                raise StorageCorruptError("pending_digests: no such table")
            if not self._txn.put(
                pending[0][:8], b"".join(pending), db=self._s._pending, append=True
            ):
                raise StorageCorruptError(
                    f"pending_digests: a record at or after leaf {_index(pending[0][:8])}"
                )
        self._pending = None

    def index_identity(self, prefix: bytes, accepted_at_ms: int, index: int) -> None:
        value = _U64x2.pack(accepted_at_ms, index)
        db = self._s._by_identity
        # Per identity, (time, index) only grows: an append, unless storage was edited.
        if not self._txn.put(prefix, value, db=db, append=True):
            self._txn.put(prefix, value, db=db, dupdata=True)

    def index_leaves(
        self, leaf_hashes: Sequence[tuple[bytes, int]], digests: Sequence[tuple[bytes, int]]
    ) -> None:
        for db, pairs, rest in (
            (self._s._leaf_index, leaf_hashes, _LEAF_REST),
            (self._s._idempotency, digests, _DIGEST_REST),
        ):
            if pairs:
                with self._txn.cursor(db=db) as cur:
                    cur.putmulti(_encode_index(pairs, rest), dupdata=True)

    def put_idempotency(self, key_digest: bytes, index: int) -> None:
        self.index_leaves((), [(key_digest, index)])

    def set_indexed_upto(self, index: int) -> None:
        self._txn.put(META_INDEXED_UPTO, _pack(index), db=self._s._meta)
        if self._s._pending is None:
            return
        # The index holds these digests now. Records are whole batches; one that
        # reaches past index stays (its leaves below are simply not read again).
        with self._txn.cursor(db=self._s._pending) as cur:
            while cur.first():
                value = cur.value()
                if len(value) < _PENDING_ITEM or len(value) % _PENDING_ITEM:
                    break  # malformed: left for fsck to report
                if _unpack(value[-_PENDING_ITEM:][:8])[0] >= index:
                    break
                cur.delete()

    def set_checkpoint(self, note: bytes, size: int) -> None:
        self.set_meta(_CHECKPOINT, note)
        self.set_meta(META_SIZE, _pack(size))

    def set_meta(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._s._meta)

    # --- witness cosignatures: one metadata value (docs/storage.md) ------
    def cosignatures(self) -> bytes | None:
        return self.meta(META_COSIGNATURES)

    def set_cosignatures(self, value: bytes) -> None:
        self.set_meta(META_COSIGNATURES, value)


class _Snapshot(_Txn):
    """A read snapshot; a context manager that opens and ends its read transaction."""

    __slots__ = ("_size", "_slot")

    def __init__(self, store: LmdbStorage) -> None:
        super().__init__(store, None)
        self._size = -1

    def size(self) -> int:
        if self._size < 0:  # read once: a snapshot's size never changes
            self._size = super().size()
        return self._size

    @_reads
    def read_node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        # Nodes high in the tree are shared by most proofs and never change once
        # stored: they are kept in memory (LmdbStorage._node_cache), the rest read.
        store = self._s
        low = store._cache_from_level(self.size())
        return self._read_nodes(nodes, low, store._node_cache)

    def __enter__(self) -> _Snapshot:
        store = self._s
        self._slot = store._gate.enter()
        try:
            self._txn = store._env.begin()
        except lmdb.Error as e:
            store._gate.leave(self._slot)
            raise _read_fault(e, store.path) from e
        except BaseException:
            store._gate.leave(self._slot)
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self._txn.abort()
        finally:
            self._txn = self._cursors = self._hcur = None
            self._s._gate.leave(self._slot)


@dataclass(frozen=True)
class MapUse:
    """How full the LMDB map is, in bytes."""

    used_bytes: int
    map_bytes: int
    max_map_bytes: int


class LmdbStorage:
    """The log's state in one LMDB environment under ``path``.

    With ``create`` (the default) a missing environment is created (its folder
    0700, its files 0600); without it, ``path/data.mdb`` must exist and hold
    one. An existing ``data.mdb`` is checked against its meta pages before it
    is mapped (:func:`check_data_file`). A damaged environment raises
    :class:`StorageCorruptError`; one that cannot be opened for another reason,
    :class:`StorageUnavailableError`.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 44,
        max_readers: int = 1024,
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        path = Path(path)
        data = path / "data.mdb"
        if not readonly and create:
            make_private_dir(path)
        if data.exists() and (data.stat().st_size or not create or readonly):
            check_data_file(data)
        elif not create or readonly:
            raise StorageCorruptError(f"{data}: missing: no LMDB environment here")
        self.path = path
        self._max_map_size = max_map_size
        self.commit_listener: Callable[[float], None] | None = None
        """Called on the writer's thread with the seconds each write transaction's commit
        (its page writes and fsyncs) took (the server's metrics)."""
        self._gate = _TxnGate()
        self._node_cache: dict[int, bytes] = {}
        """Hashes of nodes at levels from ``_cache_level`` up, read by snapshots."""
        self._cache_level = _MIN_CACHE_LEVEL
        try:
            self._env = lmdb.open(
                str(path),
                map_size=map_size,
                max_dbs=8,
                max_readers=max_readers,
                readonly=readonly,
                create=False,
                mode=0o600,
                sync=True,
                metasync=True,
                readahead=False,
                meminit=False,
                lock=True,
            )
        except lmdb.Error as e:
            raise _open_fault(e, path) from e
        try:
            self._open_tables(map_size, readonly, create)
        except lmdb.Error as e:
            self._env.close()
            raise _open_fault(e, path) from e
        except BaseException:
            self._env.close()
            raise

    def _open_tables(self, map_size: int, readonly: bool, create: bool) -> None:
        # Existing data files can be larger than the map size asked for.
        self._map_size = max(map_size, int(self._env.info()["map_size"]))
        # Tables are created only for a new log: opening an existing one writes
        # nothing, so a folder refused at start-up is left exactly as it was.
        create = create and not readonly
        try:
            self._meta = self._env.open_db(b"meta", create=create)
        except lmdb.NotFoundError:
            raise StorageCorruptError(
                f"{self.path / 'data.mdb'}: no table meta: not a sealog log, or damaged"
            ) from None
        # A new log's tables are created in a new log or one of this format only: a
        # log of another format is left as it is, for the log to refuse by its format.
        with self._env.begin() as txn:
            fmt = txn.get(META_FORMAT, db=self._meta)
        create = create and (fmt is None or bytes(fmt) == FORMAT_VERSION)
        self._entries = self._open_table(b"entries", create, dupsort=False)
        self._hashes = self._open_table(b"hashes", create, dupsort=True)
        self._leaf_index = self._open_table(b"leaf_index", create, dupsort=True)
        self._idempotency = self._open_table(b"idempotency", create, dupsort=True)
        self._by_identity = _open_optional(self._env, b"by_identity", create, dupsort=True)
        self._pending = _open_optional(self._env, b"pending_digests", create, dupsort=False)

    def _open_table(self, name: bytes, create: bool, *, dupsort: bool) -> Any:
        """A table every log of a known format has; missing, it is damage (or not a log)."""
        try:
            return self._env.open_db(name, dupsort=dupsort, dupfixed=dupsort, create=create)
        except lmdb.NotFoundError:
            raise StorageCorruptError(
                f"{self.path / 'data.mdb'}: no table {name.decode()}: damaged, or not a sealog log"
            ) from None

    def _cache_from_level(self, size: int) -> int:
        """The lowest level whose nodes are cached: about 2^16 nodes at most for ``size``."""
        want = max(_MIN_CACHE_LEVEL, (size >> _CACHE_NODES_BITS).bit_length())
        if want > self._cache_level or len(self._node_cache) > _MAX_CACHED_NODES:
            self._node_cache = {}  # the tree outgrew it: start again one level up
            self._cache_level = max(want, self._cache_level)
        return self._cache_level

    def read(self) -> _Snapshot:
        """A read snapshot: ``with storage.read() as snap: ...``."""
        return _Snapshot(self)

    @contextmanager
    def write(self) -> Iterator[_Txn]:
        """A write batch; see :meth:`sealog.server.storage.Storage.write`.

        The body may run twice: if the map fills up, the batch is aborted, the
        map doubled, and the body run again. Callers must therefore not let
        the body have effects outside the batch (the sequencer copies its
        state first).
        """
        grow = False
        slot = self._gate.enter()
        try:
            txn = self._env.begin(write=True)
            try:
                batch = _Txn(self, txn)
                yield batch
                batch._finish()
                if self.commit_listener is None:
                    txn.commit()
                else:
                    started = time.perf_counter()
                    txn.commit()
                    self.commit_listener(time.perf_counter() - started)
            except lmdb.MapFullError:
                txn.abort()
                grow = True
            except _LMDB_DAMAGE as e:
                txn.abort()
                raise StorageCorruptError(f"{self.path}: LMDB cannot write the storage: {e}") from e
            except (lmdb.Error, OSError) as e:
                txn.abort()
                raise StorageUnavailableError(_describe(e, self.path)) from e
            except BaseException:
                txn.abort()
                raise
        finally:
            self._gate.leave(slot)
        if grow:  # with this thread's transaction closed
            self._grow()
            raise RetryBatchError("storage map grown; run the batch again")

    def _grow(self) -> None:
        new = self._map_size * 2
        if new > self._max_map_size:
            raise StorageUnavailableError(
                f"storage map is full at {self._map_size} bytes (max_map_size {self._max_map_size})"
            )
        with self._gate.exclusive():
            self._env.set_mapsize(new)
        self._map_size = new

    def map_use(self) -> MapUse:
        """The map's pages in use, its current size and the most it may grow to."""
        return MapUse(self.disk_usage(), self._map_size, self._max_map_size)

    def disk_usage(self) -> int:
        """Bytes used by the LMDB pages in use (not the sparse file size)."""
        info = self._env.info()
        stat = self._env.stat()
        return (int(info["last_pgno"]) + 1) * int(stat["psize"])

    def close(self) -> None:
        self._env.close()


def _open_fault(e: lmdb.Error, path: Path) -> SealogError:
    """Why the environment in ``path`` did not open: damage, or something else."""
    if isinstance(e, _LMDB_DAMAGE):
        return StorageCorruptError(f"{path}: LMDB cannot open the storage, it is damaged: {e}")
    return StorageUnavailableError(f"{path}: LMDB cannot open the storage: {e}")


def _open_optional(env: Any, name: bytes, create: bool, *, dupsort: bool) -> Any:
    """Open a table a log of an older format may lack; without ``create``, one that does
    not exist reads as empty (None)."""
    try:
        return env.open_db(name, dupsort=dupsort, dupfixed=dupsort, create=create)
    except lmdb.NotFoundError:
        if create:
            raise
        return None


_FULL_BELOW_BYTES = 1 << 20
"""Free space under which a failed write is reported as a full disk."""


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _describe(e: BaseException, path: Path) -> str:
    """Say why a commit failed; a full disk is named as such.

    LMDB reports a short write (the disk filled up in the middle of a commit)
    as EIO, not ENOSPC, so the free space left decides.
    """
    text = str(e)
    free = _free_bytes(path)
    if (
        "No space left" in text
        or getattr(e, "errno", None) == errno.ENOSPC
        or (free is not None and free < _FULL_BELOW_BYTES)
    ):
        left = "" if free is None else f", {free} bytes free"
        return (
            f"storage is full (no space left on device{left} under {path}: {text}); "
            "free space and retry"
        )
    return f"storage write failed: {text}"
