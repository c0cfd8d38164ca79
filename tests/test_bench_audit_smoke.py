"""``python -m bench.audit --quick`` fills a log, audits it in full and reports the rate."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark

REPO = Path(__file__).resolve().parent.parent


def test_quick_audit_bench_reports_its_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    audit = importlib.import_module("bench.audit")

    assert audit.main(["--entries", "20000"]) == 0

    out = capsys.readouterr().out
    assert re.search(r"^full-audit catch-up \(leaves/s\) +[\d,]+/s +goal +100,000/s", out, re.M)
    assert "20,000 leaves downloaded, re-parsed, re-hashed and checked" in out
