"""``python -m bench.core --quick`` runs and reports every rate it promises (no timing checks)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_quick_bench_reports_every_rate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    core = importlib.import_module("bench.core")

    assert core.main(["--quick"]) == 0

    out = capsys.readouterr().out
    for size in (10, 20, 30):
        assert re.search(rf"^inclusion proof verifications, size 2\^{size} +[\d,]+/s", out, re.M)
        assert re.search(rf"^consistency proof verifications, size 2\^{size} +[\d,]+/s", out, re.M)
    assert re.search(r"^inclusion .* 2\^20 .*goal +15,000/s +[\d.]+x", out, re.M)
    assert re.search(r"^compact range appends .*goal +250,000/s +[\d.]+x", out, re.M)
    assert re.search(r"^Ed25519 verifications .*[\d,]+/s", out, re.M)
    assert re.search(r"^signed checkpoint notes opened .*[\d,]+/s", out, re.M)
