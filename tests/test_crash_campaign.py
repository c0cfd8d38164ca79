"""The crash campaign (``python -m bench.crash_campaign``) passes a short run, and catches a loss.

The long run is a benchmark (docs/operations.md has its figures); CI runs a
few cycles of the same code: ``kill -9`` under load, fsck, restart, verify.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.slow  # kills sealog serve processes

REPO = Path(__file__).resolve().parent.parent


def _figure(out: str, label: str) -> int:
    m = re.search(rf"^{re.escape(label)}\s+([\d,]+)", out, re.M)
    assert m, f"no figure {label!r} in:\n{out}"
    return int(m.group(1).replace(",", ""))


def test_three_kill_9_cycles_lose_nothing() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.crash_campaign",
            *("--cycles", "3", "--clients", "3", "--seed", "6962", "--max-delay", "0.6"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{proc.stderr}"
    assert _figure(out, "cycles run") == 3
    assert _figure(out, "acknowledged entries") > 0
    assert _figure(out, "acknowledged entries lost (must be 0)") == 0
    assert _figure(out, "restarts that failed the self-check (must be 0)") == 0
    assert _figure(out, "fsck runs") == 4  # after each kill, and after the final SIGTERM
    assert _figure(out, "fsck failures (must be 0)") == 0
    assert _figure(out, "checkpoint rollbacks (must be 0)") == 0
    assert _figure(out, "exit status after the final SIGTERM") == 0
    assert "verdict: ok" in out
    # Every kill is followed by fsck and a restart that passed the self-check.
    assert len(re.findall(r"cycle \d/3: killed .* restarted at size \d+", proc.stderr)) == 3


@pytest.fixture
def campaign(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("bench.crash_campaign")


def test_a_lost_acknowledged_entry_fails_the_campaign(
    campaign: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The checker is not blind: an acknowledgment the log does not hold is reported as lost."""
    ledger_class = campaign.Ledger
    # As if the server had acknowledged an entry far beyond anything it stored.
    monkeypatch.setattr(campaign, "Ledger", lambda: ledger_class(acked={10**9: b"never stored"}))

    status = campaign.main(
        ["--cycles", "1", "--clients", "1", "--max-delay", "0.3", "--data-dir", str(tmp_path / "d")]
    )

    out = capsys.readouterr().out
    assert status == 1
    assert _figure(out, "acknowledged entries lost (must be 0)") == 1
    assert "verdict: FAILED" in out
    assert "acknowledged entries lost, first at index 1000000000" in out
