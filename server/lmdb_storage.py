"""The LMDB implementation of :mod:`sealog.server.storage` (docs/storage.md).

One LMDB environment (a folder) holds five tables, every integer key a
big-endian uint64 so LMDB's key order is index order and appends can use
``append=True``:

- ``entries``: leaf index -> leaf bytes
- ``hashes``: leaf index -> the 32-byte hashes of the nodes that leaf completes,
  level 0 first (see :func:`~sealog.server.storage.hash_location`)
- ``leaf_index``: first 8 bytes of a leaf hash -> leaf index (duplicates sorted,
  so colliding prefixes are told apart by the full hash in ``hashes``)
- ``idempotency``: 16-byte digest of (identity, idempotency key) -> leaf index
- ``meta``: the signed checkpoint, the origin, the storage format version

Commits are durable (LMDB's default ``sync``). The map grows by doubling when
it fills: the writer waits until no read transaction is open, resizes and
retries the batch.
"""

from __future__ import annotations

import errno
import os
import struct
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

from sealog.client.proof import NodeID
from sealog.server.storage import (
    RetryBatchError,
    StorageCorruptError,
    StorageUnavailableError,
    hash_location,
    identity_prefix,
)

__all__ = ["LmdbStorage"]

_U64 = struct.Struct(">Q")
_CHECKPOINT = b"checkpoint"
_LEAF_PREFIX_BYTES = 8


def _u64(n: int) -> bytes:
    return _U64.pack(n)


def _index(key: bytes) -> int:
    """A big-endian uint64 key; a record of another length (corruption) decodes as -1."""
    return int(_U64.unpack(key)[0]) if len(key) == _U64.size else -1


def _stored_index(data: bytes, where: str) -> int:
    """A stored big-endian uint64; anything else is corruption, named by ``where``."""
    if len(data) != _U64.size:
        raise StorageCorruptError(f"{where}: {bytes(data).hex()} is not an 8-byte index")
    return int(_U64.unpack(data)[0])


class _RWLock:
    """Many readers or one resizer. Plain writes need no lock: LMDB serialises them."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class _Txn:
    """A read snapshot, or, when opened for writing, a write batch."""

    def __init__(self, store: LmdbStorage, txn: Any) -> None:
        self._s = store
        self._txn = txn

    # --- ReadSnapshot -------------------------------------------------
    def checkpoint(self) -> bytes | None:
        return self.meta(_CHECKPOINT)

    def meta(self, key: bytes) -> bytes | None:
        value = self._txn.get(key, db=self._s._meta)
        return None if value is None else bytes(value)

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        out = []
        get = self._txn.get
        db = self._s._hashes
        for node in nodes:
            record, offset = hash_location(node)
            value = get(_u64(record), db=db)
            if value is None or len(value) < offset + 32:
                raise StorageCorruptError(
                    f"hashes: no stored hash for node level {node.level} index {node.index} "
                    f"(record {record})"
                )
            out.append(bytes(value[offset : offset + 32]))
        return out

    def leaf(self, index: int) -> bytes:
        value = self._txn.get(_u64(index), db=self._s._entries)
        if value is None:
            raise StorageCorruptError(f"entries: no leaf at index {index}")
        return bytes(value)

    def leaves(self, start: int, end: int) -> Iterator[bytes]:
        with self._txn.cursor(db=self._s._entries) as cur:
            if start >= end or not cur.set_key(_u64(start)):
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

    def find_leaf_hash(self, leaf_hash: bytes, below: int) -> int | None:
        with self._txn.cursor(db=self._s._leaf_index) as cur:
            if not cur.set_key(leaf_hash[:_LEAF_PREFIX_BYTES]):
                return None
            for value in cur.iternext_dup():
                index = _stored_index(value, f"leaf_index[{leaf_hash[:8].hex()}]")
                if index >= below:
                    break
                if self.read_hashes([NodeID(0, index)])[0] == leaf_hash:
                    return int(index)
        return None

    def find_by_identity(
        self, identity: str, since_ms: int, until_ms: int, start_index: int, below: int, limit: int
    ) -> list[int]:
        prefix = identity_prefix(identity)
        out: list[int] = []
        with self._txn.cursor(db=self._s._by_identity) as cur:
            if not cur.set_range(prefix + _u64(since_ms)):
                return out
            for key in cur.iternext(values=False):
                if len(out) >= limit or bytes(key[:8]) != prefix:
                    break
                ms, index = _U64.unpack_from(key, 8)[0], _U64.unpack_from(key, 16)[0]
                # Acceptance times never decrease along the log, so time order is
                # index order and the scan can stop at the first key past either bound.
                if ms > until_ms or index >= below:
                    break
                if index >= start_index:
                    out.append(int(index))
        return out

    def find_idempotency(self, key_digest: bytes) -> int | None:
        value = self._txn.get(key_digest, db=self._s._idempotency)
        if value is None:
            return None
        return _stored_index(value, f"idempotency[{key_digest.hex()}]")

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
            yield key, _index(value)

    def iter_identity_index(self) -> Iterator[tuple[bytes, int, int]]:
        for key, _ in self._iter(self._s._by_identity):
            if len(key) == 24:
                yield key[:8], int(_U64.unpack_from(key, 8)[0]), int(_U64.unpack_from(key, 16)[0])
            else:
                yield key, -1, -1

    def iter_idempotency(self) -> Iterator[tuple[bytes, int]]:
        for key, value in self._iter(self._s._idempotency):
            yield key, _index(value)

    def stored_size(self) -> int:
        with self._txn.cursor(db=self._s._entries) as cur:
            if not cur.last():
                return 0
            return _stored_index(cur.key(), "entries: the last record's key") + 1

    # --- WriteBatch ---------------------------------------------------
    def append_leaf(self, index: int, leaf: bytes, node_hashes: Sequence[bytes]) -> None:
        key = _u64(index)
        put = self._txn.put
        if not put(key, leaf, db=self._s._entries, append=True, overwrite=False):
            raise StorageCorruptError(f"entries: leaf {index} already stored")
        put(key, b"".join(node_hashes), db=self._s._hashes, append=True)
        put(node_hashes[0][:_LEAF_PREFIX_BYTES], key, db=self._s._leaf_index, dupdata=True)

    def put_identity(self, identity: str, accepted_at_ms: int, index: int) -> None:
        key = identity_prefix(identity) + _u64(accepted_at_ms) + _u64(index)
        self._txn.put(key, b"", db=self._s._by_identity)

    def put_idempotency(self, key_digest: bytes, index: int) -> None:
        self._txn.put(key_digest, _u64(index), db=self._s._idempotency)

    def set_checkpoint(self, note: bytes) -> None:
        self.set_meta(_CHECKPOINT, note)

    def set_meta(self, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._s._meta)

    # --- witness cosignatures: one metadata value (docs/storage.md) ------
    def cosignatures(self) -> bytes | None:
        return self.meta(b"cosignatures")

    def set_cosignatures(self, value: bytes) -> None:
        self.set_meta(b"cosignatures", value)


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
        self._lock = _RWLock()
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
        self._idempotency = open_db(b"idempotency", create=create)
        self._by_identity = open_db(b"by_identity", create=create)

    @contextmanager
    def read(self) -> Iterator[_Txn]:
        with self._lock.shared(), self._env.begin(buffers=True) as txn:
            yield _Txn(self, txn)

    @contextmanager
    def write(self) -> Iterator[_Txn]:
        """A write batch; see :meth:`sealog.server.storage.Storage.write`.

        The body may run twice: if the map fills up, the batch is aborted, the
        map doubled, and the body run again. Callers must therefore not let
        the body have effects outside the batch (the sequencer copies its
        state first).
        """
        txn = self._env.begin(write=True)
        try:
            yield _Txn(self, txn)
            txn.commit()
        except lmdb.MapFullError:
            txn.abort()
            self._grow()
            raise RetryBatchError("storage map grown; run the batch again") from None
        except (lmdb.Error, OSError) as e:
            txn.abort()
            raise StorageUnavailableError(_describe(e, self.path)) from e
        except BaseException:
            txn.abort()
            raise

    def _grow(self) -> None:
        new = self._map_size * 2
        if new > self._max_map_size:
            raise StorageUnavailableError(
                f"storage map is full at {self._map_size} bytes (max_map_size {self._max_map_size})"
            )
        with self._lock.exclusive():
            self._env.set_mapsize(new)
        self._map_size = new

    def disk_usage(self) -> int:
        """Bytes used by the LMDB pages in use (not the sparse file size)."""
        info = self._env.info()
        stat = self._env.stat()
        return (int(info["last_pgno"]) + 1) * int(stat["psize"])

    def close(self) -> None:
        self._env.close()


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
