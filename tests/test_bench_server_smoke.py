"""Smoke test of the server benchmark: ``python -m bench.server --quick`` runs and reports.

No timing is asserted (the figures depend on the machine); only that every
phase ran without a failed call and that every figure line is printed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

FIGURE_LINES = (
    "appends/s (batch 1000x256B, append_batch verified",
    "appends/s (batch 1000x256B, raw Append unverified",
    "p50 latency, append_batch",
    "p99 latency, append_batch",
    "echo RPCs/s (64 callers)",
    "single appends/s (64 callers, verified receipts)",
    "single appends/s vs echo RPCs/s",
    "p50 latency, single append",
    "p99 latency, single append",
    "inclusion proofs/s (tree ",
    "inclusion proofs/s vs echo RPCs/s",
    "p50 latency, inclusion_proof",
    "p99 latency, inclusion_proof",
    "p50 latency, echo",
    "p99 latency, echo",
    "single appends/s, on vs off",
    "inclusion proofs/s, on vs off",
    "access lines written vs RPCs the metrics counted: 1.00 ",
    "disk bytes/entry beyond payload",
    "disk bytes/entry, table entries",
    "disk bytes/entry, table hashes",
    "disk bytes/entry, table leaf_index",
    "disk bytes/entry, table idempotency",
)


@pytest.mark.slow
def test_bench_server_quick_runs_and_prints_every_figure() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.server", "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for label in FIGURE_LINES:
        assert any(label in line for line in lines), f"no line with {label!r}:\n{proc.stdout}"
    goal_lines = [line for line in lines if " goal " in line]
    assert len(goal_lines) >= 5, proc.stdout
    for line in goal_lines:
        assert " ratio " in line, line
