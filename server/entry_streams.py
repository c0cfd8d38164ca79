"""Admission for GetEntries streams: how many may be open at once, in all and per client.

An entry stream holds server memory for as long as it is open (about one page;
docs/api.md, "Limits"), and reads are public by default, so the number of open
streams is what bounds that memory. :class:`EntryStreams` counts them on the
event loop; a stream over a cap is refused with RESOURCE_EXHAUSTED and a retry
delay, before it reads anything.
"""

from __future__ import annotations

from collections import Counter

from sealog.server.errors import LogError, ResourceExhaustedError

__all__ = ["EntryStreams", "StalledStreamError", "peer_address"]

RETRY_AFTER_S = 1.0
"""The retry delay a refused stream is told (google.rpc.RetryInfo)."""


class StalledStreamError(LogError):
    """A stream's reader took nothing for ``entry_stream_stall_s``; the server ended it."""


def peer_address(peer: str) -> str:
    """The client address of a gRPC peer string, without its port.

    ``ipv4:192.0.2.1:5000`` -> ``ipv4:192.0.2.1``, ``ipv6:[::1]:5000`` ->
    ``ipv6:[::1]``; anything else (``unix:...``) is kept whole.
    """
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


class EntryStreams:
    """At most ``total`` streams open, at most ``per_peer`` from one client address.

    Not thread-safe: use it from the event loop that runs the streams.
    """

    def __init__(self, total: int, per_peer: int) -> None:
        self.total = total
        self.per_peer = per_peer
        self._open: Counter[str] = Counter()
        self._count = 0

    @property
    def open(self) -> int:
        """Streams open now."""
        return self._count

    def enter(self, peer: str) -> None:
        """Count a new stream from ``peer`` or raise :class:`ResourceExhaustedError`."""
        if self._count >= self.total:
            raise ResourceExhaustedError(
                f"GetEntries: {self._count} streams open, the server's limit "
                f"(max_entry_streams {self.total}); retry shortly",
                RETRY_AFTER_S,
            )
        if self._open[peer] >= self.per_peer:
            raise ResourceExhaustedError(
                f"GetEntries: {self._open[peer]} streams open from {peer}, the limit per "
                f"client address (max_entry_streams_per_peer {self.per_peer}); read or "
                "cancel one first",
                RETRY_AFTER_S,
            )
        self._open[peer] += 1
        self._count += 1

    def leave(self, peer: str) -> None:
        """A stream :meth:`enter` admitted has ended."""
        self._count -= 1
        self._open[peer] -= 1
        if self._open[peer] <= 0:
            del self._open[peer]
