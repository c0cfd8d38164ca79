"""Per-identity rate limits on appends: a token bucket for each identity."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sealog.server.errors import QuotaExceededError

__all__ = ["AppendQuota"]


class AppendQuota:
    """Token buckets keyed by identity: ``rate`` entries/s, up to ``burst`` at once."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, at)

    def take(self, identity: str, count: int, rate: float, burst: float | None = None) -> None:
        """Spend ``count`` tokens or raise :class:`QuotaExceededError` with a retry delay."""
        capacity = burst if burst is not None else max(2.0 * rate, 1.0)
        if count > capacity:
            raise QuotaExceededError(
                f"{count} entries in one request exceed the quota burst of {capacity:g} "
                f"for identity {identity!r}; send smaller requests"
            )
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(identity, (capacity, now))
            tokens = min(capacity, tokens + (now - at) * rate)
            if tokens < count:
                self._buckets[identity] = (tokens, now)
                wait = (count - tokens) / rate
                raise QuotaExceededError(
                    f"identity {identity!r} is over its quota of {rate:g} appends/s; "
                    f"retry in {wait:.2f} s",
                    wait,
                )
            self._buckets[identity] = (tokens - count, now)
