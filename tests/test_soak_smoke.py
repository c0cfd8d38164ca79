"""Smoke run of the soak benchmark: ``python -m bench.soak`` holds its load and reports.

No figure is compared with a goal here (they depend on the machine; the
10-minute figures are in docs/operations.md); only that every request
succeeded and that each interval row, the totals and the memory verdict are
printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_soak_runs_a_mixed_load_and_reports_memory() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "8", "--interval", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    rows = re.findall(r"^\s+\d+ \|(?:\s+[\d.]+\s+[\d.]+ \|){4}\s+0\s+[\d,]+ \|", out, re.M)
    assert len(rows) == 4, out  # one per 2 s interval, no request errors in any
    for kind in ("append", "inclusion", "poll", "consistency"):
        m = re.search(rf"^  {kind}\s+([\d,]+) ", out, re.M)
        assert m and int(m.group(1).replace(",", "")) > 0, f"no {kind} requests:\n{out}"
    assert "request errors: 0" in out
    assert "server exit status after SIGTERM: 0" in out
    assert re.search(r"^memory verdict, anonymous \(heap\): (flat|GREW) \(", out, re.M), out
    assert re.search(r"VmRSS [\d.]+ at start, [\d.]+ after warm-up, [\d.]+ at the end", out), out
