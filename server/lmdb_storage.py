"""The LMDB implementation of :mod:`sealog.server.storage` (docs/storage.md).

One LMDB environment (a folder) holds six tables, every integer a big-endian
uint64 so LMDB's key order is index order and appends can use ``append=True``:

- ``entries``: leaf index -> leaf bytes
- ``hashes``: leaf index -> the 32-byte hashes of the nodes that leaf completes,
  level 0 first (see :func:`~sealog.server.storage.hash_location`), then the
  16-byte digest of its idempotency key if it had one
- ``leaf_index``: the first 2 bytes of a leaf hash -> sorted duplicates of the
  next 6 bytes and the leaf index (the full hash is compared in ``hashes``)
- ``idempotency``: the first 2 bytes of a key digest -> sorted duplicates of the
  next 6 bytes and the leaf index (the full digest is compared in ``hashes``)
- ``by_identity``: the first 8 bytes of SHA-256(identity) -> sorted duplicates
  of accepted_at_ms and the leaf index
- ``meta``: the signed checkpoint and its tree size, ``indexed_upto``, the
  origin, the storage format version, witness cosignatures

``entries``, ``hashes``, ``by_identity`` and the checkpoint are written in the
sequencer's batch; ``leaf_index`` and ``idempotency`` later, in large sorted
batches (docs/storage.md, "Deferred indexing").

Commits are durable (LMDB's default ``sync``). The map grows by doubling when
it fills: the writer waits until no transaction is open in this process,
resizes and retries the batch. Opening a transaction takes no lock: each
thread counts its own open transactions, and a resize waits for every count
to reach zero (:class:`_TxnGate`).
"""

from __future__ import annotations

import errno
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import lmdb

from sealog.client.proof import NodeID
from sealog.server.storage import (
    DIGEST_BYTES,
    META_COSIGNATURES,
    META_INDEXED_UPTO,
    META_SIZE,
    RetryBatchError,
    StorageCorruptError,
    StorageUnavailableError,
    hash_count,
)

__all__ = ["LmdbStorage"]

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
_REST = 6
"""Bytes of the hash that follow the bucket in each index value, before the index."""
_INDEX_VALUE = _REST + 8


def _index(key: bytes) -> int:
    """A big-endian uint64 key; a record of another length (corruption) decodes as -1."""
    return int(_unpack(key)[0]) if len(key) == 8 else -1


def _stored_index(data: bytes, where: str) -> int:
    """A stored big-endian uint64; anything else is corruption, named by ``where``."""
    if len(data) != 8:
        raise StorageCorruptError(f"{where}: {bytes(data).hex()} is not an 8-byte index")
    return int(_unpack(data)[0])


def _index_pair(key: bytes, value: bytes) -> tuple[bytes, int]:
    """A leaf-hash or idempotency index record as (8-byte prefix, index); -1 if malformed."""
    if len(key) != _BUCKET or len(value) != _INDEX_VALUE:
        return key + value, -1
    return key + value[:_REST], int(_unpack(value[_REST:])[0])


def _encode_index(pairs: Sequence[tuple[bytes, int]]) -> list[tuple[bytes, bytes]]:
    """Index records of ``(hash, index)`` pairs, in LMDB's order (pages are then met in order)."""
    out = [(h[:_BUCKET], h[_BUCKET : _BUCKET + _REST] + _pack(i)) for h, i in pairs]
    out.sort()
    return out


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

    __slots__ = ("_cursors", "_s", "_txn")

    def __init__(self, store: LmdbStorage, txn: Any) -> None:
        self._s = store
        self._txn = txn
        self._cursors: dict[int, Any] | None = None

    # --- ReadSnapshot -------------------------------------------------
    def checkpoint(self) -> bytes | None:
        return self.meta(_CHECKPOINT)

    def size(self) -> int:
        value = self._txn.get(META_SIZE, db=self._s._meta)
        return 0 if value is None else _stored_index(value, "meta[size]")

    def indexed_upto(self) -> int:
        value = self._txn.get(META_INDEXED_UPTO, db=self._s._meta)
        return 0 if value is None else _stored_index(value, "meta[indexed_upto]")

    def meta(self, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._s._meta)
        return None if value is None else bytes(value)

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        return self.read_node_hashes([(n.level, n.index) for n in nodes])

    def read_node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        node = self._node
        return [node(level, index) for level, index in nodes]

    def _node(self, level: int, index: int) -> bytes:
        record = ((index + 1) << level) - 1
        value = self._txn.get(_pack(record), None, self._s._hashes)
        offset = level << 5
        if value is None or len(value) < offset + 32:
            raise StorageCorruptError(
                f"hashes: no stored hash for node level {level} index {index} (record {record})"
            )
        return value[offset : offset + 32]  # type: ignore[no-any-return]

    def _hash_record(self, index: int) -> bytes:
        value = self._txn.get(_pack(index), db=self._s._hashes)
        if value is None:
            raise StorageCorruptError(f"hashes: no record for leaf {index}")
        return bytes(value)

    def key_digest(self, index: int) -> bytes | None:
        return _record_digest(index, self._hash_record(index))

    def leaf(self, index: int) -> bytes:
        value = self._txn.get(_pack(index), db=self._s._entries)
        if value is None:
            raise StorageCorruptError(f"entries: no leaf at index {index}")
        return bytes(value)

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

    def _first_indexed(
        self, db: Any, prefix: bytes, below: int, matches: Callable[[int], bool]
    ) -> int | None:
        """The smallest index ``< below`` under the 8-byte ``prefix`` of a bucketed index
        for which ``matches`` (which compares the full hash or digest) is true."""
        cur = self._cursor(db)
        rest = prefix[_BUCKET:]
        if not cur.set_range_dup(prefix[:_BUCKET], rest):
            return None
        while True:
            value = cur.value()
            if len(value) != _INDEX_VALUE or value[:_REST] != rest:
                return None
            index = int(_unpack(value[_REST:])[0])
            if index >= below:
                return None
            if matches(index):
                return index
            if not cur.next_dup():
                return None

    def find_leaf_hash(self, leaf_hash: bytes, below: int) -> int | None:
        def matches(index: int) -> bool:
            return self._hash_record(index)[:32] == leaf_hash

        return self._first_indexed(self._s._leaf_index, leaf_hash[:8], below, matches)

    def find_idempotency(self, key_digest: bytes) -> int | None:
        # The common case, a key never seen, is answered by one cursor positioning.
        cur = self._cursor(self._s._idempotency)
        if not cur.set_range_dup(key_digest[:_BUCKET], key_digest[_BUCKET:8]):
            return None
        if cur.value()[:_REST] != key_digest[_BUCKET:8]:
            return None

        def matches(index: int) -> bool:
            return _record_digest(index, self._hash_record(index)) == key_digest

        return self._first_indexed(self._s._idempotency, key_digest[:8], 1 << 64, matches)

    def iter_pending_index(self, start: int, end: int) -> Iterator[tuple[int, bytes, bytes | None]]:
        if start >= end:
            return
        with self._txn.cursor(db=self._s._hashes) as cur:
            expected = start
            if cur.set_key(_pack(start)):
                for key, value in cur:
                    index = _index(key)
                    if index != expected or index >= end:
                        break
                    record = bytes(value)
                    if len(record) < 32:
                        raise StorageCorruptError(f"hashes[{index}]: {len(record)} bytes")
                    yield index, record[:32], _record_digest(index, record)
                    expected += 1
            if expected < end:
                raise StorageCorruptError(f"hashes: no record for leaf {expected}")

    def iter_by_identity(
        self, prefix: bytes, start_ms: int, start_index: int
    ) -> Iterator[tuple[int, int]]:
        if self._s._by_identity is None:
            return
        with self._txn.cursor(db=self._s._by_identity) as cur:
            if not cur.set_range_dup(prefix, _U64x2.pack(start_ms, start_index)):
                return
            for value in cur.iternext_dup():
                if len(value) != 16:
                    raise StorageCorruptError(
                        f"by_identity[{prefix.hex()}]: {bytes(value).hex()} is not 16 bytes"
                    )
                ms, index = _U64x2.unpack(value)
                yield int(ms), int(index)

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
            yield _index_pair(key, value)

    def iter_idempotency(self) -> Iterator[tuple[bytes, int]]:
        for key, value in self._iter(self._s._idempotency):
            yield _index_pair(key, value)

    def iter_identity_index(self) -> Iterator[tuple[bytes, int, int]]:
        if self._s._by_identity is None:
            return
        for key, value in self._iter(self._s._by_identity):
            if len(value) == 16:
                ms, index = _U64x2.unpack(value)
                yield key, int(ms), int(index)
            else:
                yield key + value, -1, -1

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
        key = _pack(index)
        put = self._txn.put
        if not put(key, leaf, db=self._s._entries, append=True, overwrite=False):
            raise StorageCorruptError(f"entries: leaf {index} already stored")
        record = b"".join(node_hashes)
        if key_digest is not None:
            if len(key_digest) != DIGEST_BYTES:
                raise ValueError(f"key_digest: {len(key_digest)} bytes, want {DIGEST_BYTES}")
            record += key_digest
        put(key, record, db=self._s._hashes, append=True)

    def index_identity(self, prefix: bytes, accepted_at_ms: int, index: int) -> None:
        value = _U64x2.pack(accepted_at_ms, index)
        db = self._s._by_identity
        # Per identity, (time, index) only grows: an append, unless storage was edited.
        if not self._txn.put(prefix, value, db=db, append=True):
            self._txn.put(prefix, value, db=db, dupdata=True)

    def index_leaves(
        self, leaf_hashes: Sequence[tuple[bytes, int]], digests: Sequence[tuple[bytes, int]]
    ) -> None:
        for db, pairs in ((self._s._leaf_index, leaf_hashes), (self._s._idempotency, digests)):
            if pairs:
                with self._txn.cursor(db=db) as cur:
                    cur.putmulti(_encode_index(pairs), dupdata=True)

    def put_idempotency(self, key_digest: bytes, index: int) -> None:
        self.index_leaves((), [(key_digest, index)])

    def set_indexed_upto(self, index: int) -> None:
        self._txn.put(META_INDEXED_UPTO, _pack(index), db=self._s._meta)

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


def _record_digest(index: int, record: bytes) -> bytes | None:
    """The key digest at the end of leaf ``index``'s hash record, None if it has none."""
    n = 32 * hash_count(index)
    if len(record) == n:
        return None
    if len(record) == n + DIGEST_BYTES:
        return bytes(record[n:])
    raise StorageCorruptError(
        f"hashes[{index}]: {len(record)} bytes, want {n} or {n + DIGEST_BYTES} "
        f"({n // 32} hashes, then a {DIGEST_BYTES}-byte key digest or nothing)"
    )


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

    def read_node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        # Nodes high in the tree are shared by most proofs and never change once
        # stored: they are kept in memory (LmdbStorage._node_cache), the rest read.
        store = self._s
        low = store._cache_from_level(self.size())
        cache = store._node_cache
        node = self._node
        out = []
        for level, index in nodes:
            if level < low:
                out.append(node(level, index))
                continue
            key = (index << 6) | level
            h = cache.get(key)
            if h is None:
                h = cache[key] = node(level, index)
            out.append(h)
        return out

    def __enter__(self) -> _Snapshot:
        store = self._s
        self._slot = store._gate.enter()
        try:
            self._txn = store._env.begin()
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
            self._txn = self._cursors = None
            self._s._gate.leave(self._slot)


class LmdbStorage:
    """The log's state in one LMDB environment under ``path`` (created if missing)."""

    def __init__(
        self,
        path: str | Path,
        *,
        map_size: int = 1 << 30,
        max_map_size: int = 1 << 44,
        max_readers: int = 1024,
        readonly: bool = False,
    ) -> None:
        path = Path(path)
        if not readonly:
            path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_map_size = max_map_size
        self._gate = _TxnGate()
        self._node_cache: dict[int, bytes] = {}
        """Hashes of nodes at levels from ``_cache_level`` up, read by snapshots."""
        self._cache_level = _MIN_CACHE_LEVEL
        self._env = lmdb.open(
            str(path),
            map_size=map_size,
            max_dbs=8,
            max_readers=max_readers,
            readonly=readonly,
            sync=True,
            metasync=True,
            readahead=False,
            meminit=False,
            lock=True,
        )
        # Existing data files can be larger than the map size asked for.
        self._map_size = max(map_size, int(self._env.info()["map_size"]))
        open_db = self._env.open_db
        create = not readonly
        self._meta = open_db(b"meta", create=create)
        self._entries = open_db(b"entries", create=create)
        self._hashes = open_db(b"hashes", create=create)
        self._leaf_index = open_db(b"leaf_index", dupsort=True, dupfixed=True, create=create)
        self._idempotency = open_db(b"idempotency", dupsort=True, dupfixed=True, create=create)
        self._by_identity = _open_optional(self._env, b"by_identity", readonly)

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
                yield _Txn(self, txn)
                txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                grow = True
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

    def disk_usage(self) -> int:
        """Bytes used by the LMDB pages in use (not the sparse file size)."""
        info = self._env.info()
        stat = self._env.stat()
        return (int(info["last_pgno"]) + 1) * int(stat["psize"])

    def close(self) -> None:
        self._env.close()


def _open_optional(env: Any, name: bytes, readonly: bool) -> Any:
    """Open a table of sorted duplicates; read-only, one that does not exist reads as empty."""
    try:
        return env.open_db(name, dupsort=True, dupfixed=True, create=not readonly)
    except lmdb.NotFoundError:
        if not readonly:
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
