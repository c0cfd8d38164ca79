"""What the log needs from storage: read snapshots and atomic, durable write batches.

Two read contracts: :class:`ReadSnapshot` is what the log reads to serve
(checkpoints, proofs, entries, search, lookups in the indexes), and
:class:`TableScan` walks every record of each table as stored, malformed ones
included, for fsck (:mod:`sealog.server.fsck`) to check against the entries.
:class:`FsckSnapshot` is both. A :class:`WriteBatch` reads as a
:class:`ReadSnapshot`; only the sequencer opens one
(:mod:`sealog.server.sequencer`). Where each node hash is stored is the
backend's business (for LMDB, :mod:`sealog.server.lmdb_layout`).

The signed checkpoint and the size of its tree are written in the same batch
as the leaves they cover, so a snapshot's checkpoint always describes exactly
the tree it holds.

The leaf-hash and idempotency indexes are derived data: the sequencer writes
them in large batches of their own (docs/storage.md, "Deferred indexing"), and
``indexed_upto`` says which leaves they cover. Until then the idempotency key
digests of the leaves above it are kept with their batch, so the in-memory
tail can be rebuilt after a crash. The index by identity and time is written
with the entries: one record per run of consecutive leaves of one identity
and acceptance time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sealog.client.errors import SealogError
from sealog.client.proof import NodeID

__all__ = [
    "DIGEST_BYTES",
    "FORMAT_VERSION",
    "META_COSIGNATURES",
    "META_FORMAT",
    "META_INDEXED_UPTO",
    "META_ORIGIN",
    "META_PRUNED_BELOW",
    "META_SIZE",
    "FsckSnapshot",
    "ReadSnapshot",
    "RetryBatchError",
    "Storage",
    "StorageCorruptError",
    "StorageUnavailableError",
    "TableScan",
    "WriteBatch",
    "identity_prefix",
]


META_ORIGIN = b"origin"
"""Metadata key: the log's origin, fixed when the log is created."""
META_FORMAT = b"format"
"""Metadata key: the storage format version."""
META_COSIGNATURES = b"cosignatures"
"""Metadata key: the latest cosignature of each witness (:mod:`sealog.server.cosignatures`)."""
META_SIZE = b"size"
"""Metadata key: the size of the stored checkpoint's tree (8 bytes, big-endian)."""
META_INDEXED_UPTO = b"indexed_upto"
"""Metadata key: the leaf-hash and idempotency indexes hold every leaf below this (8 bytes)."""
META_PRUNED_BELOW = b"pruned_below"
"""Metadata key: the contents of every leaf below this index were pruned (8 bytes); absent: 0."""
FORMAT_VERSION = b"sealog-lmdb-3"
"""The storage format this code reads and writes."""
DIGEST_BYTES = 12
"""Length of an idempotency key digest (:func:`sealog.server.sequencer.idempotency_digest`):
96 bits, so that even among 10^9 keys of one log a collision has odds of about 10^-11."""
IDENTITY_PREFIX_BYTES = 8


class StorageUnavailableError(SealogError):
    """Storage cannot take writes right now (disk full, I/O error); nothing was written."""


class StorageCorruptError(SealogError):
    """Storage holds something it should not: a missing record or a malformed value."""


class RetryBatchError(SealogError):
    """The write batch was not stored for a passing reason (the map grew): run it again."""


def identity_prefix(identity: str) -> bytes:
    """The key of an identity in the index by identity: the first 8 bytes of its SHA-256."""
    return hashlib.sha256(identity.encode("utf-8")).digest()[:IDENTITY_PREFIX_BYTES]


class ReadSnapshot(Protocol):
    """A consistent view of the log at one moment (one read transaction): what the log
    reads to serve and to check itself at start-up."""

    def checkpoint(self) -> bytes | None:
        """The latest signed checkpoint note, or None for a log never written."""
        ...

    def size(self) -> int:
        """The size of the tree of :meth:`checkpoint` (0 for a log never written)."""
        ...

    def indexed_upto(self) -> int:
        """The leaf-hash and idempotency indexes hold every leaf below this index."""
        ...

    def meta(self, key: bytes) -> bytes | None:
        """A value from the metadata table."""
        ...

    def pruned_below(self) -> int:
        """The contents (leaf bytes) of every leaf below this index were pruned by the
        retention policy; their leaf hashes and the tree stay. 0 when none were."""
        ...

    def cosignatures(self) -> bytes | None:
        """The stored witness cosignatures (:mod:`sealog.server.cosignatures`), or None."""
        ...

    def stored_size(self) -> int:
        """How many leaves are stored (one past the highest leaf index), from the records."""
        ...

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        """The hashes of perfect subtrees, stored or recomputed from stored leaf hashes;
        :class:`StorageCorruptError` if a hash they need is missing."""
        ...

    def read_node_hashes(self, nodes: Sequence[tuple[int, int]]) -> list[bytes]:
        """:meth:`read_hashes` for ``(level, index)`` pairs: the fast path of proofs."""
        ...

    def leaf(self, index: int) -> bytes:
        """The leaf bytes at ``index``; :class:`StorageCorruptError` if missing."""
        ...

    def leaves(self, start: int, end: int) -> Iterator[bytes]:
        """The leaves ``[start, end)`` in order."""
        ...

    def find_leaf_hash(self, leaf_hash: bytes, below: int) -> int | None:
        """The smallest indexed leaf ``< below`` whose leaf hash is ``leaf_hash``, if any.

        Only the leaf-hash index is searched: leaves from :meth:`indexed_upto` on
        may not be in it yet (the log keeps those in memory).
        """
        ...

    def find_idempotency(self, key_digest: bytes) -> int | None:
        """The indexed leaf stored with this idempotency key digest, if any (see
        :meth:`find_leaf_hash` about leaves not indexed yet)."""
        ...

    def iter_pending_index(self, start: int, end: int) -> Iterator[tuple[int, bytes, bytes | None]]:
        """``(index, leaf hash, key digest or None)`` of leaves ``[start, end)``, in order:
        what the indexes must hold for them, read from the stored leaf hashes and the
        key digests kept for leaves not indexed yet."""
        ...

    def iter_by_identity(
        self, prefix: bytes, start_ms: int, start_index: int
    ) -> Iterator[tuple[int, int]]:
        """``(accepted_at_ms, first index)`` of the runs recorded under ``prefix``, in
        order, from the run that may hold leaf ``start_index`` at ``start_ms`` on: the
        last record at or before ``(start_ms, start_index)`` if its time is
        ``start_ms``, else the first one after. Candidates only: the prefix may collide."""
        ...


class TableScan(Protocol):
    """Every record of each table, in key order, as stored: what fsck checks.

    Where a reader of :class:`ReadSnapshot` raises at a missing or malformed
    record, these name it (a placeholder value) and go on, so that one pass
    reports every problem.
    """

    def iter_entries(self) -> Iterator[tuple[int, bytes]]:
        """Every stored (index, leaf) record in index order, gaps and all."""
        ...

    def iter_hash_records(self) -> Iterator[tuple[int, bytes]]:
        """Every stored ``(group, value)`` of the ``hashes`` table in order; group -1
        for a malformed key."""
        ...

    def iter_leaf_hashes(self, start: int, end: int) -> Iterator[tuple[int, bytes | None]]:
        """``(index, stored leaf hash)`` of leaves ``[start, end)`` in order; None where
        the hash is missing or malformed."""
        ...

    def iter_leaf_index(self) -> Iterator[tuple[bytes, int]]:
        """Every (leaf hash prefix, index) record of the leaf-hash index; index -1 (and
        the raw record) for a malformed one."""
        ...

    def iter_idempotency(self) -> Iterator[tuple[bytes, int]]:
        """Every (key digest, index) record of the idempotency index; index -1 (and the
        raw record) for a malformed one."""
        ...

    def iter_pending_digests(self) -> Iterator[tuple[int, bytes]]:
        """Every kept ``(leaf index, key digest)`` of leaves not indexed yet, in order;
        :class:`StorageCorruptError` at a malformed record."""
        ...

    def iter_identity_index(self) -> Iterator[tuple[bytes, int, int]]:
        """Every (identity prefix, accepted_at_ms, first index) record of the index by
        identity; ``-1, -1`` (and the raw record) for a malformed one."""
        ...


class FsckSnapshot(ReadSnapshot, TableScan, Protocol):
    """What fsck reads: the tables record by record, and the log's own reads, whose
    answers it checks against them."""


class WriteBatch(ReadSnapshot, Protocol):
    """A write transaction: its reads see its own writes; it commits all or nothing."""

    def append_leaf(
        self,
        index: int,
        leaf: bytes,
        node_hashes: Sequence[bytes],
        key_digest: bytes | None = None,
    ) -> None:
        """Store leaf ``index`` (which must be the next one) and the hashes it completes
        (level 0 first, as :meth:`~sealog.client.compact.CompactRange.append` returns
        them), and keep the digest of its idempotency key until the index has it. The
        leaf-hash and idempotency indexes are not written here: see :meth:`index_leaves`."""
        ...

    def index_identity(self, prefix: bytes, accepted_at_ms: int, index: int) -> None:
        """Record that a run of leaves of one identity and time starts at ``index`` in the
        index by identity (:func:`identity_prefix`)."""
        ...

    def index_leaves(
        self, leaf_hashes: Sequence[tuple[bytes, int]], digests: Sequence[tuple[bytes, int]]
    ) -> None:
        """Add ``(leaf hash, index)`` and ``(key digest, index)`` pairs to the two indexes.

        Adding a pair that is already there changes nothing.
        """
        ...

    def put_idempotency(self, key_digest: bytes, index: int) -> None:
        """Add one ``(key digest, index)`` pair to the idempotency index."""
        ...

    def set_indexed_upto(self, index: int) -> None:
        """Say that the two indexes now hold every leaf below ``index``; the key digests
        kept for those leaves (see :meth:`append_leaf`) are dropped."""
        ...

    def set_checkpoint(self, note: bytes, size: int) -> None:
        """Store the signed checkpoint for the tree this batch leaves behind, and its size."""
        ...

    def set_meta(self, key: bytes, value: bytes) -> None:
        """Store a metadata value."""
        ...

    def set_cosignatures(self, value: bytes) -> None:
        """Replace the stored witness cosignatures (:mod:`sealog.server.cosignatures`)."""
        ...


class Storage(Protocol):
    """A log's durable state."""

    def read(self) -> AbstractContextManager[ReadSnapshot]:
        """Open a read snapshot; it never blocks the writer."""
        ...

    def write(self) -> AbstractContextManager[WriteBatch]:
        """Open the write batch; it commits durably when the block exits without error.

        Precondition: called on the sequencer's writer thread, the one thread that
        writes a log (:mod:`sealog.server.sequencer`). Raises
        :class:`StorageUnavailableError` if the commit fails, and
        :class:`RetryBatchError` if it should simply be run again; either way
        nothing of the batch is stored.
        """
        ...

    def close(self) -> None:
        """Release the storage."""
        ...
