"""Server settings: limits on what a client may send, and the sequencer's batching."""

from __future__ import annotations

from dataclasses import dataclass

from sealog.client.leaf import LEAF_FIXED_BYTES, MAX_IDENTITY_BYTES
from sealog.client.tiles import MAX_BUNDLE_LEAF_BYTES

__all__ = ["MAX_ENTRY_BYTES", "Settings"]

MAX_ENTRY_BYTES = MAX_BUNDLE_LEAF_BYTES - LEAF_FIXED_BYTES - MAX_IDENTITY_BYTES
"""The largest payload any leaf may hold (64,496 bytes): with the longest identity, its
leaf is 65,535 bytes, the most a tlog-tiles entry bundle's uint16 length can say."""


@dataclass(frozen=True)
class Settings:
    """Every bound the server enforces; the defaults suit one machine."""

    max_entry_bytes: int = MAX_ENTRY_BYTES
    """Largest payload of one entry (RESOURCE_EXHAUSTED above); at most
    :data:`MAX_ENTRY_BYTES`, so every leaf fits an entry bundle."""
    max_request_entries: int = 1000
    """Most entries in one Append request (INVALID_ARGUMENT above)."""
    max_message_bytes: int = 80 * 1024 * 1024
    """Largest gRPC message the server receives or sends."""
    max_idempotency_key_bytes: int = 128
    """Longest idempotency key."""
    max_page_size: int = 1000
    """Most leaves in one GetEntries page."""
    default_page_size: int = 256
    """Leaves per GetEntries page when the request does not say."""
    max_entries_per_request_range: int = 1_000_000
    """Most leaves one GetEntries call may ask for."""
    batch_max_entries: int = 10_000
    """Most entries the sequencer writes in one durable commit (group commit)."""
    batch_max_wait_ms: float = 0.0
    """How long the sequencer waits for more requests once one is queued. 0 commits
    whatever is queued at once; appends that arrive during a commit form the next batch."""
    batch_linger_ms: float = 5.0
    """Once the last batch held more than one request (appends arrive concurrently),
    how long the sequencer may keep collecting the next batch while appends keep
    coming (it commits after 1 ms without one): fewer, larger commits under load.
    A lone caller never waits. 0 turns it off."""
    max_queued_entries: int = 200_000
    """Entries waiting for the sequencer before Append answers RESOURCE_EXHAUSTED."""
    index_flush_entries: int = 100_000
    """Leaves committed but not yet in the leaf-hash and idempotency indexes that start
    an index flush (docs/storage.md, "Deferred indexing")."""
    index_flush_idle_s: float = 1.0
    """With fewer waiting, a flush starts once no append has come for this long."""
    index_flush_chunk_entries: int = 10_000
    """Leaves per write transaction of a flush: each covers one range of index keys, so
    the pages it frees are few and reused by the next."""
    max_unindexed_entries: int = 500_000
    """At this many leaves not yet indexed, appends wait for the running flush to finish."""
    append_timeout_s: float = 30.0
    """How long an Append waits for its commit before answering UNAVAILABLE."""
    clock_tolerance_ms: float = 1000.0
    """How far the wall clock may be behind the last acceptance time and the log still
    appends (stamping the last time again); further behind, appends answer UNAVAILABLE
    until the clock catches up (docs/operations.md, "Clock")."""
    max_workers: int = 128
    """Threads for the RPCs that may take long (entry pages, searches, cosignatures,
    policy reloads); the others run on the gRPC server's event loop."""
    max_concurrent_streams: int = 256
    """Concurrent RPCs one client connection may have open."""
    max_page_bytes: int = 1024 * 1024
    """A GetEntries page ends at the leaf that brings its leaves to this many bytes (it
    holds at least one leaf), so an unread stream holds at most about one page."""
    max_entry_streams: int = 64
    """GetEntries streams open at once, from all clients (RESOURCE_EXHAUSTED beyond,
    with RetryInfo). With ``max_page_bytes`` this bounds the memory of entry streams."""
    max_entry_streams_per_peer: int = 8
    """GetEntries streams open at once from one client address."""
    entry_stream_stall_s: float = 60.0
    """A GetEntries stream whose reader takes no page for this long is ended
    (DEADLINE_EXCEEDED if the client ever reads again) and its page freed."""
    max_connections: int = 4096
    """TCP connections the server keeps open, authenticated or not; more are closed at
    once. Lowered at start to fit the process's file descriptor limit (docs/operations.md)."""
    handshake_timeout_s: float = 10.0
    """A connection that has not finished its TLS and HTTP/2 handshake by then is closed."""
    idle_connection_timeout_s: float = 300.0
    """A connection with no call open for this long is closed (clients reconnect)."""
    max_connection_age_s: float = 900.0
    """A connection this old is asked to go away (clients reconnect)..."""
    max_connection_age_grace_s: float = 60.0
    """...and closed this long after, calls and all: what finally frees a stream whose
    client keeps its connection alive but never reads."""
    keepalive_time_s: float = 60.0
    """The server pings a connection with calls open after this long without traffic..."""
    keepalive_timeout_s: float = 20.0
    """...and closes it if the ping is not answered in this long (a vanished peer)."""
    tiles_cache_bytes: int = 32 * 1024 * 1024
    """Memory for the full hash tiles the tlog-tiles listener served last (they never
    change): a hot tile is answered without reading storage (docs/tiles.md)."""
    tiles_max_connections: int = 1024
    """TCP connections the tlog-tiles listener keeps open; more are answered 503."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 0 or (value == 0 and name not in ("batch_max_wait_ms", "batch_linger_ms")):
                raise ValueError(f"Settings.{name}: {value}, want > 0")
        if self.max_entry_bytes > MAX_ENTRY_BYTES:
            raise ValueError(
                f"Settings.max_entry_bytes: {self.max_entry_bytes}, want <= {MAX_ENTRY_BYTES}: "
                f"a leaf (payload, identity of up to {MAX_IDENTITY_BYTES} bytes and "
                f"{LEAF_FIXED_BYTES} bytes of header) must fit the {MAX_BUNDLE_LEAF_BYTES} "
                "bytes a tlog-tiles entry bundle allows (docs/tiles.md)"
            )
        page = self.max_page_size * (self.max_entry_bytes + 64)
        if page > self.max_message_bytes:
            raise ValueError(
                f"Settings.max_message_bytes: {self.max_message_bytes}, want >= max_page_size "
                f"x (max_entry_bytes + 64) = {page}, or a GetEntries page may not fit"
            )
        if self.max_request_entries * (self.max_entry_bytes + 64) > self.max_message_bytes:
            raise ValueError(
                f"Settings.max_message_bytes: {self.max_message_bytes}, too small for "
                f"max_request_entries x max_entry_bytes"
            )
