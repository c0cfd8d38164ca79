"""Crash campaign: ``kill -9`` the log server under load, over and over, and lose nothing.

Run from the repository root::

    python -m bench.crash_campaign --cycles 50 --clients 4 --seed 1

Each cycle:

1. ``--clients`` threads append through :class:`~sealog.client.log_client.LogClient`
   (batches of 1 to 50 entries, every answer verified), recording every
   acknowledged ``(index, payload)`` and the newest checkpoint they were shown;
2. after a random delay (uniform in ``[0, --max-delay]`` seconds from the start
   of the load) the ``sealog serve`` process gets ``SIGKILL``;
3. ``sealog fsck`` checks the data folder exactly as the crash left it;
4. ``sealog serve`` restarts on the same folder: it must pass its start-up
   self-check;
5. a verifying client checks that the new checkpoint is consistent with every
   checkpoint a writer saw (no rollback), downloads the entries added since the
   last check (each page range-proven), recomputes the root from all entries
   and compares it with the checkpoint, and checks that every acknowledged
   entry is at its index with its payload, that no payload is logged twice and
   that nothing was logged that no writer sent.

At the end the last server is stopped with SIGTERM (it must exit 0), every
entry is downloaded again from scratch and ``sealog fsck`` runs once more.
The figures are printed; the exit status is 1 if anything acknowledged was
lost or any check failed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.serve_process import SealogServe, ServeFailedError, run_fsck
from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.compact import CompactRange
from sealog.client.errors import InconsistentCheckpointsError, SealogError
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.log_client import LogClient

__all__ = ["CampaignReport", "main", "run_campaign"]

BATCH_SIZES = (1, 1, 1, 2, 5, 10, 20, 50)
# What a writer may see when the server vanishes under it.
_CRASH_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
    }
)
_JOIN_TIMEOUT_S = 60.0


def progress(message: str) -> None:
    """A progress line on stderr; stdout holds only the report."""
    print(f"[crash {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class CampaignReport:
    """The campaign's figures. :attr:`ok` when nothing was lost and every check passed."""

    cycles: int = 0
    acknowledged: int = 0
    lost: int = 0
    restart_failures: int = 0
    fsck_runs: int = 0
    fsck_failures: int = 0
    rollbacks: int = 0
    root_mismatches: int = 0
    duplicates: int = 0
    phantoms: int = 0
    unexpected_errors: int = 0
    in_doubt: int = 0
    in_doubt_landed: int = 0
    final_size: int = 0
    final_exit_status: int | None = None
    error_codes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing acknowledged was lost and every check passed."""
        return not (
            self.lost
            or self.restart_failures
            or self.fsck_failures
            or self.rollbacks
            or self.root_mismatches
            or self.duplicates
            or self.phantoms
            or self.unexpected_errors
            or self.final_exit_status not in (0, None)
        )

    def problem(self, text: str) -> None:
        """Record one failed check (the first 50 are printed)."""
        self.problems.append(text)
        progress(f"PROBLEM: {text}")

    def lines(self) -> list[str]:
        """The report, one figure a line."""
        rows = [
            ("cycles run", f"{self.cycles}"),
            ("acknowledged entries", f"{self.acknowledged:,}"),
            ("acknowledged entries lost (must be 0)", f"{self.lost}"),
            ("restarts that failed the self-check (must be 0)", f"{self.restart_failures}"),
            ("fsck runs", f"{self.fsck_runs}"),
            ("fsck failures (must be 0)", f"{self.fsck_failures}"),
            ("checkpoint rollbacks (must be 0)", f"{self.rollbacks}"),
            ("root mismatches (must be 0)", f"{self.root_mismatches}"),
            ("entries logged twice (must be 0)", f"{self.duplicates}"),
            ("entries nobody sent (must be 0)", f"{self.phantoms}"),
            ("unexpected client errors (must be 0)", f"{self.unexpected_errors}"),
            (
                "unanswered entries (in flight at a kill)",
                f"{self.in_doubt:,} ({self.in_doubt_landed:,} landed, "
                f"{self.in_doubt - self.in_doubt_landed:,} did not)",
            ),
            ("tree size at the end", f"{self.final_size:,}"),
            (
                "exit status after the final SIGTERM",
                "-" if self.final_exit_status is None else str(self.final_exit_status),
            ),
            (
                "errors writers saw at kills",
                ", ".join(f"{k} {v}" for k, v in sorted(self.error_codes.items())) or "none",
            ),
        ]
        width = max(len(label) for label, _ in rows)
        out = [f"{label:<{width}}  {value}" for label, value in rows]
        out += [f"PROBLEM: {p}" for p in self.problems[:50]]
        out.append(f"verdict: {'ok' if self.ok else 'FAILED'}")
        return out


@dataclass
class Ledger:
    """What the writers were told, and what they sent without an answer."""

    acked: dict[int, bytes] = field(default_factory=dict)
    sent: set[bytes] = field(default_factory=set)
    in_doubt: set[bytes] = field(default_factory=set)
    newest: SignedCheckpoint | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, indices: list[int], payloads: list[bytes], cp: SignedCheckpoint) -> str:
        """Record one acknowledged batch; return a problem, or ''."""
        with self.lock:
            for index, payload in zip(indices, payloads, strict=True):
                if self.acked.setdefault(index, payload) != payload:
                    return f"index {index} acknowledged for two different payloads"
            if self.newest is None or cp.checkpoint.size > self.newest.checkpoint.size:
                self.newest = cp
        return ""


@dataclass
class _Verified:
    """The tree verified so far: its checkpoint, compact range and payloads."""

    checkpoint: SignedCheckpoint | None = None
    tree: CompactRange = field(default_factory=CompactRange)
    payloads: list[bytes] = field(default_factory=list)
    seen: set[bytes] = field(default_factory=set)
    last_ms: int = 0


def _writer(
    target: str,
    vkey: str,
    ledger: Ledger,
    report: CampaignReport,
    tag: str,
    seed: float,
    stop: threading.Event,
) -> None:
    rng = random.Random(seed)
    n = 0
    with LogClient(target, vkey, timeout=5.0, max_attempts=2) as client:
        while not stop.is_set():
            payloads = [f"{tag} n{n + i}".encode() for i in range(rng.choice(BATCH_SIZES))]
            n += len(payloads)
            with ledger.lock:
                ledger.sent.update(payloads)
            try:
                result = client.append_batch(payloads)
            except grpc.RpcError as e:
                with ledger.lock:
                    ledger.in_doubt.update(payloads)
                    report.error_codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    time.sleep(0.1)  # nothing was queued: back off and go on
                    continue
                if e.code() not in _CRASH_CODES:
                    with ledger.lock:
                        report.unexpected_errors += 1
                    report.problem(f"{tag}: {e.code().name}: {e.details()}")
                return  # the server is gone
            except SealogError as e:  # a verification failure
                with ledger.lock:
                    ledger.in_doubt.update(payloads)
                    report.unexpected_errors += 1
                report.problem(f"{tag}: answer did not verify: {e}")
                return
            problem = ledger.record([e.index for e in result.entries], payloads, result.checkpoint)
            if problem:
                with ledger.lock:
                    report.unexpected_errors += 1
                report.problem(f"{tag}: {problem}")


def _fsck(data_dir: Path, vkey: str, report: CampaignReport, when: str) -> int:
    """Run ``sealog fsck``; return the tree size it checked."""
    report.fsck_runs += 1
    proc = run_fsck(data_dir, vkey)
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        result = {"ok": False, "problems": [proc.stdout + proc.stderr], "tree_size": -1}
    if proc.returncode != 0 or not result.get("ok"):
        report.fsck_failures += 1
        shown = "; ".join(result.get("problems", [])[:5])
        report.problem(f"{when}: sealog fsck exited {proc.returncode}: {shown}")
    return int(result.get("tree_size", -1))


def _verify(
    server: SealogServe,
    vkey: str,
    ledger: Ledger,
    state: _Verified,
    report: CampaignReport,
    when: str,
) -> None:
    """Check the restarted log against everything the writers were told."""
    with LogClient(server.target, vkey, timeout=60.0) as client:
        latest = client.checkpoint()
        size = latest.checkpoint.size
        if size != server.size_at_start:
            report.problem(
                f"{when}: served size {size}, but serve said it started at {server.size_at_start}"
            )
        for name, trusted in (
            ("newest acknowledged", ledger.newest),
            ("last verified", state.checkpoint),
        ):
            if trusted is None:
                continue
            try:
                client.consistency_proof(trusted, latest)
            except InconsistentCheckpointsError as e:
                report.rollbacks += 1
                report.problem(f"{when}: not consistent with the {name} checkpoint: {e}")
                return
        start = state.tree.size
        if start > size:
            return  # a rollback, reported above
        if start < size:
            for entry in client.entries(start, size, checkpoint=latest):
                leaf = Leaf.parse(entry.leaf)
                state.tree.append(leaf_hash(entry.leaf))
                state.payloads.append(leaf.payload)
                if leaf.payload in state.seen:
                    report.duplicates += 1
                    report.problem(f"{when}: entry {entry.index} logs a payload twice")
                state.seen.add(leaf.payload)
                if leaf.payload not in ledger.sent:
                    report.phantoms += 1
                    report.problem(f"{when}: entry {entry.index} holds a payload nobody sent")
                if leaf.accepted_at_ms < state.last_ms:
                    report.problem(f"{when}: entry {entry.index} went back in time")
                    report.unexpected_errors += 1
                state.last_ms = max(state.last_ms, leaf.accepted_at_ms)
        if state.tree.root() != latest.checkpoint.root_hash:
            report.root_mismatches += 1
            report.problem(f"{when}: root recomputed from entries differs from the checkpoint's")
        state.checkpoint = latest
    lost = [
        index
        for index, payload in ledger.acked.items()
        if index >= len(state.payloads) or state.payloads[index] != payload
    ]
    report.lost = len(lost)
    if lost:
        report.problem(f"{when}: {len(lost)} acknowledged entries lost, first at index {min(lost)}")
    report.acknowledged = len(ledger.acked)


def _final_check(server: SealogServe, vkey: str, ledger: Ledger, report: CampaignReport) -> None:
    """Download everything again from scratch and recompute the root."""
    with LogClient(server.target, vkey, timeout=120.0) as client:
        latest = client.checkpoint()
        tree = CompactRange()
        payloads = []
        for entry in client.entries(checkpoint=latest):
            tree.append(entry.leaf_hash)
            payloads.append(entry.parse().payload)
        if tree.root() != latest.checkpoint.root_hash:
            report.root_mismatches += 1
            report.problem("final: root recomputed from every entry differs from the checkpoint's")
        landed = ledger.in_doubt & set(payloads)
        report.in_doubt = len(ledger.in_doubt)
        report.in_doubt_landed = len(landed)
        report.final_size = latest.checkpoint.size
        lost = sum(1 for i, p in ledger.acked.items() if i >= len(payloads) or payloads[i] != p)
        report.lost = max(report.lost, lost)


def run_campaign(
    cycles: int,
    clients: int,
    seed: int,
    data_dir: Path,
    *,
    max_delay: float = 1.0,
) -> CampaignReport:
    """Run the campaign in ``data_dir`` (created if missing); see the module docstring."""
    rng = random.Random(seed)
    report = CampaignReport()
    ledger = Ledger()
    state = _Verified()
    server = SealogServe(data_dir)
    try:
        server.wait_ready()
        vkey = server.vkey
        for cycle in range(1, cycles + 1):
            stop = threading.Event()
            writers = [
                threading.Thread(
                    target=_writer,
                    args=(
                        server.target,
                        vkey,
                        ledger,
                        report,
                        f"s{seed} c{cycle} w{w}",
                        rng.random(),
                        stop,
                    ),
                    name=f"writer-{w}",
                    daemon=True,
                )
                for w in range(clients)
            ]
            acked_before = len(ledger.acked)
            for w in writers:
                w.start()
            delay = rng.uniform(0.0, max_delay)
            time.sleep(delay)
            server.kill()
            stop.set()
            for w in writers:
                w.join(_JOIN_TIMEOUT_S)
            if any(w.is_alive() for w in writers):
                report.unexpected_errors += 1
                report.problem(f"cycle {cycle}: a writer hung after the kill")
            report.cycles = cycle
            size = _fsck(data_dir, vkey, report, f"cycle {cycle} after kill -9")
            try:
                server = SealogServe(data_dir).wait_ready()
            except ServeFailedError as e:
                report.restart_failures += 1
                report.problem(f"cycle {cycle}: restart failed: {e.stderr.strip()[-2000:]}")
                break
            if server.vkey != vkey:
                report.problem(f"cycle {cycle}: the restarted log signs with another key")
                report.unexpected_errors += 1
            _verify(server, vkey, ledger, state, report, f"cycle {cycle}")
            progress(
                f"cycle {cycle}/{cycles}: killed {delay:.2f} s into the load, "
                f"{len(ledger.acked) - acked_before} acknowledged, fsck saw size {size}, "
                f"restarted at size {server.size_at_start}"
            )
            if report.lost or report.rollbacks:
                break
        else:
            _final_check(server, vkey, ledger, report)
            report.final_exit_status = server.terminate()
            if report.final_exit_status != 0:
                report.problem(f"final SIGTERM: exit status {report.final_exit_status}")
            _fsck(data_dir, vkey, report, "after the final SIGTERM")
    finally:
        server.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.crash_campaign",
        description="kill -9 the sealog server under load CYCLES times; verify nothing "
        "acknowledged is lost. Exit status 1 if anything was.",
    )
    parser.add_argument("--cycles", type=int, default=20, help="kill/restart cycles")
    parser.add_argument("--clients", type=int, default=4, help="writer threads")
    parser.add_argument("--seed", type=int, default=1, help="random seed (kill moments, batches)")
    parser.add_argument(
        "--max-delay",
        type=float,
        default=1.0,
        help="the kill comes uniformly within this many seconds of the load starting",
    )
    parser.add_argument("--data-dir", type=Path, help="keep the log here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.cycles < 1 or args.clients < 1 or args.max_delay < 0:
        parser.error("--cycles and --clients must be >= 1, --max-delay >= 0")

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.mkdtemp(prefix="sealog-crash-")
        data_dir = Path(tmp) / "data"
    else:
        data_dir = args.data_dir
    started = time.monotonic()
    try:
        report = run_campaign(
            args.cycles, args.clients, args.seed, data_dir, max_delay=args.max_delay
        )
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"crash campaign: {args.cycles} cycles, {args.clients} clients, seed {args.seed}, "
        f"kill within {args.max_delay} s, {time.monotonic() - started:.1f} s"
    )
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
