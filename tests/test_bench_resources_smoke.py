"""``python -m bench.resources --quick`` runs and reports every figure it promises."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs a benchmark

REPO = Path(__file__).resolve().parent.parent


def test_quick_resource_bench_reports_rss_against_its_bounds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(REPO))
    resources = importlib.import_module("bench.resources")

    assert resources.main(["--quick"]) == 0

    out = capsys.readouterr().out
    assert re.search(r"^unread GetEntries streams .* +80$", out, re.M)
    assert re.search(r"^  admitted .* +64 / 16$", out, re.M)
    assert re.search(r"^idle TCP connections that never send a byte +300$", out, re.M)
    assert len(re.findall(r"^  bound: .* +[\d,]+  ratio [\d.]+$", out, re.M)) == 2
    assert (
        len(re.findall(r"^  (normal|new) client's append and proof meanwhile +ok$", out, re.M)) == 2
    )
    assert re.search(r"^  closed by the server .* +300$", out, re.M)
    assert "all within bounds" in out
