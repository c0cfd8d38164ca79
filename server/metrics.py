"""The server's metrics, in the Prometheus exposition format, on a listener of their own.

Everything is registered on one :class:`~prometheus_client.CollectorRegistry` per
server, never on prometheus-client's global one, so two servers in one process (the
tests) keep apart. Three kinds of figures:

- counted where they happen, once per batch: entries appended (new or duplicate),
  batch sizes, the commit and fsync latency (:meth:`ServerMetrics.observe_batch`,
  :meth:`ServerMetrics.observe_fsync`, called on the sequencer's thread);
- counted per RPC, in bulk: :mod:`sealog.server.rpc_observer` hands over what it
  buffered (:meth:`ServerMetrics.observe_rpcs`), so an RPC itself never takes a
  metric's lock;
- read when scraped: tree size, checkpoint age, index-tail depth, LMDB map use,
  witness pushes and cosignature age (:class:`_LogCollector`).

No label carries an identity, a key or a payload: labels are RPC method names,
status codes, outcomes and the witness names the operator configured.
docs/operations.md ("Metrics") lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sealog.client.checkpoint import Checkpoint
from sealog.client.note import parse_note
from sealog.server.sequencer import BatchStats

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from sealog.server.lmdb_storage import LmdbStorage
    from sealog.server.log import Log
    from sealog.server.rpc_observer import RpcRecord
    from sealog.server.witness_push import WitnessPusher

__all__ = ["MetricsListener", "ServerMetrics", "split_address"]

log = logging.getLogger(__name__)

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds, from 100 us (a proof on the loop) to 10 s (an append near its timeout)."""

_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000)
"""Entries per durable commit, up to above the largest batch_max_entries one would set."""

SERVICE = "sealog.v1.LogService"


class ServerMetrics:
    """The metrics of one log server, and where the scrape-time figures come from."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.entries = Counter(
            "sealog_append_entries",
            "Entries in committed appends, by outcome: new (a new leaf) or duplicate "
            "(an idempotency key seen before, answered with the existing leaf)",
            ["outcome"],
            registry=r,
        )
        self.refused_requests = Counter(
            "sealog_append_refused_requests",
            "Append requests refused inside a batch (an idempotency key already used for "
            "another event), their entries not written",
            registry=r,
        )
        self.batch_entries = Histogram(
            "sealog_batch_entries",
            "Entries per durable commit (group commit)",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "sealog_batch_requests",
            "Append requests per durable commit",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "sealog_commit_seconds",
            "Time to write, sign and durably commit one batch, fsync included",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "sealog_fsync_seconds",
            "Time of one LMDB write transaction's commit (its writes and fsyncs)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by method and status code",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to its answer (for a stream, to its end)",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "sealog_rpc_received_bytes",
            "Bytes of request messages, by method",
            ["grpc_method"],
            registry=r,
        )
        self.sent_bytes = Counter(
            "sealog_rpc_sent_bytes",
            "Bytes of response messages, by method",
            ["grpc_method"],
            registry=r,
        )
        self.auth_rejections = Counter(
            "sealog_auth_rejections",
            "Calls refused by authentication or authorization, by reason "
            "(unauthenticated: no or a bad credential; permission_denied: no such role)",
            ["reason"],
            registry=r,
        )
        self.quota_rejections = Counter(
            "sealog_quota_rejections",
            "Appends refused because the caller's identity ran over its append quota",
            registry=r,
        )
        self.access_log_dropped = Counter(
            "sealog_access_log_dropped_lines",
            "Access log lines dropped because the log output could not keep up",
            registry=r,
        )
        self.tile_requests = Counter(
            "sealog_tile_requests",
            "Requests to the tlog-tiles listener, by resource (checkpoint, tile/<L>, "
            "tile/entries, other) and HTTP status",
            ["resource", "code"],
            registry=r,
        )
        self.tile_sent_bytes = Counter(
            "sealog_tile_sent_bytes",
            "Bytes of tlog-tiles response bodies (before any compression), by resource",
            ["resource"],
            registry=r,
        )
        self.started = Gauge(
            "sealog_start_time_seconds",
            "When this server started (Unix time)",
            registry=r,
        )
        self.started.set(time.time())
        self._collector: _LogCollector | None = None

    # --- counted where it happens ------------------------------------------
    def observe_batch(self, batch: BatchStats) -> None:
        """One committed batch (on the sequencer's thread)."""
        self.entries.labels("new").inc(batch.new_entries)
        if batch.duplicate_entries:
            self.entries.labels("duplicate").inc(batch.duplicate_entries)
        if batch.refused_requests:
            self.refused_requests.inc(batch.refused_requests)
        self.batch_entries.observe(batch.new_entries + batch.duplicate_entries)
        self.batch_requests.observe(batch.requests)
        self.commit_seconds.observe(batch.seconds)

    def observe_fsync(self, seconds: float) -> None:
        """One LMDB write transaction committed in ``seconds``."""
        self.fsync_seconds.observe(seconds)

    def observe_rpcs(self, records: Sequence[RpcRecord]) -> None:
        """Count RPCs the observer buffered: one update per method and code, not per call."""
        handled: Tally[tuple[str, str, str]] = Tally()
        received: Tally[str] = Tally()
        sent: Tally[str] = Tally()
        tiles: Tally[tuple[str, str]] = Tally()
        tile_bytes: Tally[str] = Tally()
        for r in records:
            if r.kind == "http":  # the tlog-tiles listener (sealog.server.tile_http)
                tiles[(r.method, r.code)] += 1
                tile_bytes[r.method] += r.response_bytes
                if r.rejection:
                    self.auth_rejections.labels(r.rejection).inc()
                continue
            handled[(r.kind, r.method, r.code)] += 1
            received[r.method] += r.request_bytes
            sent[r.method] += r.response_bytes
            self.handling_seconds.labels(r.kind, SERVICE, r.method).observe(r.seconds)
            if r.rejection == "quota":
                self.quota_rejections.inc()
            elif r.rejection:
                self.auth_rejections.labels(r.rejection).inc()
        for (kind, method, code), count in handled.items():
            self.handled.labels(kind, SERVICE, method, code).inc(count)
        for method, count in received.items():
            self.received_bytes.labels(method).inc(count)
        for method, count in sent.items():
            self.sent_bytes.labels(method).inc(count)
        for (resource, code), count in tiles.items():
            self.tile_requests.labels(resource, code).inc(count)
        for resource, count in tile_bytes.items():
            self.tile_sent_bytes.labels(resource).inc(count)

    # --- read when scraped -------------------------------------------------
    def watch(self, the_log: Log, storage: LmdbStorage) -> None:
        """Report ``the_log``'s state at each scrape, and count its batches from now on."""
        self._collector = _LogCollector(the_log, storage)
        self.registry.register(self._collector)
        the_log.add_batch_listener(self.observe_batch)
        storage.commit_listener = self.observe_fsync

    def watch_pusher(self, pusher: WitnessPusher) -> None:
        """Report ``pusher``'s outcomes too (after :meth:`watch`)."""
        assert self._collector is not None
        self._collector.pusher = pusher


class _LogCollector(Collector):
    """The figures read from the log when Prometheus scrapes, never kept up to date."""

    def __init__(self, the_log: Log, storage: LmdbStorage) -> None:
        self._log = the_log
        self._storage = storage
        self.pusher: WitnessPusher | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # the families depend on the log's state: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        for part in (self._tree, self._storage_use, self._witnesses):
            try:
                yield from part()
            except Exception:  # a scrape must show what it can, never fail the endpoint
                log.exception("metrics: reading %s failed", part.__name__.strip("_"))

    def _tree(self) -> Iterator[Metric]:
        note = self._log.latest_checkpoint()
        size = Checkpoint.parse(parse_note(note)[0]).size
        yield GaugeMetricFamily(
            "sealog_tree_size", "Leaves in the tree of the latest signed checkpoint", size
        )
        signed = self._log.checkpoint_signed_at()
        yield GaugeMetricFamily(
            "sealog_checkpoint_age_seconds",
            "Seconds since this server last signed a checkpoint (each commit signs one; "
            "a log with no appends signs none)",
            max(0.0, time.monotonic() - signed),
        )
        yield GaugeMetricFamily(
            "sealog_index_tail_entries",
            "Committed leaves not yet in the hash-keyed indexes (the in-memory index tail)",
            self._log.unindexed_entries(),
        )
        yield GaugeMetricFamily(
            "sealog_queued_entries",
            "Entries waiting for the sequencer (RESOURCE_EXHAUSTED at max_queued_entries)",
            self._log.queued_entries(),
        )

    def _storage_use(self) -> Iterator[Metric]:
        use = self._storage.map_use()
        yield GaugeMetricFamily(
            "sealog_lmdb_used_bytes", "Bytes of the LMDB map in use (its pages)", use.used_bytes
        )
        yield GaugeMetricFamily(
            "sealog_lmdb_map_bytes",
            "The LMDB map's current size; it doubles when full, up to the maximum",
            use.map_bytes,
        )
        yield GaugeMetricFamily(
            "sealog_lmdb_max_map_bytes",
            "The largest the LMDB map may grow to (appends fail UNAVAILABLE beyond it)",
            use.max_map_bytes,
        )

    def _witnesses(self) -> Iterator[Metric]:
        ages = GaugeMetricFamily(
            "sealog_witness_cosignature_age_seconds",
            "Seconds since the newest cosignature each accepted witness made for this log "
            "(by the cosignature's own timestamp)",
            labels=["witness"],
        )
        now = time.time()
        for name, timestamp in sorted(self._log.cosignature_times().items()):
            ages.add_metric([name], max(0.0, now - timestamp))
        yield ages
        pusher = self.pusher
        if pusher is None:
            return
        pushes = CounterMetricFamily(
            "sealog_witness_pushes",
            "Checkpoints pushed to each --push-witness URL, by outcome (ok: cosigned and "
            "stored; refused: the witness said no; unreachable; not_stored: its cosignature "
            "was not kept; error: a fault of the pusher's own)",
            labels=["witness", "outcome"],
        )
        last_ok = GaugeMetricFamily(
            "sealog_witness_push_last_success_seconds",
            "Seconds since the last push each --push-witness URL cosigned (absent: never)",
            labels=["witness"],
        )
        monotonic = time.monotonic()
        for url, stats in pusher.push_stats().items():
            for outcome, count in sorted(stats.outcomes.items()):
                pushes.add_metric([url, outcome], count)
            if stats.last_success is not None:
                last_ok.add_metric([url], max(0.0, monotonic - stats.last_success))
        yield pushes
        yield last_ok


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as a host and port; ValueError if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"listen address {address!r}: want HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if number > 65535:
        raise ValueError(f"listen address {address!r}: port {number}, want 0..65535")
    return host, number


@dataclass
class MetricsListener:
    """The HTTP listener serving ``/metrics`` (prometheus-client's, on its own thread)."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @classmethod
    def start(cls, address: str, metrics: ServerMetrics) -> MetricsListener:
        """Serve ``metrics`` on ``address``; OSError if it cannot listen there."""
        host, port = split_address(address)
        server, thread = start_http_server(port, host, registry=metrics.registry)
        return cls(int(server.server_port), server, thread)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
