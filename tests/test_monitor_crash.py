"""kill -9 a `sealog monitor` mid full audit; the restart resumes, trusting nothing new."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import Serve, run_sealog, sealog_command

from sealog.client.checkpoint import open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Verifier

ENTRIES = 3000


def read_state(path: Path) -> dict[str, object] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (FileNotFoundError, ValueError):
        return None


@pytest.mark.slow
def test_monitor_killed_mid_audit_resumes_without_trusting_anything_new(
    serve: Serve, tmp_path: Path
) -> None:
    server = serve(tmp_path / "data")
    client = LogClient(server.target, server.vkey)
    for start in range(0, ENTRIES, 1000):
        client.append_batch([b"event %d" % i for i in range(start, start + 1000)])
    leaves = [e.leaf for e in client.entries()]
    client.close()
    (tmp_path / "mon.toml").write_text(
        f"""
state_dir = "state"
poll_interval = 0
[[log]]
name = "log"
target = "{server.target}"
vkey = "{server.vkey}"
full_audit = true
page_size = 5
save_interval = 0
""",
        encoding="utf-8",
    )
    state_path = tmp_path / "state" / "log" / "state.json"
    with (tmp_path / "monitor.out").open("w") as out:
        monitor = subprocess.Popen(
            [*sealog_command(), "monitor", "mon.toml", "--once"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stopped = False
    try:
        # Wait for a save part-way through the audit, freeze the server so the audit
        # cannot finish, and kill the monitor without warning.
        deadline = time.monotonic() + 60
        while True:
            state = read_state(state_path)
            audit = state.get("audit") if state else None
            if isinstance(audit, dict) and 0 < int(audit["size"]) < ENTRIES:
                break
            assert monitor.poll() is None, (tmp_path / "monitor.out").read_text()
            assert time.monotonic() < deadline, "the monitor never saved audit progress"
            time.sleep(0.001)
        os.kill(server.proc.pid, signal.SIGSTOP)
        stopped = True
        time.sleep(0.3)  # let it drain what was already in flight
        os.kill(monitor.pid, signal.SIGKILL)
        monitor.wait(30)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait(30)
        if stopped:
            os.kill(server.proc.pid, signal.SIGCONT)

    # What survived the crash is a complete, verified state: a checkpoint signed by the
    # log, and an audit frontier that is exactly that of the first `audited` leaves.
    state = read_state(state_path)
    assert state is not None, "the state file is torn"
    verifier = Ed25519Verifier.from_vkey(server.vkey)
    signed = open_checkpoint(str(state["checkpoint"]).encode(), verifier)
    assert signed.checkpoint.size == ENTRIES
    audit = state["audit"]
    assert isinstance(audit, dict)
    audited = int(audit["size"])
    assert 0 < audited < ENTRIES, audited
    own = CompactRange()
    own.extend(leaf_hash(leaf) for leaf in leaves[:audited])
    assert [base64.b64decode(h) for h in audit["frontier"]] == list(own.hashes)

    # The restart picks up where the audit stopped, and finishes it.
    again = run_sealog("monitor", "mon.toml", "--once", cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming the full audit at leaf {audited:,} of {ENTRIES:,}" in again.stdout
    assert "TRUST ON FIRST USE" not in again.stdout
    assert f"ok size {ENTRIES:,}" in again.stdout and f"audited {ENTRIES:,}" in again.stdout
    final = read_state(state_path)
    assert final is not None and final["audit"]["size"] == ENTRIES  # type: ignore[index]
