"""When a client call is tried again, and how long it waits first.

A log tells a client when to come back: an over-quota append, a full
sequencer queue, a log starting up or shutting down, or storage that cannot
take writes is answered RESOURCE_EXHAUSTED or UNAVAILABLE with a
``google.rpc.RetryInfo`` in the status details (docs/api.md, "Errors").
:class:`RetryPolicy` honours that delay, never waiting less than the log
asked, and is bounded: a limited number of attempts, a longest delay it is
willing to wait, and a total time budget. Every wait has jitter, so clients
refused together do not all come back in the same instant.

Retrying is only safe because every request is idempotent: reads are, and an
append is retried with the very same request, so its idempotency keys make a
retry that reaches an already-committed append a duplicate, never a second
copy (and a refused request committed nothing).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["RetryPolicy", "retry_delay"]

_ALWAYS = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,  # not reachable, starting, stopping, storage full
        grpc.StatusCode.DEADLINE_EXCEEDED,  # the answer did not arrive in time
        grpc.StatusCode.CANCELLED,  # a server that took the call but shut down before it ran
    }
)
"""Codes retried with or without a RetryInfo (backoff when the log gives no delay)."""


def retry_delay(error: BaseException) -> float | None:
    """The ``google.rpc.RetryInfo`` delay in an RPC error's status details, in seconds, if any."""
    if not isinstance(error, grpc.Call):
        return None
    try:
        status: Any = rpc_status.from_call(error)
    except Exception:  # details that do not parse are no advice
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info: Any = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, float(info.retry_delay.ToTimedelta().total_seconds()))
    return None


def _code_of(error: BaseException) -> grpc.StatusCode | None:
    code = getattr(error, "code", None) if isinstance(error, grpc.RpcError) else None
    value = code() if callable(code) else None
    return value if isinstance(value, grpc.StatusCode) else None


@dataclass(frozen=True)
class RetryPolicy:
    """Which failed calls are tried again, and the bounds on trying.

    Retried: UNAVAILABLE, DEADLINE_EXCEEDED and CANCELLED, and
    RESOURCE_EXHAUSTED only when the log sent a RetryInfo (without one it is
    a limit that waiting does not lift, such as an oversize entry). Nothing
    else is retried.

    The wait before attempt ``n + 1``: the log's RetryInfo delay plus up to
    ``jitter`` of it (never less than asked); without one, an exponential
    backoff ``min(max_backoff_s, initial_backoff_s * 2**(n-1))`` less up to
    ``jitter`` of it. A call is given up, and its error raised, after
    ``max_attempts`` attempts, when the log asks for a delay over
    ``max_delay_s``, or when the next wait would take the time spent waiting
    past ``max_total_s``.
    """

    max_attempts: int = 5
    """Attempts in all, the first one included; 1 means never retry."""
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    max_delay_s: float = 30.0
    """The longest RetryInfo delay waited for; a log asking for more gets its error raised."""
    max_total_s: float = 60.0
    """The most time spent waiting between the attempts of one call."""
    jitter: float = 0.2
    """The fraction of each wait that is random (0 to 1)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts: {self.max_attempts}, want >= 1")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"RetryPolicy.initial_backoff_s, max_backoff_s: {self.initial_backoff_s}, "
                f"{self.max_backoff_s}, want 0 < initial <= max"
            )
        if self.max_delay_s < 0 or self.max_total_s < 0:
            raise ValueError(
                f"RetryPolicy.max_delay_s, max_total_s: {self.max_delay_s}, {self.max_total_s}, "
                "want >= 0"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"RetryPolicy.jitter: {self.jitter}, want 0 to 1")

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that tries each call once."""
        return cls(max_attempts=1)

    def wait_before_retry(
        self, error: BaseException, attempt: int, waited_s: float, rng: random.Random | None = None
    ) -> float | None:
        """Seconds to wait before trying again after ``attempt`` failed with ``error``.

        ``attempt`` counts from 1; ``waited_s`` is the time already spent
        waiting for this call. ``None``: do not retry, raise ``error``.
        """
        if attempt >= self.max_attempts:
            return None
        code = _code_of(error)
        asked = retry_delay(error)
        if code not in _ALWAYS and not (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and asked is not None
        ):
            return None
        draw = (rng or random).random()
        if asked is not None:
            if asked > self.max_delay_s:
                return None
            wait = asked * (1 + self.jitter * draw)
        else:
            backoff = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (attempt - 1))
            wait = backoff * (1 - self.jitter * draw)
        if waited_s + wait > self.max_total_s:
            return None
        return wait
