"""The monitor against an honest log: thousands of polls, no alarm; config, state and TOFU."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import TextIO

import pytest
from e2e_support import OpenLog, RunningLog, recompute_root, run_sealog

from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.cosignature import Cosigner
from sealog.client.errors import MonitorStateError
from sealog.client.keyfile import write_private_key_file
from sealog.client.monitor.config import LogConfig, MonitorConfig
from sealog.client.monitor.follow import LogMonitor
from sealog.client.monitor.state import load_state
from sealog.client.note import Ed25519Signer

W1 = Cosigner.generate("w1.example/witness")
W2 = Cosigner.generate("w2.example/witness")


def make_monitor(log: RunningLog, state_dir: Path, **options: object) -> LogMonitor:
    config = LogConfig(
        name=state_dir.name,
        target=log.target,
        vkey=log.verifier.vkey,
        state_dir=state_dir,
        poll_interval_s=0,
        **options,  # type: ignore[arg-type]
    )
    return LogMonitor(config, out=io.StringIO(), err=io.StringIO())


def _printed(stream: TextIO) -> str:
    """What a monitor from :func:`make_monitor` has written so far to ``out`` or ``err``."""
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


@pytest.mark.slow
def test_honest_log_raises_no_alarm_over_thousands_of_polls(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log = open_log(witnesses=[W1.verifier(), W2.verifier()])
    client = log.client()
    keys = []
    for w in (W1, W2):
        write_private_key_file(tmp_path / f"{w.name.split('.')[0]}.key", w.skey)
        keys.append(tmp_path / f"{w.name.split('.')[0]}.key")
    witnesses = (W1.verifier().vkey, W2.verifier().vkey)
    monitors = [
        # A witness that audits every entry, a witness that checks proofs only, and a
        # monitor that requires both witnesses' cosignatures on what the log shows them.
        make_monitor(log, tmp_path / "audit", full_audit=True, cosigner_key_file=keys[0]),
        make_monitor(log, tmp_path / "proofs", cosigner_key_file=keys[1]),
        make_monitor(log, tmp_path / "policy", witnesses=witnesses, witness_threshold=1),
    ]
    rng = random.Random(6962)
    polls = 0
    try:
        client.append_batch([b"seed %d" % i for i in range(50)])
        for round_ in range(800):
            if rng.random() < 0.7:
                client.append_batch(
                    [b"event %d.%d" % (round_, i) for i in range(rng.randint(1, 4))]
                )
            for monitor in monitors:
                result = monitor.poll()
                polls += 1
                assert result.outcome == "ok", result.line
                assert not result.warnings or round_ == 0, result.warnings
        size = client.checkpoint().checkpoint.size
        for monitor in monitors:
            assert monitor.poll().size == size
            assert not monitor.evidence_dir.exists()
        audit = monitors[0].state
        assert audit is not None and audit.audited == size
        assert recompute_root(client.entries()) == (size, audit.checkpoint.checkpoint.root_hash)
        # Both witnesses cosigned the last checkpoint: a 2-of-2 client accepts it.
        strict = log.client(witnesses=list(witnesses))
        assert strict.checkpoint().checkpoint.size == size
    finally:
        for monitor in monitors:
            monitor.close()
    assert polls >= 2400


def test_state_is_replaced_only_by_verified_checkpoints(log: RunningLog, tmp_path: Path) -> None:
    client = log.client()
    client.append_batch([b"a", b"b"])
    monitor = make_monitor(log, tmp_path / "m")
    try:
        first = monitor.poll()
        assert first.outcome == "ok" and first.size == 2
        assert "TRUST ON FIRST USE" in _printed(monitor.out)
        saved = json.loads(monitor.state_path.read_text())
        assert saved["checkpoint"].encode() == client.checkpoint().note
        assert saved["log_vkey"] == log.verifier.vkey and "audit" not in saved
        client.append(b"c")
        assert monitor.poll().size == 3
        assert "(+1)" in _printed(monitor.out)
    finally:
        monitor.close()
    # A restart reads the state, re-verifies it, and does not trust on first use again.
    again = make_monitor(log, tmp_path / "m")
    try:
        assert again.state is not None and again.state.checkpoint.checkpoint.size == 3
        assert again.poll().outcome == "ok"
        assert "TRUST ON FIRST USE" not in _printed(again.out)
        # Two monitors never share a state folder.
        with pytest.raises(MonitorStateError, match="another monitor"):
            make_monitor(log, tmp_path / "m")
    finally:
        again.close()


def test_pinned_checkpoint_instead_of_tofu(log: RunningLog, tmp_path: Path) -> None:
    client = log.client()
    client.append_batch([b"a", b"b", b"c"])
    pin = tmp_path / "pin.cp"
    pin.write_bytes(client.checkpoint().note)
    client.append(b"d")
    monitor = make_monitor(log, tmp_path / "m", pinned_checkpoint=pin, full_audit=True)
    try:
        result = monitor.poll()
        assert result.outcome == "ok" and result.size == 4 and result.audited == 4
        out = _printed(monitor.out)
        assert "pinned checkpoint" in out and "TRUST ON FIRST USE" not in out
    finally:
        monitor.close()


def test_state_for_another_key_or_tampered_is_refused(log: RunningLog, tmp_path: Path) -> None:
    log.client().append(b"a")
    monitor = make_monitor(log, tmp_path / "m", full_audit=True)
    monitor.poll()
    monitor.close()
    path = tmp_path / "m" / "state.json"
    state = json.loads(path.read_text())
    # Someone edits the trusted checkpoint: its signature no longer verifies.
    edited = dict(state, checkpoint=state["checkpoint"].replace("\n1\n", "\n2\n", 1))
    path.write_text(json.dumps(edited))
    with pytest.raises(MonitorStateError, match="does not verify"):
        make_monitor(log, tmp_path / "m")
    # An audit frontier that does not lead to the checkpoint's root.
    broken = dict(state, audit={"size": 1, "frontier": ["A" * 43 + "="]})
    path.write_text(json.dumps(broken))
    with pytest.raises(MonitorStateError, match="root"):
        make_monitor(log, tmp_path / "m", full_audit=True)
    path.write_text("not json")
    with pytest.raises(MonitorStateError, match="not a monitor state"):
        make_monitor(log, tmp_path / "m")


@pytest.mark.slow
def test_unreachable_log_is_an_error_not_evidence(log: RunningLog, tmp_path: Path) -> None:
    log.client().append(b"a")
    monitor = make_monitor(log, tmp_path / "m", timeout_s=2.0)
    try:
        assert monitor.poll().outcome == "ok"
        log.stop()
        result = monitor.poll()
        assert result.outcome == "error" and "trusted state kept" in result.line
        assert not monitor.evidence_dir.exists()
    finally:
        monitor.close()


def test_config_file(tmp_path: Path) -> None:
    vkey = Cosigner.generate("x").verifier().vkey
    real = Ed25519Signer.generate("example.com/log").verifier().vkey
    name, key_id, key = real.split("+", 2)
    log_key = f"{name}+{int(key_id, 16) ^ 1:08x}+{key}"
    (tmp_path / "mon.toml").write_text(
        f"""
state_dir = "st"
poll_interval = 5
on_failure = "continue"
alert_command = "notify --urgent"
witnesses = ["{vkey}"]

[[log]]
name = "payments"
target = "127.0.0.1:1"
vkey_file = "log.vkey"
full_audit = true
pinned_checkpoint = "pin.cp"
""",
        encoding="utf-8",
    )
    (tmp_path / "log.vkey").write_text(real + "\n")
    config = MonitorConfig.load(tmp_path / "mon.toml")
    (log,) = config.logs
    assert log.name == "payments" and log.vkey == real
    assert log.state_dir == tmp_path / "st" / "payments"
    assert log.poll_interval_s == 5 and log.on_failure == "continue"
    assert log.alert_command == ("notify", "--urgent")
    assert log.witnesses == (vkey,) and log.full_audit
    assert log.pinned_checkpoint == tmp_path / "pin.cp"
    refused: list[tuple[dict[str, object], str]] = [
        ({"log": [{"target": "x", "vkey": real, "typo": 1}]}, "unknown settings"),
        ({"log": [{"target": "x"}]}, "give the log's key"),
        ({"log": [{"vkey": real}]}, "target"),
        ({"log": [{"target": "x", "vkey": real, "on_failure": "panic"}]}, "on_failure"),
        ({"log": [{"target": "x", "vkey": log_key}]}, "key hash"),
        ({"log": []}, "no \\[\\[log\\]\\]"),
        (
            {"log": [{"target": "x", "vkey": real, "witnesses": [vkey], "witness_threshold": 2}]},
            "threshold",
        ),
    ]
    for bad, match in refused:
        with pytest.raises(ValueError, match=match):
            MonitorConfig.from_dict(bad, tmp_path)


def test_loaded_state_is_reverified(log: RunningLog, tmp_path: Path) -> None:
    log.client().append(b"a")
    monitor = make_monitor(log, tmp_path / "m")
    monitor.poll()
    monitor.close()
    state = load_state(tmp_path / "m" / "state.json", log.verifier, log.origin, full_audit=False)
    assert state is not None and isinstance(state.checkpoint, SignedCheckpoint)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "summary"),
    [
        ("monitor", "follow logs"),
        ("check-evidence", "re-verify a monitor's evidence file offline"),
        ("audit", "prove that events are in the log"),
        ("verify", "verify a proof bundle offline"),
        ("witness", "run a c2sp witness"),
    ],
)
def test_new_commands_say_what_they_do(tmp_path: Path, command: str, summary: str) -> None:
    listing = run_sealog("--help", cwd=tmp_path).stdout
    assert command in listing
    result = run_sealog(command, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert summary in " ".join(result.stdout.lower().split())


@pytest.mark.slow
def test_full_audit_catch_up_shows_progress(log: RunningLog, tmp_path: Path) -> None:
    client = log.client()
    for start in range(0, 12_000, 1000):
        client.append_batch([b"e%d" % i for i in range(start, start + 1000)])
    monitor = make_monitor(log, tmp_path / "m", full_audit=True, page_size=1000)
    try:
        result = monitor.poll()
    finally:
        monitor.close()
    assert result.outcome == "ok" and result.audited == 12_000
    progress = _printed(monitor.err)
    assert "m: full audit:" in progress and "leaves" in progress and "/s ETA" in progress
    assert "12,000/12,000 leaves (100.0%)" in progress and "done in" in progress
    # Caught up: the next poll is one status line, no progress.
    again = make_monitor(log, tmp_path / "m", full_audit=True)
    try:
        assert again.poll().outcome == "ok"
        assert _printed(again.err) == ""
    finally:
        again.close()
