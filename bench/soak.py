"""Soak test: a steady mixed load on a ``sealog serve`` process, with memory watched.

Run from the repository root::

    python -m bench.soak --duration 600              # 10 minutes, a row per minute
    python -m bench.soak --duration 10 --interval 2  # a smoke run

The server runs in its own process on a fresh data folder. Worker threads in
this process hold a steady, paced load through the verifying
:class:`~sealog.client.log_client.LogClient`:

- appenders: single appends and batches of 10 (``--append-rate`` entries/s);
- provers: inclusion proofs of random entries of the latest checkpoint
  (``--proof-rate`` proofs/s, each verified);
- monitors: checkpoint polls with a consistency proof from the previous
  checkpoint, and consistency proofs from a random older checkpoint
  (``--poll-rate`` of each per second, each verified).

Every request has a deadline and every loop ends at the deadline of the run.
Each interval prints throughput and p99 latency (client-side, verification
included) per kind, the tree size, and the server's resident memory from
``/proc/PID/status``: VmRSS, and its anonymous part (heap: what a leak grows)
and file part (LMDB pages mapped in, which grow with the log and are
reclaimable page cache). Memory counts as flat when the anonymous RSS at the
end is within 10% + 8 MiB of the anonymous RSS after the first interval
(warm-up). Exit status 1 if any request failed.

Two structures of the server grow by design, within bounds, and must not be
mistaken for a leak: the index tail holds up to ``index_flush_entries`` leaves
not yet indexed (about 250 bytes each; docs/storage.md, "Deferred indexing"),
and the proof path keeps the hashes of the upper tree in memory (one for every
8 leaves or fewer, at most 2^18). Under a steady load the tail only empties
when it is full, so with the server's default of 100,000 leaves it alone would
add ~25 MiB in the first minutes; the soak runs the server with
``--index-flush-entries 5000`` (``--index-flush-entries`` changes it).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.serve_process import SealogServe, rss_kib
from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.log_client import LogClient
from sealog.server.config import Settings

__all__ = ["main"]

KINDS = ("append", "inclusion", "poll", "consistency")
_UNIT = {"append": "entries", "inclusion": "proofs", "poll": "polls", "consistency": "proofs"}
FLAT_RATIO = 0.10
FLAT_SLACK_KIB = 8 * 1024
REQUEST_TIMEOUT_S = 10.0
PRELOAD = 1000
SOAK_INDEX_FLUSH_ENTRIES = 5000
"""The server's index tail during a soak (see the module docstring)."""


def progress(message: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


@dataclass
class Meter:
    """Counts and latencies per kind, swapped out at each interval."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    units: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    first_errors: list[str] = field(default_factory=list)

    def ok(self, kind: str, units: int, seconds: float) -> None:
        with self.lock:
            self.units[kind] += units
            self.latencies[kind].append(seconds)

    def error(self, kind: str, e: BaseException) -> None:
        with self.lock:
            self.errors[kind] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(f"{kind}: {type(e).__name__}: {e}")

    def swap(self) -> Meter:
        with self.lock:
            old = Meter(
                units=self.units,
                latencies=self.latencies,
                errors=self.errors,
                first_errors=self.first_errors,
            )
            self.units = dict.fromkeys(KINDS, 0)
            self.latencies = {k: [] for k in KINDS}
            self.errors = dict.fromkeys(KINDS, 0)
            self.first_errors = []
        return old


@dataclass
class Shared:
    """The newest checkpoint, and a few older ones for consistency proofs."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    latest: SignedCheckpoint | None = None
    older: list[SignedCheckpoint] = field(default_factory=list)

    def publish(self, cp: SignedCheckpoint) -> None:
        with self.lock:
            if self.latest is None or cp.checkpoint.size > self.latest.checkpoint.size:
                if self.latest is not None and len(self.older) < 1000:
                    self.older.append(self.latest)
                self.latest = cp


def _paced(
    rate_per_worker: float,
    end: float,
    stop: threading.Event,
    body: Callable[[], None],
) -> None:
    """Call ``body`` ``rate_per_worker`` times a second (closed loop when 0) until ``end``."""
    interval = 1.0 / rate_per_worker if rate_per_worker > 0 else 0.0
    due = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        if now >= end:
            return
        if interval:
            if due > now:
                stop.wait(min(due - now, end - now))
                continue
            due = max(due + interval, now - 1.0)  # never a burst of more than a second
        body()


def _timed(meter: Meter, kind: str, call: Callable[[], int]) -> None:
    started = time.perf_counter()
    try:
        units = call()
    except Exception as e:  # counted and reported; the run goes on
        meter.error(kind, e)
        return
    meter.ok(kind, units, time.perf_counter() - started)


def _appender(
    client: LogClient, meter: Meter, shared: Shared, rate: float, end: float, stop: threading.Event
) -> None:
    rng = random.Random()
    counter = 0

    def one() -> int:
        nonlocal counter
        counter += 1
        if rng.random() < 0.5:
            receipt = client.append(f"soak single {counter} {rng.random()}".encode())
            shared.publish(receipt.checkpoint)
            return 1
        result = client.append_batch(
            [f"soak batch {counter} entry {i} {rng.random()}".encode() for i in range(10)]
        )
        shared.publish(result.checkpoint)
        return 10

    # A request appends 5.5 entries on average.
    _paced(rate / 5.5, end, stop, lambda: _timed(meter, "append", one))


def _prover(
    client: LogClient, meter: Meter, shared: Shared, rate: float, end: float, stop: threading.Event
) -> None:
    rng = random.Random()

    def one() -> int:
        with shared.lock:
            cp = shared.latest
        assert cp is not None
        client.inclusion_proof(rng.randrange(cp.checkpoint.size), cp)
        return 1

    _paced(rate, end, stop, lambda: _timed(meter, "inclusion", one))


def _monitor(
    client: LogClient, meter: Meter, shared: Shared, rate: float, end: float, stop: threading.Event
) -> None:
    rng = random.Random()
    trusted: list[SignedCheckpoint | None] = [None]

    def poll() -> int:
        cp = client.checkpoint(trusted=trusted[0])
        trusted[0] = cp
        shared.publish(cp)
        return 1

    def consistency() -> int:
        with shared.lock:
            old = rng.choice(shared.older) if shared.older else None
            new = shared.latest
        assert new is not None
        if old is not None and old.checkpoint.size < new.checkpoint.size:
            client.consistency_proof(old, new)
        return 1

    def both() -> None:
        _timed(meter, "poll", poll)
        _timed(meter, "consistency", consistency)

    _paced(rate, end, stop, both)


@dataclass
class Row:
    t: float
    rates: dict[str, float]
    p99_ms: dict[str, float]
    errors: int
    size: int
    rss: dict[str, int]


_GROUPS = ("appended", "inclusion proofs", "checkpoint polls", "consist. proofs")


def _row_text(row: Row) -> str:
    cells = [f"{row.t:6.0f} |"]
    for kind in KINDS:
        cells.append(f"{row.rates[kind]:9.1f} {row.p99_ms[kind]:7.1f} |")
    cells.append(f"{row.errors:6d} {row.size:10,d} |")
    cells.append(
        f"{row.rss.get('VmRSS', 0) / 1024:7.1f} {row.rss.get('RssAnon', 0) / 1024:7.1f} "
        f"{row.rss.get('RssFile', 0) / 1024:7.1f}"
    )
    return " ".join(cells)


def _header() -> str:
    top = f"{'':6} | " + " | ".join(f"{g:^17}" for g in _GROUPS)
    top += f" | {'':17} | {'server RSS, MiB':^23}"
    units = ("entries/s", "/s", "/s", "/s")
    under = f"{'t (s)':>6} | " + " | ".join(f"{u:>9} {'p99 ms':>7}" for u in units)
    under += f" | {'errors':>6} {'tree size':>10} | {'VmRSS':>7} {'anon':>7} {'file':>7}"
    return top + "\n" + under


def run(args: argparse.Namespace, data_dir: Path) -> int:
    meter = Meter()
    shared = Shared()
    stop = threading.Event()
    rows: list[Row] = []
    totals: dict[str, list[float]] = {k: [] for k in KINDS}
    total_units = dict.fromkeys(KINDS, 0)
    total_errors = 0
    first_errors: list[str] = []
    with SealogServe(data_dir, "--index-flush-entries", str(args.index_flush_entries)) as server:
        server.wait_ready()
        rss_start = rss_kib(server.pid)
        clients = [
            LogClient(server.target, server.vkey, timeout=REQUEST_TIMEOUT_S) for _ in range(3)
        ]
        try:
            seed = clients[0].append_batch([f"preload {i}".encode() for i in range(PRELOAD)])
            shared.publish(seed.checkpoint)
            end = time.monotonic() + args.duration
            workers: list[threading.Thread] = []
            specs: list[tuple[Callable[..., None], int, float, int]] = [
                (_appender, args.appenders, args.append_rate, 0),
                (_prover, args.provers, args.proof_rate, 1),
                (_monitor, args.monitors, args.poll_rate, 2),
            ]
            for target, count, rate, client_no in specs:
                for _ in range(count):
                    workers.append(
                        threading.Thread(
                            target=target,
                            args=(clients[client_no], meter, shared, rate / count, end, stop),
                            daemon=True,
                        )
                    )
            started = time.monotonic()
            for w in workers:
                w.start()
            print(
                f"soak: {args.duration:.0f} s, rows every {args.interval:.0f} s; target rates: "
                f"{args.append_rate:g} entries/s appended ({args.appenders} threads), "
                f"{args.proof_rate:g} inclusion proofs/s ({args.provers}), "
                f"{args.poll_rate:g} polls/s + as many consistency proofs/s ({args.monitors})",
                flush=True,
            )
            print(_header(), flush=True)
            last = started
            while True:
                now = time.monotonic()
                wait = min(last + args.interval, end) - now
                if wait > 0:
                    time.sleep(wait)
                now = time.monotonic()
                snap = meter.swap()
                elapsed = max(now - last, 1e-9)
                last = now
                with shared.lock:
                    size = shared.latest.checkpoint.size if shared.latest else 0
                row = Row(
                    now - started,
                    {k: snap.units[k] / elapsed for k in KINDS},
                    {k: p99(snap.latencies[k]) * 1000 for k in KINDS},
                    sum(snap.errors.values()),
                    size,
                    rss_kib(server.pid),
                )
                rows.append(row)
                print(_row_text(row), flush=True)
                for k in KINDS:
                    totals[k].extend(snap.latencies[k])
                    total_units[k] += snap.units[k]
                total_errors += row.errors
                first_errors.extend(snap.first_errors[: 10 - len(first_errors)])
                if now >= end:
                    break
            stop.set()
            for w in workers:
                w.join(REQUEST_TIMEOUT_S * 3)
            hung = sum(w.is_alive() for w in workers)
        finally:
            stop.set()
            for client in clients:
                client.close()
        rss_end = rss_kib(server.pid)
        rc = server.terminate()
    run_s = rows[-1].t if rows else 0.0
    print()
    print(f"totals over {run_s:.0f} s:")
    for k in KINDS:
        rate = total_units[k] / max(run_s, 1e-9)
        worst = max(totals[k], default=0) * 1000
        print(
            f"  {k:<12} {total_units[k]:>10,} {_UNIT[k]:<8} {rate:9.1f}/s"
            f"   p99 {p99(totals[k]) * 1000:7.1f} ms   max {worst:7.1f} ms"
        )
    print(f"  request errors: {total_errors}; worker threads still running at the end: {hung}")
    for e in first_errors:
        print(f"  ERROR {e}")
    print(f"  server exit status after SIGTERM: {rc}")
    warm = rows[0].rss if rows else rss_start
    peak = max((r.rss.get("RssAnon", 0) for r in rows), default=0)
    print(
        "server memory (MiB): "
        f"VmRSS {rss_start.get('VmRSS', 0) / 1024:.1f} at start, "
        f"{warm.get('VmRSS', 0) / 1024:.1f} after warm-up, "
        f"{rss_end.get('VmRSS', 0) / 1024:.1f} at the end; "
        f"anonymous {warm.get('RssAnon', 0) / 1024:.1f} after warm-up, "
        f"{rss_end.get('RssAnon', 0) / 1024:.1f} at the end (peak {peak / 1024:.1f}); "
        f"file-backed (LMDB pages) {rss_end.get('RssFile', 0) / 1024:.1f} at the end"
    )
    for part, decisive in (("RssAnon", True), ("VmRSS", False)):
        before, after = warm.get(part, 0), rss_end.get(part, 0)
        limit = before * (1 + FLAT_RATIO) + FLAT_SLACK_KIB
        verdict = "flat" if after <= limit else "GREW"
        what = "anonymous (heap)" if part == "RssAnon" else "VmRSS (incl. mapped LMDB pages)"
        print(
            f"memory verdict, {what}: {verdict} ({after / 1024:.1f} MiB at the end, limit "
            f"{limit / 1024:.1f} MiB = after warm-up + {FLAT_RATIO:.0%} + "
            f"{FLAT_SLACK_KIB // 1024} MiB){'' if decisive else ' (informative)'}"
        )
    return 1 if total_errors or hung or rc != 0 else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Hold a steady mixed load on a sealog server; report throughput, p99 "
        "latency and server memory over time.",
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per report row")
    parser.add_argument("--append-rate", type=float, default=500.0, help="entries/s (0: max)")
    parser.add_argument("--proof-rate", type=float, default=300.0, help="proofs/s (0: max)")
    parser.add_argument("--poll-rate", type=float, default=10.0, help="polls/s (0: max)")
    parser.add_argument("--appenders", type=int, default=4)
    parser.add_argument("--provers", type=int, default=2)
    parser.add_argument("--monitors", type=int, default=1)
    parser.add_argument(
        "--index-flush-entries",
        type=int,
        default=SOAK_INDEX_FLUSH_ENTRIES,
        help="the server's index tail: leaves held in memory before an index flush "
        f"(default {SOAK_INDEX_FLUSH_ENTRIES}; the server's own default is "
        f"{Settings().index_flush_entries})",
    )
    parser.add_argument("--data-dir", type=Path, help="keep the log here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.interval <= 0:
        parser.error("--duration and --interval must be > 0")
    if min(args.appenders, args.provers, args.monitors) < 1:
        parser.error("at least one thread of each kind")
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="sealog-soak-")
        data_dir = Path(tmp) / "data"
    else:
        data_dir = args.data_dir
    try:
        return run(args, data_dir)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
