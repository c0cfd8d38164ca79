"""The sequencer: the log's only writer, with group commit.

Append requests queue up. One thread takes everything queued (up to a batch
size), and in one LMDB write transaction stores each new leaf with the node
hashes it completes, its leaf-hash and idempotency index entries, and a newly
signed checkpoint of the resulting tree; it commits durably and only then
answers every request of the batch. A crash before the commit loses nothing
that was acknowledged; a crash after it loses nothing at all.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from sealog.client.checkpoint import Checkpoint, sign_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import NoteSigner
from sealog.server.config import Settings
from sealog.server.errors import ResourceExhaustedError, UnavailableError
from sealog.server.proofs import build_consistency_proof, build_inclusion_proof
from sealog.server.storage import (
    RetryBatchError,
    Storage,
    StorageUnavailableError,
    WriteBatch,
)

__all__ = ["AppendItem", "AppendOutcome", "AppendedLeaf", "Sequencer", "idempotency_digest"]

log = logging.getLogger(__name__)


def idempotency_digest(identity: str, key: str) -> bytes:
    """The 16-byte index key of an idempotency key; keys are scoped to the identity."""
    data = b"sealog idempotency v1\x00" + identity.encode() + b"\x00" + key.encode()
    return hashlib.sha256(data).digest()[:16]


@dataclass(frozen=True, slots=True)
class AppendItem:
    """One entry to append: the client's payload and optional idempotency key."""

    payload: bytes
    idempotency_key: str = ""


@dataclass(frozen=True, slots=True)
class AppendedLeaf:
    """Where an entry landed."""

    index: int
    leaf: bytes
    duplicate: bool
    inclusion_proof: tuple[bytes, ...] = ()
    """Only for duplicates: the proof of ``index`` in the outcome's checkpoint."""


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What one Append request receives once its batch is durable."""

    checkpoint: bytes
    size: int
    entries: tuple[AppendedLeaf, ...]
    start: int
    end: int
    left_frontier: tuple[bytes, ...]
    consistency_proof: tuple[bytes, ...]


@dataclass
class _Request:
    items: Sequence[AppendItem]
    identity: str
    future: Future[AppendOutcome] = field(default_factory=Future)
    # Filled in while the batch is written:
    entries: list[AppendedLeaf] = field(default_factory=list)
    start: int = -1
    end: int = -1
    frontier: tuple[bytes, ...] = ()


_STOP = object()


class Sequencer:
    """Owns the in-memory frontier of the tree and is the only code that writes storage."""

    def __init__(
        self,
        storage: Storage,
        signers: Sequence[NoteSigner],
        origin: str,
        tree: CompactRange,
        settings: Settings,
        *,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
        last_ms: int = 0,
        on_checkpoint: Callable[[bytes], None] = lambda note: None,
    ) -> None:
        self._storage = storage
        self._signers = tuple(signers)
        self._origin = origin
        self._tree = tree
        self._settings = settings
        self._clock_ms = clock_ms
        self._last_ms = last_ms
        self._on_checkpoint = on_checkpoint
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._queued_entries = 0
        self._lock = threading.Lock()
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="sealog-sequencer", daemon=True)

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def submit(self, items: Sequence[AppendItem], identity: str) -> Future[AppendOutcome]:
        """Queue one request's entries; they will be written together, in order.

        Raises :class:`ResourceExhaustedError` when the queue is full and
        :class:`UnavailableError` when the sequencer is stopping.
        """
        request = _Request(items, identity)
        with self._lock:
            if not self._accepting:
                raise UnavailableError(
                    "the log is shutting down; retry against the restarted log", 1.0
                )
            limit = self._settings.max_queued_entries
            if self._queued_entries + len(items) > limit:
                raise ResourceExhaustedError(
                    f"sequencer queue is full ({self._queued_entries} entries queued, "
                    f"limit {limit}); retry with backoff",
                    0.5,
                )
            self._queued_entries += len(items)
            self._queue.put(request)
        return request.future

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, write everything already queued, answer it, then stop."""
        with self._lock:
            if not self._accepting:
                return
            self._accepting = False
            self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    # --- the writer thread ----------------------------------------------
    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            assert isinstance(first, _Request)
            batch = [first]
            count = len(first.items)
            deadline = time.monotonic() + self._settings.batch_max_wait_ms / 1000
            while count < self._settings.batch_max_entries:
                try:
                    wait = deadline - time.monotonic()
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                assert isinstance(item, _Request)
                batch.append(item)
                count += len(item.items)
            with self._lock:
                self._queued_entries -= count
            self._commit(batch)

    def _commit(self, batch: list[_Request]) -> None:
        saved_tree, saved_ms = self._tree.copy(), self._last_ms
        while True:
            try:
                note = self._write(batch)
                break
            except RetryBatchError:
                self._restore(batch, saved_tree, saved_ms)
            except StorageUnavailableError as e:
                self._restore(batch, saved_tree, saved_ms)
                log.error("append batch of %d requests not stored: %s", len(batch), e)
                self._fail(batch, UnavailableError(str(e), 5.0))
                return
            except Exception as e:
                self._restore(batch, saved_tree, saved_ms)
                log.exception("append batch of %d requests failed", len(batch))
                self._fail(batch, e)
                return
        self._on_checkpoint(note)
        size = self._tree.size
        try:
            with self._storage.read() as snapshot:
                outcomes = []
                for r in batch:
                    consistency: list[bytes] = []
                    if r.start < r.end < size:
                        consistency = build_consistency_proof(snapshot, r.end, size)
                    entries = tuple(
                        AppendedLeaf(
                            e.index,
                            e.leaf,
                            True,
                            tuple(build_inclusion_proof(snapshot, e.index, size)),
                        )
                        if e.duplicate
                        else e
                        for e in r.entries
                    )
                    outcomes.append(
                        AppendOutcome(
                            note, size, entries, r.start, r.end, r.frontier, tuple(consistency)
                        )
                    )
        except Exception as e:  # the entries are durable; only the answer failed
            log.exception("building append receipts failed")
            self._fail(batch, e)
            return
        for r, outcome in zip(batch, outcomes, strict=True):
            r.future.set_result(outcome)

    def _restore(self, batch: list[_Request], tree: CompactRange, last_ms: int) -> None:
        self._tree = tree.copy()
        self._last_ms = last_ms
        for r in batch:
            r.entries.clear()
            r.start = r.end = -1
            r.frontier = ()

    @staticmethod
    def _fail(batch: list[_Request], error: BaseException) -> None:
        for r in batch:
            r.future.set_exception(error)

    def _write(self, batch: list[_Request]) -> bytes:
        tree = self._tree
        now = max(self._last_ms, self._clock_ms())
        with self._storage.write() as w:
            for r in batch:
                self._write_request(w, r, tree, now)
            checkpoint = Checkpoint(self._origin, tree.size, tree.root())
            note = sign_checkpoint(checkpoint, *self._signers)
            w.set_checkpoint(note)
        self._last_ms = now
        return note

    @staticmethod
    def _write_request(w: WriteBatch, r: _Request, tree: CompactRange, now: int) -> None:
        r.start = tree.size
        r.frontier = tree.hashes
        for item in r.items:
            digest = None
            if item.idempotency_key:
                digest = idempotency_digest(r.identity, item.idempotency_key)
                existing = w.find_idempotency(digest)
                if existing is not None:
                    r.entries.append(AppendedLeaf(existing, w.leaf(existing), True))
                    continue
            index = tree.size
            leaf = Leaf(now, r.identity, item.payload).to_bytes()
            w.append_leaf(index, leaf, tree.append(leaf_hash(leaf)))
            w.put_identity(r.identity, now, index)
            if digest is not None:
                w.put_idempotency(digest, index)
            r.entries.append(AppendedLeaf(index, leaf, False))
        r.end = tree.size
