"""End-to-end server benchmark: a sealog log served over loopback gRPC.

Run from the repository root::

    python -m bench.server            # full run: tree of 10^6 entries, 10 s phases
    python -m bench.server --quick    # a few seconds, small sizes (the smoke test)

The log and a trivial echo service each run in their own process
(:mod:`bench.server_runner`), with data in a temporary folder that is removed at
the end. Clients run in separate processes (``multiprocessing``, spawn), so no
client shares a GIL with a server. Phases:

1. durable appends of batches of 1000 x 256-byte entries with
   :meth:`LogClient.append_batch` (verifies each batch's range proof and
   checkpoint signature); then the same load with pre-built requests and no
   verification, to show what the server alone sustains;
2. appends by 64 concurrent single-entry callers (:meth:`LogClient.append`,
   each receipt verified), against a trivial echo RPC with the same 64 callers;
3. the tree is filled to ``--entries`` leaves with big batches, then 64
   concurrent callers fetch random inclusion proofs with
   :meth:`LogClient.inclusion_proof` (verified), against the echo RPC again;
4. the log restarted with metrics and a JSON access log on (written to a
   file), the single appends and proofs measured again, then once more with
   both off: their cost, as on vs the mean of the off runs before and after;
5. p50/p99 latency of each;
6. bytes on disk per entry beyond the payload, per LMDB table, read from the
   closed data folder.

Every figure is printed with its goal and ``ratio`` (>= 1 means the goal is met),
and each rate with the CPU the server, the clients and every other process on
the machine used meanwhile: on a small shared machine the last one explains
most of the run-to-run spread. Batch rates fall as the tree grows, so their
labels say which tree sizes they covered. ``--pin`` puts both servers on one
CPU and the clients on the others (with few CPUs the clients then bound the
echo rate); ``--max-workers`` sizes the log's thread pool for its bulk RPCs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import lmdb

from bench.server_runner import ECHO_METHOD, ECHO_SERVICE
from sealog.client.log_client import LogClient
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = ["main"]

REPO_ROOT = Path(__file__).resolve().parent.parent

GOAL_BATCH_APPENDS_PER_S = 50_000.0
GOAL_ECHO_RATIO = 0.8
GOAL_OBSERVED_RATIO = 0.9
"""Single appends and proofs with metrics and the access log on, vs off."""
GOAL_DISK_OVERHEAD_BYTES = 150.0

_CHANNEL_OPTIONS_MAX = 80 * 1024 * 1024
_SERVER_START_TIMEOUT_S = 60.0
_WORKER_READY_TIMEOUT_S = 120.0
_MAX_ERRORS_PER_THREAD = 20
_BUSY_OTHER_CORES = 0.25


# --- output --------------------------------------------------------------------
def progress(message: str) -> None:
    """A progress line, on stderr so stdout holds only the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Figure:
    """One reported number, with its goal if it has one."""

    label: str
    value: float
    unit: str = ""
    goal: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """>= 1 when the goal is met."""
        if self.goal is None:
            return None
        if self.higher_is_better:
            return self.value / self.goal
        return self.goal / self.value if self.value > 0 else math.inf

    def line(self) -> str:
        text = f"{self.label}: {_fmt(self.value)}{self.unit}"
        ratio = self.ratio
        if self.goal is not None and ratio is not None:
            op = "" if self.higher_is_better else "<= "
            verdict = "ok" if ratio >= 1 else "MISSED"
            text += f"  goal {op}{_fmt(self.goal)}{self.unit}  ratio {ratio:.2f}  {verdict}"
        if self.note:
            text += f"  ({self.note})"
        return text


# --- server processes ------------------------------------------------------------
class ServerProcess:
    """A :mod:`bench.server_runner` process; stopped (gracefully, then by force) on exit."""

    def __init__(
        self,
        mode: str,
        data_dir: Path | None = None,
        max_workers: int | None = None,
        cpus: Sequence[int] = (),
        observe: Path | None = None,
    ) -> None:
        """``observe``: metrics on and JSON logs with access lines to this file (mode log)."""
        self.mode = mode
        cmd = [sys.executable, "-m", "bench.server_runner", mode]
        if observe is not None:
            cmd += ["--observe", str(observe)]
        if data_dir is not None:
            cmd += ["--data-dir", str(data_dir)]
        if max_workers is not None:
            cmd += ["--max-workers", str(max_workers)]
        if cpus:
            cmd += ["--cpus", ",".join(map(str, cpus))]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT
        )
        try:
            self.info = self._read_info()
        except BaseException:
            self.stop()
            raise
        self.port = int(self.info["port"])
        self.pid = self._proc.pid
        self.target = f"127.0.0.1:{self.port}"

    def _read_info(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + _SERVER_START_TIMEOUT_S
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.mode} server did not start in time")
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError(
                        f"{self.mode} server exited at start (status {self._proc.wait()})"
                    )
                buf += chunk
        return dict(json.loads(buf.split(b"\n", 1)[0]))

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        try:
            fields = Path(f"/proc/{self._proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return math.nan
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 60.0) -> int | None:
        """Close stdin (the runner stops its server), wait, then terminate or kill."""
        proc = self._proc
        if proc.stdin is not None and not proc.stdin.closed:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
        return proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def box_cpu_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine, from /proc/stat (0, 0 if unreadable)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


# --- client workers (run in spawned processes) -------------------------------------
@dataclass(frozen=True)
class Job:
    """What each client thread of a phase does, in a loop, until the phase ends."""

    kind: str
    """batch | batch_raw | single | echo | proof | proof_raw"""
    target: str
    vkey: str = ""
    batch: int = 1000
    payload_bytes: int = 256
    tree_size: int = 0


@dataclass
class ThreadStats:
    ops: int = 0
    entries: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    last_done: float = 0.0


class _Payloads:
    """Distinct payloads of a fixed size: a per-thread random tag, a counter, padding."""

    def __init__(self, size: int) -> None:
        self._tag = secrets.token_hex(8).encode()
        self._pad = b"." * max(0, size - 32)
        self._size = size
        self._n = 0

    def next(self) -> bytes:
        self._n += 1
        return (self._tag + b"%016x" % self._n + self._pad)[: self._size]

    def many(self, count: int) -> list[bytes]:
        return [self.next() for _ in range(count)]


def _channel_options(service: str) -> list[tuple[str, Any]]:
    """The options :class:`LogClient` gives its channel, with the retry policy for ``service``."""
    config = {
        "methodConfig": [
            {
                "name": [{"service": service}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
    return [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", json.dumps(config)),
        ("grpc.max_receive_message_length", _CHANNEL_OPTIONS_MAX),
        ("grpc.max_send_message_length", _CHANNEL_OPTIONS_MAX),
    ]


def _make_ops(job: Job, threads: int) -> tuple[list[Callable[[], int]], Callable[[], None]]:
    """One operation per thread (returning the entries it appended) and a closer.

    All threads of a process share one channel, whatever the kind, so the log
    and the echo are called the same way.
    """
    if job.kind == "echo":
        channel = grpc.insecure_channel(job.target, options=_channel_options(ECHO_SERVICE))
        echo = channel.unary_unary(  # bytes in, bytes out
            ECHO_METHOD, request_serializer=None, response_deserializer=None
        )

        def echo_op(message: bytes) -> Callable[[], int]:
            def op() -> int:
                if echo(message, timeout=30.0) != message:
                    raise RuntimeError("echo answered other bytes")
                return 0

            return op

        return [echo_op(_Payloads(job.payload_bytes).next()) for _ in range(threads)], (
            channel.close
        )

    client = LogClient(job.target, job.vkey, timeout=30.0)
    # The raw kinds call the same channel LogClient made, without its checks.
    stub = log_pb2_grpc.LogServiceStub(client._channel)  # type: ignore[no-untyped-call]

    if job.kind == "batch":

        def batch_op(payloads: _Payloads) -> Callable[[], int]:
            def op() -> int:
                return len(client.append_batch(payloads.many(job.batch)).entries)

            return op

        return [batch_op(_Payloads(job.payload_bytes)) for _ in range(threads)], client.close

    if job.kind == "batch_raw":

        def raw_op(payloads: _Payloads) -> Callable[[], int]:
            prefix = secrets.token_urlsafe(12)
            counter = iter(range(1 << 62))

            def op() -> int:
                request = log_pb2.AppendRequest(
                    entries=[
                        log_pb2.AppendEntry(payload=p, idempotency_key=f"{prefix}{next(counter)}")
                        for p in payloads.many(job.batch)
                    ]
                )
                response = stub.Append(request, timeout=30.0)
                return int(response.end - response.start)

            return op

        return [raw_op(_Payloads(job.payload_bytes)) for _ in range(threads)], client.close

    if job.kind == "single":

        def single_op(payloads: _Payloads) -> Callable[[], int]:
            def op() -> int:
                client.append(payloads.next())
                return 1

            return op

        return [single_op(_Payloads(job.payload_bytes)) for _ in range(threads)], client.close

    if job.kind in ("proof", "proof_raw"):
        checkpoint = client.checkpoint()
        size = checkpoint.checkpoint.size
        if size < job.tree_size:
            raise RuntimeError(f"log size {size}, want >= {job.tree_size}")

        def proof_op(rng: random.Random) -> Callable[[], int]:
            if job.kind == "proof":

                def op() -> int:
                    client.inclusion_proof(rng.randrange(size), checkpoint)
                    return 0

            else:

                def op() -> int:
                    request = log_pb2.GetInclusionProofRequest(
                        leaf_index=rng.randrange(size), tree_size=size
                    )
                    if not stub.GetInclusionProof(request, timeout=30.0).inclusion_proof:
                        raise RuntimeError("empty inclusion proof")
                    return 0

            return op

        return [proof_op(random.Random(secrets.randbits(64))) for _ in range(threads)], (
            client.close
        )

    raise ValueError(f"unknown job kind {job.kind!r}")


def _worker_main(
    job: Job,
    threads: int,
    duration: float,
    results: mp.Queue[tuple[str, Any]],
    go: MpEvent,
    start_at: Any,
) -> None:
    """A client process: ``threads`` threads run ``job`` from ``start_at`` for ``duration``."""
    try:
        ops, close = _make_ops(job, threads)
    except BaseException as e:
        results.put(("error", f"{type(e).__name__}: {e}"))
        return
    try:
        for op in ops:  # warm up: connect, and time nothing that is a first call
            op()
        stats = [ThreadStats() for _ in ops]
        begin = threading.Event()
        window: list[float] = [0.0, 0.0]

        def run(op: Callable[[], int], st: ThreadStats) -> None:
            begin.wait()
            deadline = window[1]
            lat = st.latencies
            clock = time.monotonic
            while True:
                t = clock()
                if t >= deadline:
                    break
                try:
                    n = op()
                except Exception as e:
                    st.errors += 1
                    if not st.first_error:
                        st.first_error = f"{type(e).__name__}: {e}"[:500]
                    if st.errors >= _MAX_ERRORS_PER_THREAD:
                        break
                    time.sleep(0.01)
                    continue
                done = clock()
                lat.append(done - t)
                st.ops += 1
                st.entries += n
                st.last_done = done

        workers = [
            threading.Thread(target=run, args=(op, st), daemon=True)
            for op, st in zip(ops, stats, strict=True)
        ]
        for w in workers:
            w.start()
        results.put(("ready", None))
        if not go.wait(_WORKER_READY_TIMEOUT_S):
            results.put(("error", "never told to start"))
            return
        window[0] = float(start_at.value)
        window[1] = window[0] + duration
        time.sleep(max(0.0, window[0] - time.monotonic()))
        cpu0 = time.process_time()
        begin.set()
        for w in workers:
            w.join(duration + 60.0)
        cpu = time.process_time() - cpu0
        results.put(
            (
                "result",
                {
                    "ops": sum(s.ops for s in stats),
                    "entries": sum(s.entries for s in stats),
                    "latencies": [x for s in stats for x in s.latencies],
                    "errors": sum(s.errors for s in stats),
                    "first_error": next((s.first_error for s in stats if s.first_error), ""),
                    "last_done": max(s.last_done for s in stats),
                    "start": window[0],
                    "cpu": cpu,
                    "stuck": sum(w.is_alive() for w in workers),
                },
            )
        )
    except BaseException as e:
        results.put(("error", f"{type(e).__name__}: {e}"))
    finally:
        close()


# --- phases ------------------------------------------------------------------------
@dataclass
class PhaseResult:
    name: str
    ops: int
    entries: int
    elapsed: float
    latencies: list[float]
    errors: int
    first_error: str
    server_cpu: float
    client_cpu: float
    box_cpu: float
    """Cores busy on the whole machine during the phase."""

    @property
    def other_cpu(self) -> float:
        """Cores used by processes other than this benchmark's (noise)."""
        return max(0.0, self.box_cpu - self.server_cpu - self.client_cpu)

    @property
    def server_us_per_op(self) -> float:
        """Server CPU time per call (per entry for batches): robust to a busy machine."""
        per_s = self.entries_per_s if self.entries > self.ops else self.ops_per_s
        return self.server_cpu / per_s * 1e6 if per_s > 0 else math.nan

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def entries_per_s(self) -> float:
        return self.entries / self.elapsed if self.elapsed > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        xs = self.latencies
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] * 1000

    def summary(self) -> str:
        rate = (
            f"{self.entries_per_s:,.0f} entries/s, {self.ops_per_s:,.0f} calls/s"
            if self.entries
            else f"{self.ops_per_s:,.0f} calls/s"
        )
        return (
            f"{self.name}: {rate}; p50 {self.percentile_ms(0.5):.2f} ms, "
            f"p99 {self.percentile_ms(0.99):.2f} ms; server CPU {self.server_cpu:.2f} cores, "
            f"clients CPU {self.client_cpu:.2f} cores, other processes {self.other_cpu:.2f} "
            f"cores; {self.errors} errors"
        )


def _receive(
    results: mp.Queue[tuple[str, Any]], workers: Sequence[BaseProcess], timeout: float
) -> tuple[str, Any]:
    """The next message of a client process; fail fast if one died without a word."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return results.get(timeout=0.5)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(
                    f"client process {dead[0].name} died (exit code {dead[0].exitcode})"
                ) from None
            if time.monotonic() > deadline:
                raise TimeoutError("no word from the client processes in time") from None


def run_phase(
    name: str,
    job: Job,
    *,
    procs: int,
    callers: int,
    duration: float,
    server: ServerProcess,
) -> PhaseResult:
    """Run ``callers`` client threads spread over ``procs`` processes for ``duration`` s."""
    ctx = mp.get_context("spawn")
    results: mp.Queue[tuple[str, Any]] = ctx.Queue()
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = max(1, min(procs, callers))
    shares = [callers // procs + (1 if i < callers % procs else 0) for i in range(procs)]
    progress(f"{name}: {callers} callers in {procs} client processes, {duration:g} s ...")
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(job, n, duration, results, go, start_at),
            daemon=True,
            name=f"bench-{job.kind}-{i}",
        )
        for i, n in enumerate(shares)
    ]
    for w in workers:
        w.start()
    try:
        for _ in workers:
            kind, value = _receive(results, workers, _WORKER_READY_TIMEOUT_S)
            if kind != "ready":
                raise RuntimeError(f"{name}: a client process failed to start: {value}")
        t0 = time.monotonic() + 0.2
        start_at.value = t0
        go.set()
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0, box0 = server.cpu_seconds(), box_cpu_ticks()
        time.sleep(max(0.0, t0 + duration - time.monotonic()))
        cpu1, box1 = server.cpu_seconds(), box_cpu_ticks()
        outs: list[dict[str, Any]] = []
        for _ in workers:
            kind, value = _receive(results, workers, duration + 90.0)
            if kind != "result":
                raise RuntimeError(f"{name}: a client process failed: {value}")
            outs.append(value)
    finally:
        go.set()
        for w in workers:
            w.join(30.0)
            if w.is_alive():
                w.terminate()
                w.join(5.0)
    end = max(o["last_done"] for o in outs)
    elapsed = max(end - t0, 1e-9)
    latencies = sorted(x for o in outs for x in o["latencies"])
    result = PhaseResult(
        name=name,
        ops=sum(o["ops"] for o in outs),
        entries=sum(o["entries"] for o in outs),
        elapsed=elapsed,
        latencies=latencies,
        errors=sum(o["errors"] for o in outs),
        first_error=next((o["first_error"] for o in outs if o["first_error"]), ""),
        server_cpu=(cpu1 - cpu0) / duration,
        client_cpu=sum(o["cpu"] for o in outs) / elapsed,
        box_cpu=(box1[0] - box0[0]) / max(1, box1[1] - box0[1]) * (os.cpu_count() or 1),
    )
    if any(o["stuck"] for o in outs):
        result.errors += 1
        result.first_error = result.first_error or "client threads did not finish in time"
    progress(result.summary())
    if result.first_error:
        progress(f"{name}: first error: {result.first_error}")
    return result


@dataclass
class Observed:
    """The calls measured again with metrics and the access log on, then off."""

    on: dict[str, PhaseResult]
    off_again: dict[str, PhaseResult]
    lines: int
    """Access lines the observed server wrote."""
    counted: int
    """RPCs its metrics counted, scraped as it stopped taking calls."""
    tree_size: int


def observation_phases(
    cfg: Config, data_dir: Path, log_file: Path, vkey: str, cpus: Sequence[int]
) -> Observed:
    """Restart the log with metrics and a JSON access log on, measure single appends and
    proofs, then restart it with both off and measure them again."""
    runs: dict[bool, dict[str, PhaseResult]] = {}
    counted = size = 0
    for observed in (True, False):
        label = "metrics and access log on" if observed else "both off again"
        with ServerProcess(
            "log",
            data_dir,
            max_workers=cfg.max_workers,
            cpus=cpus,
            observe=log_file if observed else None,
        ) as server:
            settle(server)
            jobs = {
                "single": Job("single", server.target, vkey, 1, cfg.payload_bytes),
                "proof": Job("proof", server.target, vkey, tree_size=cfg.entries),
            }
            runs[observed] = {
                name: run_phase(
                    f"{name} ({cfg.callers} callers, verified, {label})",
                    job,
                    procs=cfg.client_procs,
                    callers=cfg.callers,
                    duration=cfg.duration,
                    server=server,
                )
                for name, job in jobs.items()
            }
            size = log_size(server.target, vkey)
            if observed:
                time.sleep(0.5)  # the observer's last flush
                counted = _scraped_rpcs(int(server.info["metrics_port"]))
    with log_file.open(encoding="utf-8") as f:
        lines = sum(1 for line in f if '"logger": "sealog.access"' in line)
    return Observed(runs[True], runs[False], lines, counted, size)


def _scraped_rpcs(port: int) -> int:
    """The sum of grpc_server_handled_total on the metrics endpoint at ``port``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return round(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total{")
        )
    )


def settle(server: ServerProcess, limit_s: float = 120.0) -> float:
    """Wait until ``server`` is idle (under 0.05 cores for half a second); return the wait.

    After a fill the log indexes the leaves it holds in memory (docs/storage.md,
    "Deferred indexing"); measuring proofs meanwhile would charge that work to them.
    """
    t0 = time.monotonic()
    last = server.cpu_seconds()
    while time.monotonic() - t0 < limit_s:
        time.sleep(0.5)
        now = server.cpu_seconds()
        if not now - last >= 0.025:  # (also when the CPU time is unknown)
            break
        last = now
    waited = time.monotonic() - t0
    progress(f"log server idle after {waited:.1f} s")
    return waited


def log_size(target: str, vkey: str) -> int:
    with LogClient(target, vkey, timeout=30.0) as client:
        return int(client.checkpoint().checkpoint.size)


def fill(target: str, vkey: str, entries: int, payload_bytes: int, threads: int) -> float:
    """Append (unverified, 1000-entry requests) until the log holds ``entries`` leaves.

    Entries carry idempotency keys like the client library's, so the idempotency
    table is what real use would make. Returns the entries/s achieved.
    """
    have = log_size(target, vkey)
    if have >= entries:
        return math.nan
    progress(f"fill: {have:,} -> {entries:,} entries, 1000-entry requests from {threads} threads")
    channel = grpc.insecure_channel(target, options=_channel_options("sealog.v1.LogService"))
    stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
    lock = threading.Lock()
    state = {"next": have, "done": have}
    errors: list[BaseException] = []
    stop = threading.Event()
    time_limit = max(300.0, entries / 2000)  # bounded even on a very slow disk

    def take() -> int:
        with lock:
            n = min(1000, entries - state["next"])
            state["next"] += max(n, 0)
            return n

    def run() -> None:
        payloads = _Payloads(payload_bytes)
        try:
            while not stop.is_set():
                n = take()
                if n <= 0:
                    return
                request = log_pb2.AppendRequest(
                    entries=[
                        log_pb2.AppendEntry(payload=p, idempotency_key=secrets.token_urlsafe(24))
                        for p in payloads.many(n)
                    ]
                )
                response = stub.Append(request, timeout=60.0)
                with lock:
                    state["done"] += int(response.end - response.start)
        except BaseException as e:
            errors.append(e)
            stop.set()

    t0 = time.monotonic()
    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in pool:
        t.start()
    last_report, last_done = t0, have
    try:
        while any(t.is_alive() for t in pool):
            for t in pool:
                t.join(0.2)
            now = time.monotonic()
            if now - last_report >= 5.0:
                done = state["done"]
                progress(
                    f"fill: {done:,} / {entries:,} entries "
                    f"({(done - last_done) / (now - last_report):,.0f}/s)"
                )
                last_report, last_done = now, done
            if now - t0 > time_limit:
                stop.set()
                raise TimeoutError(f"fill did not finish in {time_limit:.0f} s")
    finally:
        stop.set()
        for t in pool:
            t.join(70.0)
        channel.close()
    if errors:
        raise RuntimeError(f"fill failed: {errors[0]!r}") from errors[0]
    elapsed = time.monotonic() - t0
    rate = (state["done"] - have) / elapsed
    progress(f"fill: {state['done']:,} entries, {rate:,.0f} entries/s")
    return rate


# --- disk --------------------------------------------------------------------------
TABLES = (
    "entries",
    "hashes",
    "leaf_index",
    "idempotency",
    "pending_digests",
    "by_identity",
    "meta",
)


@dataclass(frozen=True)
class DiskStats:
    page_size: int
    pages_in_use: int
    table_bytes: dict[str, int]
    table_records: dict[str, int]
    main_db_bytes: int
    file_bytes: int
    allocated_bytes: int

    @property
    def bytes_in_use(self) -> int:
        return self.pages_in_use * self.page_size

    @property
    def other_bytes(self) -> int:
        """Meta pages, the free list and freed pages not yet reused."""
        return self.bytes_in_use - sum(self.table_bytes.values()) - self.main_db_bytes


def disk_stats(db_dir: Path) -> DiskStats:
    """LMDB page use of a closed log's environment, like ``mdb_stat -ef``."""
    env = lmdb.open(str(db_dir), readonly=True, lock=False, max_dbs=8)
    try:
        info = env.info()
        main = env.stat()
        psize = int(main["psize"])

        def pages(st: Any) -> int:  # lmdb's stat TypedDict
            return int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])

        table_bytes: dict[str, int] = {}
        table_records: dict[str, int] = {}
        for name in TABLES:
            db = env.open_db(name.encode(), create=False)
            with env.begin() as txn:
                st = txn.stat(db)
            table_bytes[name] = pages(st) * psize
            table_records[name] = int(st["entries"])
        data_file = db_dir / "data.mdb"
        fst = data_file.stat()
        return DiskStats(
            page_size=psize,
            pages_in_use=int(info["last_pgno"]) + 1,
            table_bytes=table_bytes,
            table_records=table_records,
            main_db_bytes=pages(main) * psize,
            file_bytes=fst.st_size,
            allocated_bytes=fst.st_blocks * 512,
        )
    finally:
        env.close()


# --- the run -------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    entries: int
    duration: float
    callers: int
    client_procs: int
    batch_procs: int
    batch_threads: int
    batch: int
    payload_bytes: int
    fill_threads: int
    keep: bool
    max_workers: int | None
    pin: bool


def _grew(start: int, end: int) -> str:
    return f"{start / 1e3:,.0f}k->{end / 1e3:,.0f}k"


def _latency_figures(label: str, r: PhaseResult) -> list[Figure]:
    return [
        Figure(f"p50 latency, {label}", r.percentile_ms(0.5), " ms"),
        Figure(f"p99 latency, {label}", r.percentile_ms(0.99), " ms"),
    ]


def _cpu_note(r: PhaseResult) -> str:
    unit = "entry" if r.entries > r.ops else "call"
    return (
        f"server CPU {r.server_cpu:.2f} cores = {r.server_us_per_op:.0f} us/{unit}, "
        f"clients {r.client_cpu:.2f}, other processes {r.other_cpu:.2f}"
    )


def run(cfg: Config) -> tuple[list[Figure], int, list[str]]:
    """Run every phase; return the figures, the number of failed calls and warnings."""
    figures: list[Figure] = []
    phases: list[PhaseResult] = []
    tmp = Path(tempfile.mkdtemp(prefix="sealog-bench-"))
    data_dir = tmp / "log"
    progress(f"data in {data_dir}; {os.cpu_count()} CPUs; payload {cfg.payload_bytes} B")
    try:
        server_cpus: tuple[int, ...] = ()
        if cfg.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit("--pin needs at least 2 CPUs")
            server_cpus = (cpus[0],)
            os.sched_setaffinity(0, cpus[1:])  # client processes inherit this
            progress(f"pinned: servers on CPU {cpus[0]}, clients on CPUs {cpus[1:]}")
        with (
            ServerProcess("echo", max_workers=cfg.max_workers, cpus=server_cpus) as echo,
            ServerProcess("log", data_dir, max_workers=cfg.max_workers, cpus=server_cpus) as log,
        ):
            progress(f"log server pid {log.pid} on {log.target}; echo server pid {echo.pid}")
            vkey = str(log.info["vkey"])

            def phase(name: str, job: Job, procs: int, callers: int) -> PhaseResult:
                server = echo if job.kind == "echo" else log
                r = run_phase(
                    name,
                    job,
                    procs=procs,
                    callers=callers,
                    duration=cfg.duration,
                    server=server,
                )
                phases.append(r)
                return r

            # 1. batches
            n_batch = cfg.batch_procs * cfg.batch_threads
            label = f"batch {cfg.batch}x{cfg.payload_bytes}B"
            sizes = [log_size(log.target, vkey)]
            batch = phase(
                f"append_batch ({label}, verified)",
                Job("batch", log.target, vkey, cfg.batch, cfg.payload_bytes),
                cfg.batch_procs,
                n_batch,
            )
            sizes.append(log_size(log.target, vkey))
            raw = phase(
                f"raw Append ({label}, unverified)",
                Job("batch_raw", log.target, vkey, cfg.batch, cfg.payload_bytes),
                cfg.batch_procs,
                n_batch,
            )
            sizes.append(log_size(log.target, vkey))
            calls = f"{n_batch} callers in {cfg.batch_procs} processes"
            figures.append(
                Figure(
                    f"appends/s ({label}, append_batch verified, {calls}, "
                    f"tree {_grew(sizes[0], sizes[1])})",
                    batch.entries_per_s,
                    goal=GOAL_BATCH_APPENDS_PER_S,
                    note=_cpu_note(batch),
                )
            )
            figures.append(
                Figure(
                    f"appends/s ({label}, raw Append unverified, {calls}, "
                    f"tree {_grew(sizes[1], sizes[2])})",
                    raw.entries_per_s,
                    goal=GOAL_BATCH_APPENDS_PER_S,
                    note=_cpu_note(raw),
                )
            )
            figures.extend(_latency_figures(f"append_batch {label}", batch))
            figures.extend(_latency_figures(f"raw Append {label}", raw))

            # 2. single appends vs echo
            callers = f"{cfg.callers} callers"
            echo_job = Job("echo", echo.target, payload_bytes=cfg.payload_bytes)
            echo1 = phase(f"echo ({callers})", echo_job, cfg.client_procs, cfg.callers)
            single = phase(
                f"append single ({callers}, verified)",
                Job("single", log.target, vkey, 1, cfg.payload_bytes),
                cfg.client_procs,
                cfg.callers,
            )
            figures.append(
                Figure(f"echo RPCs/s ({callers})", echo1.ops_per_s, note=_cpu_note(echo1))
            )
            figures.append(
                Figure(
                    f"single appends/s ({callers}, verified receipts)",
                    single.ops_per_s,
                    note=_cpu_note(single),
                )
            )
            figures.append(
                Figure(
                    "single appends/s vs echo RPCs/s",
                    single.ops_per_s / max(echo1.ops_per_s, 1e-9),
                    goal=GOAL_ECHO_RATIO,
                )
            )
            figures.extend(_latency_figures(f"echo ({callers})", echo1))
            figures.extend(_latency_figures(f"single append ({callers})", single))

            # 3. fill, then inclusion proofs vs echo
            before_fill = log_size(log.target, vkey)
            fill_rate = fill(log.target, vkey, cfg.entries, cfg.payload_bytes, cfg.fill_threads)
            size = log_size(log.target, vkey)
            settle(log)
            tree = f"tree {size:,}"
            proof = phase(
                f"inclusion_proof ({tree}, {callers}, verified)",
                Job("proof", log.target, vkey, tree_size=cfg.entries),
                cfg.client_procs,
                cfg.callers,
            )
            proof_raw = phase(
                f"raw GetInclusionProof ({tree}, {callers}, unverified)",
                Job("proof_raw", log.target, vkey, tree_size=cfg.entries),
                cfg.client_procs,
                cfg.callers,
            )
            echo2 = phase(f"echo ({callers}, again)", echo_job, cfg.client_procs, cfg.callers)
            if not math.isnan(fill_rate):
                figures.append(
                    Figure(
                        f"fill appends/s (1000-entry raw Append, unverified, "
                        f"{cfg.fill_threads} threads, tree {_grew(before_fill, size)})",
                        fill_rate,
                    )
                )
            figures.append(
                Figure(
                    f"inclusion proofs/s ({tree}, {callers}, LogClient.inclusion_proof verified)",
                    proof.ops_per_s,
                    note=_cpu_note(proof),
                )
            )
            figures.append(
                Figure(
                    f"inclusion proofs/s ({tree}, {callers}, raw GetInclusionProof unverified)",
                    proof_raw.ops_per_s,
                    note=_cpu_note(proof_raw),
                )
            )
            figures.append(
                Figure(
                    f"echo RPCs/s ({callers}, measured after proofs)",
                    echo2.ops_per_s,
                    note=_cpu_note(echo2),
                )
            )
            figures.append(
                Figure(
                    "inclusion proofs/s vs echo RPCs/s",
                    proof.ops_per_s / max(echo2.ops_per_s, 1e-9),
                    goal=GOAL_ECHO_RATIO,
                )
            )
            figures.append(
                Figure(
                    "raw GetInclusionProof/s vs echo RPCs/s",
                    proof_raw.ops_per_s / max(echo2.ops_per_s, 1e-9),
                    goal=GOAL_ECHO_RATIO,
                )
            )
            figures.extend(_latency_figures(f"inclusion_proof ({callers})", proof))
            figures.extend(_latency_figures(f"raw GetInclusionProof ({callers})", proof_raw))
            figures.extend(_latency_figures(f"echo ({callers}, again)", echo2))
            # 4. metrics and the access log: the same calls with both on, then off again
            log.stop()
            seen = observation_phases(cfg, data_dir, tmp / "server.log", vkey, server_cpus)
            phases.extend([*seen.on.values(), *seen.off_again.values()])
            size = seen.tree_size
            for what, name, first in (
                ("single appends/s", "single", single),
                ("inclusion proofs/s", "proof", proof),
            ):
                base = (first.ops_per_s + seen.off_again[name].ops_per_s) / 2
                figures.append(
                    Figure(
                        f"{what} ({callers}), metrics and JSON access log on",
                        seen.on[name].ops_per_s,
                        note=_cpu_note(seen.on[name]),
                    )
                )
                figures.append(
                    Figure(
                        f"{what} ({callers}), both off again",
                        seen.off_again[name].ops_per_s,
                        note=_cpu_note(seen.off_again[name]),
                    )
                )
                figures.append(
                    Figure(
                        f"{what}, on vs off (the mean of the off runs before and after)",
                        seen.on[name].ops_per_s / max(base, 1e-9),
                        goal=GOAL_OBSERVED_RATIO,
                    )
                )
            figures.append(
                Figure(
                    "access lines written vs RPCs the metrics counted",
                    seen.lines / max(seen.counted, 1),
                    goal=1.0,
                    note=f"{seen.lines:,} lines, {seen.counted:,} RPCs in "
                    "grpc_server_handled_total",
                )
            )
            progress("stopping servers ...")

        # 6. disk, on the closed environment
        disk = disk_stats(data_dir / "db")
        payload = size * cfg.payload_bytes
        figures.append(
            Figure(
                f"disk bytes/entry beyond payload ({tree}, LMDB pages in use)",
                (disk.bytes_in_use - payload) / size,
                " B",
                goal=GOAL_DISK_OVERHEAD_BYTES,
                higher_is_better=False,
                note=f"{disk.bytes_in_use:,} B in {disk.pages_in_use:,} pages of "
                f"{disk.page_size} B; payload {payload:,} B",
            )
        )
        for name in TABLES:
            figures.append(
                Figure(
                    f"  disk bytes/entry, table {name}",
                    disk.table_bytes[name] / size,
                    " B",
                    note=f"{disk.table_bytes[name]:,} B, {disk.table_records[name]:,} records",
                )
            )
        figures.append(
            Figure(
                "  disk bytes/entry, main db + meta pages + free pages",
                (disk.main_db_bytes + disk.other_bytes) / size,
                " B",
                note=f"free/meta {disk.other_bytes:,} B",
            )
        )
        figures.append(
            Figure(
                "  disk bytes/entry, data.mdb blocks allocated (payload included)",
                disk.allocated_bytes / size,
                " B",
                note=f"data.mdb size {disk.file_bytes:,} B",
            )
        )
    finally:
        if cfg.keep:
            progress(f"kept data in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    warnings = []
    busy = max((p.other_cpu for p in phases), default=0.0)
    if busy > _BUSY_OTHER_CORES:
        warnings.append(
            f"WARNING: other processes used up to {busy:.2f} of {os.cpu_count()} cores during "
            "the measured phases; rates are lower than on an idle machine (the us/call "
            "figures are less affected)"
        )
    return figures, sum(p.errors for p in phases), warnings


def _parse(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m bench.server",
        description="Benchmark a sealog server over loopback gRPC (see the module docstring).",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--entries", type=int, help="tree size for the proof phase (10^6)")
    parser.add_argument("--duration", type=float, help="seconds per measured phase (10)")
    parser.add_argument("--callers", type=int, default=64, help="concurrent callers (64)")
    parser.add_argument(
        "--client-procs", type=int, default=2, help="processes the callers are spread over (2)"
    )
    parser.add_argument("--batch-procs", type=int, default=2, help="batch client processes (2)")
    parser.add_argument(
        "--batch-threads", type=int, default=2, help="threads per batch client process (2)"
    )
    parser.add_argument("--fill-threads", type=int, default=4, help="fill threads (4)")
    parser.add_argument(
        "--max-workers",
        type=int,
        help="the log's threads for bulk RPCs (default: Settings().max_workers, 128)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run both servers on the first CPU and the clients on the others",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    args = parser.parse_args(argv)
    entries = args.entries or (5_000 if args.quick else 1_000_000)
    duration = args.duration or (1.0 if args.quick else 10.0)
    for name, value in (
        ("--entries", entries),
        ("--duration", duration),
        ("--callers", args.callers),
        ("--client-procs", args.client_procs),
        ("--batch-procs", args.batch_procs),
        ("--batch-threads", args.batch_threads),
        ("--fill-threads", args.fill_threads),
        ("--max-workers", 1 if args.max_workers is None else args.max_workers),
    ):
        if value <= 0:
            parser.error(f"{name} must be > 0")
    if duration > 600:
        parser.error("--duration must be <= 600")
    if entries > 100_000_000:
        parser.error("--entries must be <= 10^8")
    return Config(
        entries=entries,
        duration=duration,
        callers=args.callers,
        client_procs=args.client_procs,
        batch_procs=args.batch_procs,
        batch_threads=args.batch_threads,
        batch=1000,
        payload_bytes=256,
        fill_threads=args.fill_threads,
        keep=args.keep,
        max_workers=args.max_workers,
        pin=args.pin,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: servers stopped, temp data removed


def main(argv: Sequence[str] | None = None) -> int:
    cfg = _parse(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t0 = time.monotonic()
    figures, errors, warnings = run(cfg)
    print(f"\n=== sealog server benchmark ({time.monotonic() - t0:.0f} s) ===")
    for f in figures:
        print(f.line())
    for w in warnings:
        print(w)
    if errors:
        print(f"FAILED: {errors} calls failed (see the progress log)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
