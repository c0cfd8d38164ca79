"""The sequencer: the log's only writer, with group commit and deferred indexing.

Every write transaction on a log's storage is opened by one thread, the
sequencer's: the batches of appends, the index flushes, a new log's first
commit (:meth:`Sequencer.create`) and each update of the witness cosignatures
(:meth:`Sequencer.store_cosignatures`). Writes that are not appends are
*jobs*: queued like appends, each run between two batches (or two parts of an
index flush) in a small transaction of its own, so no two write transactions
are ever open at once and each sees every commit before it.

Append requests queue up. One thread takes everything queued (up to a batch
size), and in one LMDB write transaction stores each new leaf with the node
hashes it completes and its idempotency key digest, a record in the index by
identity for each run of leaves of one identity and time, and a newly signed
checkpoint of the resulting tree; it commits durably and only then answers
every request of the batch. A crash before the commit loses nothing that was
acknowledged; a crash after it loses nothing at all. Everything the batch
writes is appended at the end of its table (or of one identity's records), so
its cost does not grow with the tree.

The whole batch is stamped with one acceptance time, never earlier than the
last one. A wall clock behind the last stamp by up to ``clock_tolerance_ms``
is absorbed (the batch gets the last stamp again); further behind, the clock
cannot be trusted — either it jumped back or an earlier stamp came from a
clock that had jumped forward — and the log fails closed: appends answer
UNAVAILABLE, an ERROR is logged and the clock listeners (the health service)
are told, until the clock is within the tolerance again (docs/operations.md,
"Clock"). Consecutive leaves of one identity usually share a time: the index
by identity records only where such a run starts (the leaf before it has
another identity or time), and the sequencer remembers the identity and time
of the last leaf to know.

The leaf-hash and idempotency indexes, keyed by hashes and so written at
random places, are written by the same thread later, in large sorted
batches: the leaves not indexed yet are held in memory
(:class:`~sealog.server.index_tail.IndexTail`) and every lookup checks both.
A flush runs when enough leaves wait or appends pause, in several write
transactions, one per range of index keys, between which batches of appends
are still committed; its last transaction records ``indexed_upto``. After a
crash the log rebuilds the tail from the stored leaf hashes and the key digests
kept for leaves not indexed yet (docs/storage.md).

Two kinds of LMDB write transaction are opened elsewhere, and neither can race
with the sequencer. :class:`~sealog.server.lmdb_storage.LmdbStorage` opens its
tables on the opening thread, each in a write transaction of LMDB's own
(``open_db``), before the storage is handed to a log and so before any
sequencer exists: in a new environment they create the empty tables, in an
existing one they change nothing (read-only storage, as fsck opens it, uses
read transactions). A backup (:mod:`sealog.server.backup`) writes its copy, a
new environment in a folder of its own that no log serves, and reads the log
it copies in one read transaction of a read-only environment.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sealog.client.checkpoint import Checkpoint, sign_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.cosignature import CosignatureVerifier
from sealog.client.errors import LeafFormatError
from sealog.client.hashing import EMPTY_ROOT, leaf_hash
from sealog.client.leaf import MAX_PAYLOAD_BYTES, Leaf, leaf_bytes, leaf_header
from sealog.client.note import NoteSigner
from sealog.server.config import Settings
from sealog.server.cosignatures import (
    StoredCosignature,
    decode_cosignatures,
    encode_cosignatures,
    merge_cosignature,
    witnessed_note,
)
from sealog.server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    LogError,
    ResourceExhaustedError,
    UnavailableError,
)
from sealog.server.index_tail import IndexTail, TailSegment
from sealog.server.proofs import build_consistency_proof, build_inclusion_proof
from sealog.server.storage import (
    DIGEST_BYTES,
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    RetryBatchError,
    Storage,
    StorageCorruptError,
    StorageUnavailableError,
    WriteBatch,
    identity_prefix,
)

__all__ = [
    "AppendItem",
    "AppendOutcome",
    "AppendedLeaf",
    "BatchStats",
    "Sequencer",
    "idempotency_digest",
]

log = logging.getLogger(__name__)


def idempotency_digest(identity: str, key: str) -> bytes:
    """The index key of an idempotency key (DIGEST_BYTES); keys are scoped to the identity."""
    return _digest(_digest_base(identity), key)


def _digest_base(identity: str) -> bytes:
    return b"sealog idempotency v1\x00" + identity.encode() + b"\x00"


def _digest(base: bytes, key: str) -> bytes:
    return hashlib.sha256(base + key.encode()).digest()[:DIGEST_BYTES]


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


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one durable commit held, for the server's metrics."""

    requests: int
    """Append requests in the batch, refused ones included."""
    new_entries: int
    duplicate_entries: int
    """Entries answered with an earlier leaf (their idempotency key was seen before)."""
    refused_requests: int
    """Requests refused inside the batch (an idempotency key used for another event)."""
    seconds: float
    """From the start of the batch's write to its durable commit, fsync included."""


_LINGER_GAP_S = 0.001
"""A lingering sequencer commits once no append has arrived for this long."""


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
    error: LogError | None = None
    """Why this request alone is refused (nothing of it is written); the rest of its
    batch is committed and answered as usual."""


_NEW = -1
"""In a request's plan: the entry is a new leaf."""


_STOP = object()
_WAKE = object()
"""In the queue of appends: a job is waiting (in the queue of jobs)."""
_T = TypeVar("_T")


class _Job(Generic[_T]):
    """A write that is not an append, run on the writer thread between batches."""

    __slots__ = ("_body", "future")

    def __init__(self, body: Callable[[], _T]) -> None:
        self._body = body
        self.future: Future[_T] = Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled by its caller before it ran: nothing is written
        try:
            result = self._body()
        except Exception as e:  # the caller's to handle; the writer goes on
            self.future.set_exception(e)
        else:
            self.future.set_result(result)


_COSIGNATURE_ATTEMPTS = 8
"""How often an update of the cosignatures is run again while the map keeps growing."""
_CLOCK_RECHECK_S = 1.0
"""While the clock is behind, the sequencer looks at it this often to notice it caught up."""


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class _Flush:
    """An index flush in progress: the frozen leaves, split by key range, and how far it got."""

    segment: TailSegment
    end: int
    """One past the last leaf it indexes: ``indexed_upto`` once it is done."""
    leaf_hashes: list[list[tuple[bytes, int]]]
    """``(leaf hash, index)`` pairs, one list per transaction: each a range of hash values."""
    digests: list[list[tuple[bytes, int]]]
    done: int = 0
    retry_at: float = 0.0


def _split(pairs: Iterable[tuple[bytes, int]], parts: int) -> list[list[tuple[bytes, int]]]:
    """``pairs`` in ``parts`` lists by ranges of their first two bytes (hashes are uniform)."""
    out: list[list[tuple[bytes, int]]] = [[] for _ in range(parts)]
    for pair in pairs:
        h = pair[0]
        out[((h[0] << 8) | h[1]) * parts >> 16].append(pair)
    return out


_FLUSH_RETRY_S = 1.0
"""How long a failed index flush waits before it tries again."""
_MIN_CHUNKS = 16
_MIN_CHUNK_LEAVES = 500
"""A flush of at least 16 x 500 leaves takes at least 16 transactions: each rewrites at
most 1/16 of the index pages, so the pages the last ones free (which LMDB cannot reuse
at once) stay few."""
_IDLE_CHUNK_GAP_S = 0.05
"""With no append waiting, the next part of a flush waits this long: readers that still
hold older snapshots finish, and the pages the last part freed can be reused."""


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
        clock_ms: Callable[[], int] | None = None,
        last_ms: int = 0,
        last_leaf: tuple[str, int] | None = None,
        on_checkpoint: Callable[[bytes], None] = lambda note: None,
        tail: IndexTail | None = None,
    ) -> None:
        """``tail`` holds the leaves the hash-keyed indexes do not (default: none);
        ``last_leaf`` is the identity and acceptance time of the log's last leaf."""
        self._storage = storage
        self._signers = tuple(signers)
        self._origin = origin
        self._tree = tree
        self._settings = settings
        self._clock_ms = clock_ms or _system_ms
        self._last_ms = last_ms
        self._last_leaf = last_leaf
        """``(identity, accepted_at_ms)`` of the last leaf: a leaf that has both continues
        its run in the index by identity, any other starts a new one."""
        self._on_checkpoint = on_checkpoint
        self.index_tail = tail if tail is not None else IndexTail(tree.size)
        """The leaves not indexed yet; readers take its ``view`` (:mod:`.index_tail`)."""
        self._flush: _Flush | None = None
        self._last_append = time.monotonic()
        self._last_batch_requests = 0
        self._queue: queue.SimpleQueue[_Request | object] = queue.SimpleQueue()
        self._jobs: queue.SimpleQueue[_Job[Any]] = queue.SimpleQueue()
        self._queued_entries = 0
        self._lock = threading.Lock()
        self._accepting = True
        self._clock_fault: UnavailableError | None = None
        """Set while the clock is too far behind the last stamp: what appends are told."""
        self._clock_listeners: list[Callable[[str | None], None]] = []
        self._batch_listeners: list[Callable[[BatchStats], None]] = []
        self.signed_at = time.monotonic()
        """When the latest checkpoint was signed (``time.monotonic()``; at open: the open)."""
        self._thread = threading.Thread(target=self._run, name="sealog-sequencer", daemon=True)
        self._check_clock()

    def start(self) -> None:
        """Start the writer thread."""
        self._thread.start()

    def watch_clock(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener`` now and on every change of the clock's state: with the
        reason appends are refused while the clock cannot be trusted, else None.

        Listeners run on the sequencer's thread and must not block.
        """
        with self._lock:
            self._clock_listeners.append(listener)
            fault = self._clock_fault
        listener(None if fault is None else str(fault))

    def add_batch_listener(self, listener: Callable[[BatchStats], None]) -> None:
        """Call ``listener`` on the writer thread after each durable commit of a batch.

        It must return quickly; an exception it raises is logged and ignored.
        """
        self._batch_listeners.append(listener)

    @property
    def queued_entries(self) -> int:
        """Entries submitted and not yet taken into a batch."""
        return self._queued_entries

    @property
    def unindexed_entries(self) -> int:
        """Committed leaves the hash-keyed indexes do not hold yet (the index tail)."""
        return self._unindexed()

    def submit(self, items: Sequence[AppendItem], identity: str) -> Future[AppendOutcome]:
        """Queue one request's entries; they will be written together, in order.

        Raises :class:`ResourceExhaustedError` when the queue is full and
        :class:`UnavailableError` when the sequencer is stopping or its clock
        cannot be trusted.
        """
        request = _Request(items, identity)
        with self._lock:
            if not self._accepting:
                raise UnavailableError(
                    "the log is shutting down; retry against the restarted log", 1.0
                )
            if self._clock_fault is not None:
                raise self._clock_fault
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

    def create(self) -> Future[bytes]:
        """Write a new log's first commit: the storage format, the origin, and the
        checkpoint of the empty tree (RFC 6962 §2.1: its root is SHA-256 of nothing),
        signed by every signer, with ``indexed_upto`` 0, in one transaction.

        Precondition: the storage holds no checkpoint and no leaf, and this
        sequencer was given the empty tree. The future holds the signed
        checkpoint note once it is durable, or the storage's error
        (:class:`StorageUnavailableError`) if it could not be written.
        """
        if self._tree.size:
            raise ValueError(f"a new log's tree is empty, not of size {self._tree.size}")
        return self._submit_job(self._write_empty_tree)

    def store_cosignatures(
        self, new: Sequence[StoredCosignature], witnesses: Sequence[CosignatureVerifier]
    ) -> Future[bytes]:
        """Merge ``new`` into the stored witness cosignatures, each witness keeping its
        newest (:func:`~sealog.server.cosignatures.merge_cosignature`), in a
        transaction of its own.

        Precondition: every cosignature of ``new`` verified, by one of
        ``witnesses``, over a checkpoint this log signed of a tree it holds. The
        future holds the witnessed note (:func:`~sealog.server.cosignatures.witnessed_note`)
        once the merge is durable, or :class:`UnavailableError` if storage
        cannot take it. Raises :class:`UnavailableError` when the sequencer is
        stopping.
        """
        return self._submit_job(lambda: self._merge_cosignatures(new, witnesses))

    def _submit_job(self, body: Callable[[], _T]) -> Future[_T]:
        if threading.current_thread() is self._thread:  # e.g. from a checkpoint listener
            raise RuntimeError("the writer thread cannot wait for a job of its own")
        job = _Job(body)
        with self._lock:
            if not self._accepting:
                raise UnavailableError(
                    "the log is shutting down; retry against the restarted log", 1.0
                )
            self._jobs.put(job)
            self._queue.put(_WAKE)
        return job.future

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
            self._run_jobs()
            if self._backlogged():
                # Back-pressure: too many leaves wait for the indexes; appends queue up
                # (and are refused once the queue is full) until the flush is done.
                self._index_step(idle=False)
                if self._flush is not None and self._flush.retry_at > time.monotonic():
                    time.sleep(min(0.1, self._flush.retry_at - time.monotonic()))
                continue
            wait_s = self._wait_s()
            if self._clock_fault is not None:  # look at the clock again now and then
                wait_s = _CLOCK_RECHECK_S if wait_s is None else min(wait_s, _CLOCK_RECHECK_S)
            first = self._next(wait_s)
            if first is _STOP:
                break
            if first is _WAKE:
                continue  # its job runs first thing
            if first is not None:
                assert isinstance(first, _Request)
                stopping = self._take_batch(first)
            elif self._clock_fault is not None:
                self._check_clock()
            self._index_step(idle=first is None)
        self._run_jobs()  # every job accepted before the stop
        self._flush_everything()

    def _run_jobs(self) -> None:
        """Run every queued job, oldest first, each in its own transaction."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            job.run()

    def _backlogged(self) -> bool:
        return (
            self._flush is not None
            and self._unindexed() >= self._settings.max_unindexed_entries
            and self._accepting
        )

    def _next(self, wait_s: float | None) -> _Request | object | None:
        """The next queued item, waiting up to ``wait_s`` (None: for ever); None if none."""
        try:
            if wait_s is None:
                return self._queue.get()
            return self._queue.get(timeout=wait_s) if wait_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _wait_s(self) -> float | None:
        """How long to wait for appends before there is index work to do."""
        if self._flush is not None:
            return max(0.0, self._flush.retry_at - time.monotonic())
        waiting = self._unindexed()
        if waiting == 0:
            return None
        if waiting >= self._settings.index_flush_entries:
            return 0.0
        return max(0.0, self._last_append + self._settings.index_flush_idle_s - time.monotonic())

    def _take_batch(self, first: _Request) -> bool:
        """Commit ``first`` and whatever else is queued (up to a batch); True on _STOP."""
        stopping = False
        batch = [first]
        count = len(first.items)
        start = time.monotonic()
        deadline = start + self._settings.batch_max_wait_ms / 1000
        # Appends arriving concurrently (the last batch held several): linger while
        # they keep coming, so that one commit answers more of them.
        linger = self._last_batch_requests > 1
        linger_until = start + self._settings.batch_linger_ms / 1000
        while count < self._settings.batch_max_entries:
            now = time.monotonic()
            wait_s = deadline - now
            if linger:
                wait_s = max(wait_s, min(_LINGER_GAP_S, linger_until - now))
            item = self._next(wait_s)
            if item is None:
                break
            if item is _STOP:
                stopping = True
                break
            if item is _WAKE:
                continue  # its job runs once this batch is committed
            assert isinstance(item, _Request)
            batch.append(item)
            count += len(item.items)
        with self._lock:
            self._queued_entries -= count
        self._last_batch_requests = len(batch)
        self._commit(batch)
        self._last_append = time.monotonic()
        return stopping

    def _unindexed(self) -> int:
        return self._tree.size - self.index_tail.low

    # --- jobs -------------------------------------------------------------
    def _write_empty_tree(self) -> bytes:
        note = sign_checkpoint(Checkpoint(self._origin, 0, EMPTY_ROOT), *self._signers)
        while True:
            try:
                with self._storage.write() as w:
                    w.set_meta(META_FORMAT, FORMAT_VERSION)
                    w.set_meta(META_ORIGIN, self._origin.encode())
                    w.set_checkpoint(note, 0)
                    w.set_indexed_upto(0)
                return note
            except RetryBatchError:
                continue

    def _merge_cosignatures(
        self, new: Sequence[StoredCosignature], witnesses: Sequence[CosignatureVerifier]
    ) -> bytes:
        for _attempt in range(_COSIGNATURE_ATTEMPTS):
            try:
                with self._storage.write() as w:
                    stored = decode_cosignatures(w.cosignatures())
                    if any([merge_cosignature(stored, c) for c in new]):
                        w.set_cosignatures(encode_cosignatures(stored))
                    result = witnessed_note(stored, witnesses)
                assert result is not None
                return result
            except RetryBatchError:
                continue
            except StorageUnavailableError as e:
                raise UnavailableError(str(e), 5.0) from e
        raise UnavailableError("storage kept growing; retry", 1.0)

    # --- deferred indexing ---------------------------------------------
    def _index_step(self, idle: bool) -> None:
        """Start an index flush when it is due, or write the next part of the running one."""
        if self._flush is None:
            waiting = self._unindexed()
            settings = self._settings
            if not waiting or (
                waiting < settings.index_flush_entries
                and not (
                    idle and time.monotonic() - self._last_append >= settings.index_flush_idle_s
                )
            ):
                return
            self._start_flush()
        assert self._flush is not None
        if self._flush.retry_at <= time.monotonic():
            self._flush_chunk(self._flush)

    def _start_flush(self) -> None:
        end = self._tree.size
        segment = self.index_tail.freeze(end)
        waiting = end - segment.start
        chunks = max(
            -(-waiting // self._settings.index_flush_chunk_entries),
            min(_MIN_CHUNKS, -(-waiting // _MIN_CHUNK_LEAVES)),
            1,
        )
        chunks = min(chunks, 1 << 16)
        self._flush = _Flush(
            segment,
            end,
            _split(segment.leaf_hash_pairs(), chunks),
            _split(segment.by_digest.items(), chunks),
        )

    def _flush_chunk(self, flush: _Flush) -> bool:
        """Write the next transaction of ``flush``; False if it failed (it is retried later)."""
        leaf_hashes, digests = flush.leaf_hashes[flush.done], flush.digests[flush.done]
        last = flush.done + 1 == len(flush.leaf_hashes)
        try:
            while True:
                try:
                    with self._storage.write() as w:
                        w.index_leaves(leaf_hashes, digests)
                        if last:
                            w.set_indexed_upto(flush.end)
                    break
                except RetryBatchError:
                    continue
        except Exception as e:  # the leaves stay in the tail; nothing is lost
            flush.retry_at = time.monotonic() + _FLUSH_RETRY_S
            log.warning(
                "index flush of leaves [%d, %d) failed (retrying in %g s): %s",
                flush.segment.start,
                flush.end,
                _FLUSH_RETRY_S,
                e,
            )
            return False
        flush.done += 1
        if last:
            self.index_tail.flushed()
            self._flush = None
        elif self._queue.empty():
            flush.retry_at = time.monotonic() + _IDLE_CHUNK_GAP_S
        return True

    def _flush_everything(self) -> None:
        """At stop: index every committed leaf, so the next start has no tail to rebuild."""
        for _ in range(2):  # the running flush, then the leaves appended since
            if self._flush is None:
                if not self._unindexed():
                    return
                self._start_flush()
            while self._flush is not None:
                if not self._flush_chunk(self._flush):
                    log.warning(
                        "leaves from %d stay unindexed; the next start reads them again",
                        self.index_tail.low,
                    )
                    return

    # --- the clock --------------------------------------------------------
    def _check_clock(self) -> int | None:
        """The acceptance time for the next batch, or None (and the clock fault set)
        while the wall clock is more than the tolerance behind the last stamp."""
        clock = self._clock_ms()
        behind = self._last_ms - clock
        tolerance = self._settings.clock_tolerance_ms
        if behind > tolerance:
            if self._clock_fault is None:
                fault = UnavailableError(
                    f"the log's clock is {behind} ms behind the time of its last entry "
                    f"(tolerance {tolerance:g} ms): appends are refused until the clock "
                    "catches up, so no entry is stamped with an untrusted time; "
                    "operators: docs/operations.md, 'Clock'",
                    min(max(behind / 1000, 1.0), 60.0),
                )
                log.error(
                    "clock fault: the wall clock (%d ms) is %d ms behind the last acceptance "
                    "time (%d ms), more than the tolerance of %g ms; appends answer "
                    "UNAVAILABLE and health says NOT_SERVING until the clock catches up",
                    clock,
                    behind,
                    self._last_ms,
                    tolerance,
                )
                self._set_clock_fault(fault)
            return None
        if self._clock_fault is not None:
            log.warning(
                "clock fault over: the wall clock is within %g ms of the last acceptance "
                "time again; appends are accepted",
                tolerance,
            )
            self._set_clock_fault(None)
        return max(self._last_ms, clock)

    def _set_clock_fault(self, fault: UnavailableError | None) -> None:
        with self._lock:
            self._clock_fault = fault
            listeners = list(self._clock_listeners)
        for listener in listeners:
            try:
                listener(None if fault is None else str(fault))
            except Exception:
                log.exception("a clock listener failed")

    def _commit(self, batch: list[_Request]) -> None:
        now = self._check_clock()
        if now is None:
            assert self._clock_fault is not None
            self._fail(batch, self._clock_fault)
            return
        started = time.perf_counter()
        saved = self._tree.copy(), self._last_ms, self._last_leaf
        added: list[tuple[int, bytes, bytes | None]] = []
        while True:
            try:
                note = self._write(batch, added, now)
                break
            except RetryBatchError:
                self._restore(batch, saved, added)
            except StorageUnavailableError as e:
                self._restore(batch, saved, added)
                log.error("append batch of %d requests not stored: %s", len(batch), e)
                self._fail(batch, UnavailableError(str(e), 5.0))
                return
            except Exception as e:
                self._restore(batch, saved, added)
                log.exception("append batch of %d requests failed", len(batch))
                self._fail(batch, e)
                return
        self.signed_at = time.monotonic()
        committed_s = time.perf_counter() - started
        self._on_checkpoint(note)
        refused = [r for r in batch if r.error is not None]
        for r in refused:
            assert r.error is not None
            r.future.set_exception(r.error)
        if refused:
            batch = [r for r in batch if r.error is None]
        self._tell_batch(batch, refused, added, committed_s)  # durable, whatever follows
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

    def _tell_batch(
        self,
        committed: list[_Request],
        refused: list[_Request],
        added: list[tuple[int, bytes, bytes | None]],
        seconds: float,
    ) -> None:
        if not self._batch_listeners:
            return
        new = len(added)
        stats = BatchStats(
            len(committed) + len(refused),
            new,
            sum(len(r.entries) for r in committed) - new,
            len(refused),
            seconds,
        )
        for listener in self._batch_listeners:
            try:
                listener(stats)
            except Exception:  # a listener must never stop the writer
                log.exception("batch listener failed")

    def _restore(
        self,
        batch: list[_Request],
        saved: tuple[CompactRange, int, tuple[str, int] | None],
        added: list[tuple[int, bytes, bytes | None]],
    ) -> None:
        tree, self._last_ms, self._last_leaf = saved
        self._tree = tree.copy()
        segment = self.index_tail.active
        for index, leaf_hash_, digest in reversed(added):
            segment.discard(index, leaf_hash_, digest)
        added.clear()
        for r in batch:
            r.entries.clear()
            r.start = r.end = -1
            r.frontier = ()
            r.error = None

    @staticmethod
    def _fail(batch: list[_Request], error: BaseException) -> None:
        for r in batch:
            r.future.set_exception(error)

    def _write(
        self, batch: list[_Request], added: list[tuple[int, bytes, bytes | None]], now: int
    ) -> bytes:
        tree = self._tree
        with self._storage.write() as w:
            for r in batch:
                self._write_request(w, r, tree, now, added)
            checkpoint = Checkpoint(self._origin, tree.size, tree.root())
            note = sign_checkpoint(checkpoint, *self._signers)
            w.set_checkpoint(note, tree.size)
        self._last_ms = now
        return note

    def _write_request(
        self,
        w: WriteBatch,
        r: _Request,
        tree: CompactRange,
        now: int,
        added: list[tuple[int, bytes, bytes | None]],
    ) -> None:
        """Write one request's leaves, or, if the request itself is at fault, nothing.

        Everything that can go wrong with one request (a leaf that cannot be
        encoded, an idempotency key used before for another event) is decided
        by :meth:`_plan` before anything of it is written: such a request gets
        its own error and the batch goes on without it. What still fails here
        is storage, which fails the batch.
        """
        try:
            head, plan = self._plan(w, r, now)
        except LogError as e:
            r.error = e
            return
        r.start = tree.size
        r.frontier = tree.hashes
        # Each leaf goes into the tail before its batch commits: a reader whose
        # snapshot holds the leaf then always finds it (sealog.server.index_tail).
        segment = self.index_tail.active
        prefix = identity_prefix(r.identity)
        entries = r.entries
        run = (r.identity, now)
        for item, (digest, existing, stored) in zip(r.items, plan, strict=True):
            if existing != _NEW:
                if existing < 0:  # a repeat of an earlier entry of this request
                    first = entries[-2 - existing]
                    entries.append(AppendedLeaf(first.index, first.leaf, True))
                else:
                    entries.append(AppendedLeaf(existing, stored, True))
                continue
            index = tree.size
            payload = item.payload
            leaf = leaf_bytes(head, payload)
            hashed = leaf_hash(leaf)
            w.append_leaf(index, leaf, tree.append(hashed), digest)
            if self._last_leaf != run:
                w.index_identity(prefix, now, index)
                self._last_leaf = run
            segment.add(index, hashed, digest)
            added.append((index, hashed, digest))
            entries.append(AppendedLeaf(index, leaf, False))
        r.end = tree.size

    def _plan(
        self, w: WriteBatch, r: _Request, now: int
    ) -> tuple[bytes, list[tuple[bytes | None, int, bytes]]]:
        """Check one request without writing anything; raise the error it alone deserves.

        Returns the leaf header (version, time, identity: the same for the whole
        request; each leaf is that, then the payload's length and the payload,
        docs/leaf-format.md) and, per entry, its key digest, what it is —
        :data:`_NEW`, the index of the stored leaf it repeats, or ``-2 - j`` when
        it repeats entry ``j`` of this request — and the stored leaf it repeats.
        """
        try:
            head = leaf_header(now, r.identity)
        except (LeafFormatError, UnicodeError) as e:
            raise InvalidArgumentError(
                f"the caller's identity ({len(r.identity)} characters) cannot be stamped "
                f"into a leaf: {e}"
            ) from None
        segments = self.index_tail.view[1]
        base = _digest_base(r.identity)
        seen: dict[bytes, int] = {}
        plan: list[tuple[bytes | None, int, bytes]] = []
        for i, item in enumerate(r.items):
            payload = item.payload
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise ResourceExhaustedError(
                    f"AppendRequest.entries[{i}].payload: {len(payload)} bytes, "
                    f"want <= {MAX_PAYLOAD_BYTES} (the leaf format's limit)"
                )
            if not item.idempotency_key:
                plan.append((None, _NEW, b""))
                continue
            digest = _digest(base, item.idempotency_key)
            earlier = seen.get(digest)
            if earlier is not None:
                if r.items[earlier].payload != payload:
                    raise _key_conflict(i, item.idempotency_key, f"by entries[{earlier}]")
                plan.append((digest, -2 - earlier, b""))
                continue
            seen[digest] = i
            existing = None
            for seg in segments:
                existing = seg.by_digest.get(digest)
                if existing is not None:
                    break
            else:
                existing = w.find_idempotency(digest)
            if existing is None:
                plan.append((digest, _NEW, b""))
                continue
            leaf = w.leaf(existing)
            try:
                stored_payload = Leaf.parse(leaf).payload
            except LeafFormatError as e:
                raise StorageCorruptError(f"entries[{existing}]: {e}") from e
            if stored_payload != payload:
                raise _key_conflict(i, item.idempotency_key, f"at index {existing}")
            plan.append((digest, existing, leaf))
        return head, plan


def _key_conflict(i: int, key: str, where: str) -> AlreadyExistsError:
    return AlreadyExistsError(
        f"AppendRequest.entries[{i}].idempotency_key {key!r}: this identity already "
        f"used it for another event ({where}); only a retry of the same payload may "
        "reuse a key, a new event needs a new key. Nothing of this request was appended."
    )
