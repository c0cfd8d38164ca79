"""The event shipper: audit events go to the log in the background, in order, never twice.

A service hands events to :meth:`EventShipper.submit`, which only queues them
(one lock, one deque append) and returns. One sender thread takes them in
batches and appends them with :meth:`LogClient.append_batch
<sealog.client.log_client.LogClient.append_batch>`. Every event gets its
idempotency key when it is submitted, so however often a batch is retried or
replayed — after an outage, after a crash — the log holds it once.

The buffer is bounded. What happens when it is full is the caller's explicit
choice, :class:`OverflowPolicy`:

- ``block``: :meth:`~EventShipper.submit` waits for room (up to ``block_timeout_s``,
  then the event is dropped and counted);
- ``drop``: the event is dropped and counted, with a rate-limited warning;
- ``spool``: the event is appended to a local spool file (fsynced) and replayed
  in order with its key once the log is reachable again, also by the next
  process that opens the same spool. Order is global: once spooling starts,
  every later event goes to the spool until it has drained.

While the log cannot be reached (UNAVAILABLE, deadlines, RESOURCE_EXHAUSTED with
RetryInfo, ...) the sender retries with exponential backoff. An error that
retrying cannot fix (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without RetryInfo —
an oversize event —, PERMISSION_DENIED, UNAUTHENTICATED, ...) does not wedge the
queue: a refused batch is split in halves until the refused event is alone,
which is then counted in ``failed_permanently``, logged, and handed to
``on_error``. docs/capture.md has the full table.
"""

from __future__ import annotations

import atexit
import enum
import logging
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import grpc

from sealog.client.capture.spool import PendingEvent, Spool, SpoolError
from sealog.client.errors import SealogError
from sealog.client.event import AuditEvent
from sealog.client.log_client import LogClient
from sealog.client.retry import retry_delay

__all__ = [
    "EventShipper",
    "FailedEvent",
    "OverflowPolicy",
    "ShipperStats",
    "SpoolError",
]

log = logging.getLogger(__name__)

LOGGER_NAME = __name__
"""The shipper's own logger, which :class:`~.handler.SealogHandler` never ships."""


class OverflowPolicy(enum.StrEnum):
    """What :meth:`EventShipper.submit` does when the in-memory buffer is full."""

    BLOCK = "block"
    DROP = "drop"
    SPOOL = "spool"


@dataclass(frozen=True)
class ShipperStats:
    """Counters since the shipper was created (``spool_pending`` includes earlier processes)."""

    submitted: int
    """Events accepted (into the buffer or the spool)."""
    sent: int
    """Events the log confirmed (a verified answer), duplicates included."""
    duplicates: int
    """Of ``sent``, events the log already held: a replay after a crash or a lost answer."""
    dropped: int
    """Events given up on: buffer full (``drop``, ``block`` timeout), spool full or
    unwritable, submitted after close, or still buffered when ``close`` timed out."""
    spooled: int
    """Events written to the spool file."""
    failed_permanently: int
    """Events the log refused for good (see ``on_error``)."""
    buffered: int
    """Events in memory now."""
    spool_pending: int
    """Events in the spool not yet confirmed by the log."""


@dataclass(frozen=True)
class FailedEvent:
    """An event the log refused with an error that retrying cannot fix."""

    payload: bytes
    idempotency_key: str
    code: grpc.StatusCode | None
    """The gRPC status, or None when the failure was not an RPC error."""
    message: str


class _Throttled:
    """A logger call that speaks at most once per ``interval_s`` and counts what it skipped."""

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._next = 0.0
        self._skipped = 0
        self._lock = threading.Lock()

    def log(self, level: int, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._skipped += 1
                return
            skipped, self._skipped = self._skipped, 0
            self._next = now + self._interval_s
        if skipped:
            msg += " (%d similar messages suppressed)"
            args = (*args, skipped)
        log.log(level, msg, *args)


# --- error classification -----------------------------------------------------------
_TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DATA_LOSS,
    }
)
_SPLIT_CODES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ALREADY_EXISTS,  # one event's key already names another event
    }
)
"""Permanent errors that one event of a batch (or the batch's size) can cause."""


def _status_code(error: BaseException) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    if isinstance(error, grpc.RpcError) and callable(code):
        value = code()
        if isinstance(value, grpc.StatusCode):
            return value
    return None


_UNVERIFIED_ATTEMPTS = 3
"""Tries of an append whose answer did not verify before its events count as failed."""


def _is_transient(error: BaseException, attempt: int) -> tuple[bool, float | None]:
    """Whether retrying the same append may succeed, and the server's suggested delay.

    ``attempt``: how many times this append has failed before.
    """
    code = _status_code(error)
    if code is None:
        # The log answered something that does not verify (or the client is
        # broken). A garbled answer may not repeat, so retry a little (the keys
        # make that safe); one that does repeat must not wedge the queue.
        return isinstance(error, SealogError) and attempt + 1 < _UNVERIFIED_ATTEMPTS, None
    if code in _TRANSIENT_CODES:
        return True, retry_delay(error)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        delay = retry_delay(error)  # a quota or a full queue says when to come back
        return delay is not None, delay
    return False, None


def _describe(error: BaseException) -> str:
    code = _status_code(error)
    if code is None:
        return f"{type(error).__name__}: {error}"
    details = getattr(error, "details", None)
    text = details() if callable(details) else ""
    return f"{code.name}: {text}"


class _AbortedError(Exception):
    """close() gave up waiting: stop sending at once."""


@dataclass
class _Outcome:
    sent: int = 0
    duplicates: int = 0
    failed: list[FailedEvent] = field(default_factory=list)


# --- the shipper --------------------------------------------------------------------
class EventShipper:
    """Ships events to a sealog log from a background thread; see the module docstring.

    ``policy`` (required) says what :meth:`submit` does when ``max_buffered``
    events are waiting in memory. ``spool_path`` is required for (and only
    for) ``spool``; with ``max_buffered=0`` every event goes through the spool
    (crash-safe, one fsync per event). A batch is sent when it has
    ``batch_entries`` events or its oldest is ``batch_delay_s`` old. The
    client is not closed by the shipper: close the shipper first.

    ``on_error`` is called, on the sender thread, with each event the log
    refused for good; it must be quick and its exceptions are logged and
    ignored. ``close_at_exit`` registers :meth:`close` with ``atexit``
    (waiting ``exit_timeout_s``).
    """

    def __init__(
        self,
        client: LogClient,
        *,
        policy: OverflowPolicy | str,
        max_buffered: int = 10_000,
        batch_entries: int = 256,
        batch_delay_s: float = 0.2,
        block_timeout_s: float | None = None,
        spool_path: str | Path | None = None,
        spool_max_bytes: int | None = None,
        retry_initial_s: float = 0.2,
        retry_max_s: float = 30.0,
        on_error: Callable[[FailedEvent], None] | None = None,
        close_at_exit: bool = True,
        exit_timeout_s: float = 5.0,
        warn_interval_s: float = 30.0,
    ) -> None:
        try:
            self.policy = OverflowPolicy(policy)
        except ValueError:
            raise ValueError(
                f"policy: {policy!r}, want one of {', '.join(p.value for p in OverflowPolicy)}"
            ) from None
        spooling = self.policy is OverflowPolicy.SPOOL
        if max_buffered < (0 if spooling else 1):
            raise ValueError(
                f"max_buffered: {max_buffered}, want >= {0 if spooling else 1}"
                + ("" if spooling else " (0 only with policy spool)")
            )
        if batch_entries < 1:
            raise ValueError(f"batch_entries: {batch_entries}, want >= 1")
        if batch_delay_s < 0:
            raise ValueError(f"batch_delay_s: {batch_delay_s}, want >= 0")
        if block_timeout_s is not None and block_timeout_s < 0:
            raise ValueError(f"block_timeout_s: {block_timeout_s}, want >= 0 or None")
        if not 0 < retry_initial_s <= retry_max_s:
            raise ValueError(
                f"retry_initial_s, retry_max_s: {retry_initial_s}, {retry_max_s}, "
                "want 0 < initial <= max"
            )
        if spooling != (spool_path is not None):
            raise ValueError(
                "spool_path: required with policy spool"
                if spooling
                else f"spool_path: {spool_path}, want None (only policy spool uses a spool)"
            )
        self._client = client
        self._max_buffered = max_buffered
        self._batch_entries = batch_entries
        self._batch_delay_s = batch_delay_s
        self._block_timeout_s = block_timeout_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._on_error = on_error
        self._exit_timeout_s = exit_timeout_s

        self._spool = Spool(Path(spool_path), spool_max_bytes) if spool_path is not None else None
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the sender waits here
        self._space = threading.Condition(self._lock)  # blocked submitters wait here
        self._progress = threading.Condition(self._lock)  # flush() waits here
        self._buffer: deque[PendingEvent] = deque()
        self._spooling = self._spool is not None and self._spool.pending > 0
        self._accepted = self._spool.pending if self._spool is not None else 0
        self._resolved = 0
        self._flush_target = 0
        self._closing = False
        self._finished = False
        self._closed_clean = False
        self._abort = threading.Event()
        self._submitted = self._sent = self._duplicates = 0
        self._dropped = self._spooled = self._failed = 0
        self._drop_warning = _Throttled(warn_interval_s)
        self._retry_warning = _Throttled(warn_interval_s)
        self._failure_log = _Throttled(min(warn_interval_s, 5.0))
        if self._spooling:
            log.info("spool %s: %d events to replay", spool_path, self._accepted)

        self._thread = threading.Thread(target=self._run, name="sealog-shipper", daemon=True)
        self._thread.start()
        self._at_exit_registered = close_at_exit
        if close_at_exit:
            atexit.register(self._close_at_exit)

    # --- the request path -----------------------------------------------------------
    def submit(
        self,
        event: AuditEvent | bytes,
        *,
        idempotency_key: str | None = None,
        block: bool = True,
    ) -> bool:
        """Queue one event (an :class:`AuditEvent` or raw payload bytes); never raises on overflow.

        Returns True when the event was accepted (buffered or spooled), False
        when it was dropped (and counted). Only the ``block`` policy waits,
        and only while the buffer is full; ``block=False`` makes it drop
        instead (for callers that must never wait). ``idempotency_key``: 1-128
        printable ASCII characters, default a random one.
        """
        payload = event.to_payload() if isinstance(event, AuditEvent) else bytes(event)
        key = idempotency_key if idempotency_key else secrets.token_urlsafe(24)
        if not (0 < len(key) <= 128 and key.isascii() and key.isprintable()):
            raise ValueError(f"idempotency_key: {key[:40]!r}, want 1-128 printable ASCII")
        item = PendingEvent(payload, key, time.monotonic())
        problem: str | None = None
        with self._lock:
            if self._closing:
                problem = "the shipper is closed"
            elif not self._spooling and len(self._buffer) < self._max_buffered:
                self._enqueue_locked(item)
                return True
            elif self.policy is OverflowPolicy.SPOOL:
                problem = self._spool_locked(item)
                if problem is None:
                    return True
            elif self.policy is OverflowPolicy.BLOCK and block and not self.is_shipper_thread():
                if self._wait_for_space_locked():
                    self._enqueue_locked(item)
                    return True
                problem = (
                    "the shipper is closed"
                    if self._closing
                    else f"buffer full for {self._block_timeout_s} s (policy block)"
                )
            else:
                problem = f"buffer full ({self._max_buffered} events; policy {self.policy})"
            self._dropped += 1
            dropped = self._dropped
        self._drop_warning.log(
            logging.WARNING,
            "sealog: dropped an audit event: %s; %d dropped so far",
            problem,
            dropped,
        )
        return False

    def _enqueue_locked(self, item: PendingEvent) -> None:
        self._buffer.append(item)
        self._accepted += 1
        self._submitted += 1
        n = len(self._buffer)
        if n in (1, self._batch_entries):
            self._work.notify()

    def _spool_locked(self, item: PendingEvent) -> str | None:
        """Append to the spool; the reason when that failed."""
        assert self._spool is not None
        try:
            written = self._spool.append(item)
        except OSError as e:
            return f"spool {self._spool.path} not writable ({e})"
        if not written:
            return f"spool {self._spool.path} full (spool_max_bytes {self._spool.max_bytes})"
        self._spooling = True
        if self._spool.pending == 1 and self._max_buffered > 0:
            log.warning(
                "sealog: buffer full (%d events); spooling to %s until the log catches up",
                self._max_buffered,
                self._spool.path,
            )
        self._accepted += 1
        self._submitted += 1
        self._spooled += 1
        if self._spool.pending == 1:
            self._work.notify()
        return None

    def _wait_for_space_locked(self) -> bool:
        deadline = (
            None if self._block_timeout_s is None else time.monotonic() + self._block_timeout_s
        )
        while len(self._buffer) >= self._max_buffered and not self._closing:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._space.wait(remaining)
        return not self._closing

    def is_shipper_thread(self) -> bool:
        """Whether the calling thread is this shipper's sender thread."""
        return threading.get_ident() == self._thread.ident

    # --- waiting ------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Send everything submitted so far now; wait until the log confirmed or refused it.

        Returns False if ``timeout`` passed first (e.g. the log is unreachable).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._accepted
            self._flush_target = max(self._flush_target, target)
            self._work.notify()
            while self._resolved < target and not self._finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._progress.wait(remaining)
            return self._resolved >= target

    def close(self, timeout: float | None = 10.0) -> bool:
        """Stop taking events, send what is left, stop the sender.

        Returns True when every accepted event was confirmed (or refused for
        good) by the log. If ``timeout`` passes first, the sender is stopped
        where it is: with ``spool`` the buffered events are written to the
        spool (ahead of what is already there) for the next process to replay;
        otherwise they are counted as dropped and logged. Idempotent.
        """
        if self.is_shipper_thread():
            raise RuntimeError("close() from the shipper's own thread (an on_error callback?)")
        with self._lock:
            first = not self._closing
            self._closing = True
            self._work.notify_all()
            self._space.notify_all()
        if not first:
            self._thread.join(timeout)
            with self._lock:
                return self._closed_clean
        if self._at_exit_registered:
            atexit.unregister(self._close_at_exit)
            self._at_exit_registered = False
        self._thread.join(timeout)
        drained = not self._thread.is_alive()
        self._abort.set()
        with self._lock:
            self._finished = True
            leftover = list(self._buffer)
            self._buffer.clear()
            if self._spool is not None:
                self._close_spool_locked(leftover)
            elif leftover:
                self._dropped += len(leftover)
                log.error(
                    "sealog: closed before the log confirmed %d audit events; they are lost "
                    "(policy spool keeps them)",
                    len(leftover),
                )
            self._closed_clean = drained and not leftover
            self._progress.notify_all()
            return self._closed_clean

    def _close_spool_locked(self, leftover: list[PendingEvent]) -> None:
        assert self._spool is not None
        if leftover:
            try:
                self._spool.prepend(leftover)
                self._spooled += len(leftover)
            except OSError as e:
                log.error(
                    "sealog: %d audit events could not be written to the spool %s at close "
                    "and are lost: %s",
                    len(leftover),
                    self._spool.path,
                    e,
                )
                self._dropped += len(leftover)
        pending = self._spool.pending
        self._spool.close()
        if pending:
            log.warning(
                "sealog: closed with %d events in the spool %s; they are replayed when a "
                "shipper opens it again",
                pending,
                self._spool.path,
            )

    def _close_at_exit(self) -> None:
        self._at_exit_registered = False
        self.close(self._exit_timeout_s)

    def __enter__(self) -> EventShipper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> ShipperStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            return ShipperStats(
                submitted=self._submitted,
                sent=self._sent,
                duplicates=self._duplicates,
                dropped=self._dropped,
                spooled=self._spooled,
                failed_permanently=self._failed,
                buffered=len(self._buffer),
                spool_pending=self._spool.pending if self._spool is not None else 0,
            )

    # --- the sender thread ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                with self._lock:
                    taken = self._next_batch_locked()
                if taken is None:
                    return
                batch, spool_end = taken
                outcome = self._ship(batch)
                self._apply(batch, spool_end, outcome)
            except _AbortedError:
                return
            except Exception:
                # A bug or an unreadable spool: say so, and keep the events for a retry.
                log.exception("sealog: the shipper's sender failed; retrying")
                if self._abort.wait(self._retry_max_s):
                    return

    def _next_batch_locked(self) -> tuple[list[PendingEvent], int | None] | None:
        """Wait for the next batch: buffered events first (they are older), then the spool.

        Returns (events, spool offset after them or None for buffered events),
        or None when the sender should stop.
        """
        while not self._abort.is_set():
            if self._buffer:
                urgent = (
                    self._closing
                    or self._spooling  # nothing more joins the buffer
                    or len(self._buffer) >= self._batch_entries
                    or self._resolved < self._flush_target
                )
                wait = self._buffer[0].queued_at + self._batch_delay_s - time.monotonic()
                if urgent or wait <= 0:
                    return list(islice(self._buffer, self._batch_entries)), None
                self._work.wait(wait)
            elif self._spool is not None and self._spool.pending:
                return self._spool.read(self._batch_entries)
            elif self._closing:
                return None
            else:
                self._work.wait()
        return None

    def _ship(self, batch: list[PendingEvent]) -> _Outcome:
        """Append ``batch`` in order; split a refused batch to isolate the refused events."""
        outcome = _Outcome()
        todo: deque[list[PendingEvent]] = deque([batch])
        while todo:
            part = todo.popleft()
            error = self._append(part, outcome)
            if error is None:
                continue
            code = _status_code(error)
            if len(part) > 1 and code in _SPLIT_CODES:
                mid = len(part) // 2
                todo.extendleft([part[mid:], part[:mid]])
                continue
            for item in part:
                outcome.failed.append(FailedEvent(item.payload, item.key, code, _describe(error)))
        return outcome

    def _append(self, part: list[PendingEvent], outcome: _Outcome) -> BaseException | None:
        """Append with retries; None on success, else the permanent error."""
        attempt = 0
        while True:
            if self._abort.is_set():
                raise _AbortedError
            try:
                result = self._client.append_batch(
                    [item.payload for item in part],
                    idempotency_keys=[item.key for item in part],
                )
            except Exception as e:
                transient, hint = _is_transient(e, attempt)
                if not transient:
                    return e
                attempt += 1
                delay = min(self._retry_max_s, self._retry_initial_s * 2 ** (attempt - 1))
                delay *= random.uniform(0.5, 1.0)
                if hint is not None:
                    delay = max(delay, min(hint, self._retry_max_s))
                with self._lock:
                    waiting = len(self._buffer) + (self._spool.pending if self._spool else 0)
                self._retry_warning.log(
                    logging.WARNING if _status_code(e) is not None else logging.ERROR,
                    "sealog: append failed (%s); %d events waiting, retrying in %.1f s",
                    _describe(e),
                    waiting,
                    delay,
                )
                if self._abort.wait(delay):
                    raise _AbortedError from None
                continue
            if attempt:
                log.info("sealog: the log is reachable again after %d failed attempts", attempt)
            outcome.sent += len(part)
            outcome.duplicates += sum(result.duplicates)
            return None

    def _apply(self, batch: list[PendingEvent], spool_end: int | None, outcome: _Outcome) -> None:
        with self._lock:
            if self._finished:  # close() gave up on us; it has accounted for everything
                return
            if spool_end is None:
                for _ in batch:
                    self._buffer.popleft()
            else:
                assert self._spool is not None
                try:
                    self._spool.confirm(spool_end, len(batch))
                except OSError as e:
                    # Harmless for the log (a replay is deduplicated by the keys).
                    log.error("spool %s: cannot record progress: %s", self._spool.path, e)
                if self._spool.pending == 0 and self._spooling:
                    self._spooling = False
                    log.info("sealog: spool %s drained", self._spool.path)
            self._sent += outcome.sent
            self._duplicates += outcome.duplicates
            self._failed += len(outcome.failed)
            self._space.notify_all()
        for failure in outcome.failed:
            self._failure_log.log(
                logging.ERROR,
                "sealog: the log refused an audit event for good (%s); key %s",
                failure.message,
                failure.idempotency_key,
            )
            if self._on_error is not None:
                try:
                    self._on_error(failure)
                except Exception:
                    log.exception("sealog: on_error callback failed")
        with self._lock:  # flush() returns once on_error has seen the refusals
            self._resolved += len(batch)
            self._progress.notify_all()
