"""Admission for GetEntries streams: how many may be open at once, in all and per client.

An entry stream holds server memory for as long as it is open (about one page;
docs/api.md, "Limits"), and reads are public by default, so the number of open
streams is what bounds that memory. :class:`EntryStreams` counts them on the
event loop; a stream over a cap is refused with RESOURCE_EXHAUSTED and a retry
delay, before it reads anything.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from urllib.parse import unquote

from sealog.server.errors import LogError, ResourceExhaustedError

__all__ = ["EntryStreams", "StalledStreamError", "peer_address"]

RETRY_AFTER_S = 1.0
"""The retry delay a refused stream is told (google.rpc.RetryInfo)."""


class StalledStreamError(LogError):
    """A stream's reader took nothing for ``entry_stream_stall_s``; the server ended it."""


def peer_address(peer: str) -> str:
    """The client address a gRPC peer string counts under, without its port.

    ``ipv4:192.0.2.1:5000`` -> ``ipv4:192.0.2.1``. An IPv6 peer counts under
    its /64, the block one host or site is usually given, so that one client
    cannot take a fresh address per stream: ``ipv6:[2001:db8::1]:5000`` ->
    ``ipv6:2001:db8::/64`` (an IPv4-mapped address counts as its IPv4 one).
    Anything else (``unix:...``) is kept whole.
    """
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6") or ":" not in rest:
        return peer
    host = rest.rpartition(":")[0]
    if kind == "ipv4":
        return f"ipv4:{host}"
    host = unquote(host).strip("[]").partition("%")[0]  # brackets, maybe escaped; no zone
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return f"ipv6:{host}"
    if address.ipv4_mapped is not None:
        return f"ipv4:{address.ipv4_mapped}"
    return f"ipv6:{ipaddress.IPv6Network((address, 64), strict=False)}"


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
