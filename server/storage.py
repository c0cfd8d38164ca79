"""What the log needs from storage: read snapshots and atomic, durable write batches.

The tree is stored as the hashes of its perfect subtrees. When leaf ``i`` is
appended it completes the node at level 0 (its own leaf hash) and one node at
each level ``L`` for which the low ``L`` bits of ``i`` are all ones; those
hashes are stored together under leaf ``i``. The node at ``(level, index)``
therefore lives in the record of leaf ``((index + 1) << level) - 1`` at
offset ``level * 32`` (see :func:`hash_location`).

The signed checkpoint is written in the same batch as the leaves it covers,
so a snapshot's checkpoint always describes exactly the tree it holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sealog.client.errors import SealogError
from sealog.client.proof import NodeID

__all__ = [
    "FORMAT_VERSION",
    "META_COSIGNATURES",
    "META_FORMAT",
    "META_ORIGIN",
    "ReadSnapshot",
    "RetryBatchError",
    "Storage",
    "StorageCorruptError",
    "StorageUnavailableError",
    "WriteBatch",
    "hash_location",
    "identity_prefix",
]


META_ORIGIN = b"origin"
"""Metadata key: the log's origin, fixed when the log is created."""
META_FORMAT = b"format"
"""Metadata key: the storage format version."""
META_COSIGNATURES = b"cosignatures"
"""Metadata key: the latest cosignature of each witness (:mod:`sealog.server.cosignatures`)."""
FORMAT_VERSION = b"sealog-lmdb-1"
"""The storage format this code reads and writes."""


class StorageUnavailableError(SealogError):
    """Storage cannot take writes right now (disk full, I/O error); nothing was written."""


class StorageCorruptError(SealogError):
    """Storage holds something it should not: a missing record or a malformed value."""


class RetryBatchError(SealogError):
    """The write batch was not stored for a passing reason (the map grew): run it again."""


def identity_prefix(identity: str) -> bytes:
    """The 8 bytes under which the identity/time index files an identity's leaves."""
    return hashlib.sha256(identity.encode("utf-8")).digest()[:8]


def hash_location(node: NodeID) -> tuple[int, int]:
    """Return ``(leaf index of the record, byte offset in it)`` that hold ``node``'s hash."""
    return ((node.index + 1) << node.level) - 1, node.level * 32


class ReadSnapshot(Protocol):
    """A consistent view of the log at one moment (one read transaction)."""

    def checkpoint(self) -> bytes | None:
        """The latest signed checkpoint note, or None for a log never written."""
        ...

    def read_hashes(self, nodes: Sequence[NodeID]) -> list[bytes]:
        """The stored hashes of perfect subtrees; :class:`StorageCorruptError` if one is missing."""
        ...

    def leaf(self, index: int) -> bytes:
        """The leaf bytes at ``index``; :class:`StorageCorruptError` if missing."""
        ...

    def leaves(self, start: int, end: int) -> Iterator[bytes]:
        """The leaves ``[start, end)`` in order."""
        ...

    def find_leaf_hash(self, leaf_hash: bytes, below: int) -> int | None:
        """The smallest index ``< below`` whose leaf hash is ``leaf_hash``, if any."""
        ...

    def find_by_identity(
        self, identity: str, since_ms: int, until_ms: int, start_index: int, below: int, limit: int
    ) -> list[int]:
        """Indices of leaves recorded for ``identity`` with ``since_ms <= accepted_at_ms <=
        until_ms`` and ``start_index <= index < below``, in index order, at most ``limit``.
        Candidates only: the identity is indexed by an 8-byte hash prefix."""
        ...

    def find_idempotency(self, key_digest: bytes) -> int | None:
        """The index recorded for an idempotency key digest, if any."""
        ...

    def meta(self, key: bytes) -> bytes | None:
        """A value from the metadata table."""
        ...

    def stored_size(self) -> int:
        """How many leaves are stored (one past the highest leaf index), from the records."""
        ...

    def iter_entries(self) -> Iterator[tuple[int, bytes]]:
        """Every stored (index, leaf) record in index order, gaps and all (for fsck)."""
        ...

    def iter_hash_records(self) -> Iterator[tuple[int, bytes]]:
        """Every stored (leaf index, concatenated node hashes) record in order (for fsck)."""
        ...

    def iter_leaf_index(self) -> Iterator[tuple[bytes, int]]:
        """Every (leaf hash prefix, index) record of the leaf-hash index (for fsck)."""
        ...

    def iter_identity_index(self) -> Iterator[tuple[bytes, int, int]]:
        """Every (identity prefix, accepted_at_ms, index) record (for fsck)."""
        ...

    def iter_idempotency(self) -> Iterator[tuple[bytes, int]]:
        """Every (key digest, index) record of the idempotency index (for fsck)."""
        ...

    def cosignatures(self) -> bytes | None:
        """The stored witness cosignatures (:mod:`sealog.server.cosignatures`), or None."""
        ...


class WriteBatch(ReadSnapshot, Protocol):
    """A write transaction: its reads see its own writes; it commits all or nothing."""

    def append_leaf(self, index: int, leaf: bytes, node_hashes: Sequence[bytes]) -> None:
        """Store leaf ``index`` (which must be the next one) and the hashes it completes."""
        ...

    def put_identity(self, identity: str, accepted_at_ms: int, index: int) -> None:
        """Record leaf ``index`` in the identity/time index."""
        ...

    def put_idempotency(self, key_digest: bytes, index: int) -> None:
        """Record that an idempotency key digest maps to leaf ``index``."""
        ...

    def set_checkpoint(self, note: bytes) -> None:
        """Store the signed checkpoint for the tree this batch leaves behind."""
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

        Raises :class:`StorageUnavailableError` if the commit fails, and
        :class:`RetryBatchError` if it should simply be run again; either way
        nothing of the batch is stored.
        """
        ...

    def close(self) -> None:
        """Release the storage."""
        ...
