"""Smoke test of ``python -m bench.witness_limits``: both parts run and print their figures.

No timing is asserted; tiny counts and short clocks keep it quick.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_bench_witness_limits_reports_threads_sockets_and_pushes() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.witness_limits",
            "--stalled",
            "6",
            "--header-timeout",
            "0.5",
            "--body-timeout",
            "0.5",
            "--appends",
            "20",
            "--seconds",
            "0.2",
            "--interval",
            "0.3",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for line in ("  before:  threads", "  stalled: threads", "  after:   threads"):
        assert line in out, out
    assert "a real request meanwhile: cosigned" in out, out
    assert "add-checkpoint requests during the appends:" in out, out
    assert "newest checkpoint cosigned" in out, out
