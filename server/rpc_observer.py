"""What each RPC did, taken off the call's path: the metrics and the access log, in bulk.

An RPC only appends one tuple to a queue (:meth:`RpcObserver.record`, a few
microseconds); a thread of the observer's own wakes every
:data:`FLUSH_INTERVAL_S`, measures the messages, counts the RPCs into the
metrics once per method and code, and writes their access lines in one write.
So neither a metric's lock nor a slow log reader is ever on an RPC's path.

The queue is bounded (:data:`MAX_PENDING`): if the log output cannot keep up
(a stalled stderr pipe), RPCs go on and their lines are dropped, counted in
``sealog_access_log_dropped_lines_total`` and said once per flush in the log.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sealog.server.access_log import AccessLog
from sealog.server.metrics import ServerMetrics

__all__ = ["FLUSH_INTERVAL_S", "MAX_PENDING", "RpcObserver", "RpcRecord"]

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 0.2
"""How often buffered RPCs reach the metrics and the access log."""

MAX_PENDING = 100_000
"""RPCs buffered at most between two flushes; beyond it their records are dropped."""


@dataclass(frozen=True, slots=True)
class RpcRecord:
    """One finished RPC, as the metrics and the access log see it."""

    time: float
    """When it started (Unix time)."""
    kind: str
    """``unary`` or ``server_stream`` (grpc_type)."""
    method: str
    code: str
    """The status code's name: ``OK``, ``INVALID_ARGUMENT``, ..."""
    seconds: float
    peer: str
    identity: str
    """The authenticated identity, "" when none."""
    auth: str
    """How it authenticated: ``api_key``, ``mtls`` or ``anonymous``."""
    request_bytes: int
    response_bytes: int
    rejection: str
    """Why it was refused before its handler ran, if it was: ``unauthenticated``,
    ``permission_denied``, ``quota``; else ""."""


_Pending = tuple[float, float, str, str, str, Any, str, str, str, Any, Any]
"""What :meth:`RpcObserver.record` queues: (wall time, seconds, kind, method, code, peer,
identity, auth, rejection, request, response); the messages are measured on the flusher."""


def _size(message: Any) -> int:
    if message is None:
        return 0
    if isinstance(message, int):
        return message
    return int(message.ByteSize())


class RpcObserver:
    """Buffers finished RPCs and hands them to ``metrics`` and ``access_log`` (either may be
    None) from a thread of its own; :meth:`start` it, :meth:`stop` it to flush the rest."""

    def __init__(
        self,
        metrics: ServerMetrics | None,
        access_log: AccessLog | None,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._metrics = metrics
        self._access_log = access_log
        self._interval_s = interval_s
        self._max_pending = max_pending
        self._clock = clock
        self._pending: collections.deque[_Pending] = collections.deque()
        self._dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sealog-observer", daemon=True)

    def record(
        self,
        started: float,
        kind: str,
        method: str,
        code: str,
        peer: str,
        identity: str,
        auth: str,
        rejection: str,
        request: Any,
        response: Any,
    ) -> None:
        """One RPC has ended; ``started`` is its ``time.perf_counter()`` at the start.

        ``request`` and ``response`` are the messages (measured later, on the
        flusher's thread), a byte count, or None.
        """
        seconds = time.perf_counter() - started
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            return
        self._pending.append(
            (
                self._clock() - seconds,
                seconds,
                kind,
                method,
                code,
                peer,
                identity,
                auth,
                rejection,
                request,
                response,
            )
        )

    def start(self) -> RpcObserver:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Flush what is buffered and stop the thread (calls after this are not written)."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.flush()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval_s):
            try:
                self.flush()
            except Exception:  # the observer must outlive a bad record or a full disk
                log.exception("recording RPCs failed")

    def flush(self) -> None:
        """Hand every buffered RPC to the metrics and the access log now."""
        pending = self._pending
        count = len(pending)
        if count == 0 and not self._dropped:
            return
        records = [_record(pending.popleft()) for _ in range(count)]
        dropped, self._dropped = self._dropped, 0
        if self._metrics is not None:
            self._metrics.observe_rpcs(records)
            if dropped:
                self._metrics.access_log_dropped.inc(dropped)
        if self._access_log is not None:
            self._access_log.write(records)
            if dropped:
                log.warning("%d access log lines dropped: the log output did not keep up", dropped)


def _record(p: _Pending) -> RpcRecord:
    when, seconds, kind, method, code, peer, identity, auth, rejection, request, response = p
    return RpcRecord(
        when,
        kind,
        method,
        code,
        seconds,
        str(peer),
        identity,
        auth,
        _size(request),
        _size(response),
        rejection,
    )
