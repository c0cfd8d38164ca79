"""A dishonest log against the monitor: every lie is caught, proven, and changes nothing trusted.

Each scenario starts a monitor on an honest :class:`FakeLog`, lets it trust
a checkpoint and follow some honest growth, then makes the log lie once. The
monitor must fail that poll with the right kind of evidence, the evidence
must hold when re-checked offline (library and ``sealog check-evidence``),
and the state file must be byte for byte what it was before the lie.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dishonest_log import FakeLog, FakeLogServer, make_leaves
from e2e_support import flip, run_sealog
from rfc6962_reference import ReferenceTree

from sealog.client.cosignature import Cosigner, cosign_checkpoint
from sealog.client.keyfile import write_private_key_file
from sealog.client.monitor.config import LogConfig, MonitorConfig
from sealog.client.monitor.evidence import Evidence, check_evidence, read_evidence
from sealog.client.monitor.follow import EXIT_FAILURE_DETECTED, LogMonitor, Monitor, PollResult
from sealog.client.note import Ed25519Signer

LOG_KEY = Ed25519Signer.generate("dishonest.example/log")
WITNESS = Cosigner.generate("witness.example/w1")


@dataclass
class Harness:
    tmp: Path
    fake: FakeLog
    server: FakeLogServer
    monitors: list[LogMonitor]

    def monitor(self, name: str = "m", **options: object) -> LogMonitor:
        config = LogConfig(
            name=name,
            target=self.server.target,
            vkey=LOG_KEY.verifier().vkey,
            state_dir=self.tmp / "state" / name,
            poll_interval_s=0,
            page_size=5,
            **options,  # type: ignore[arg-type]
        )
        m = LogMonitor(config, out=io.StringIO(), err=io.StringIO())
        self.monitors.append(m)
        return m


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    fake = FakeLog(LOG_KEY, make_leaves([b"event %d" % i for i in range(8)]))
    server = FakeLogServer(fake)
    h = Harness(tmp_path, fake, server, [])
    yield h
    for m in h.monitors:
        m.close()
    server.stop()


def assert_caught(monitor: LogMonitor, kind: str, *, audit_progress: bool = False) -> Evidence:
    """Poll once more: it must fail with ``kind``, keep its state, and prove it.

    With ``audit_progress``, the poll may save what it verified before the failure
    (a consistent checkpoint, audited pages); the test checks those itself.
    """
    before = monitor.state_path.read_bytes()
    result = monitor.poll()
    assert result.outcome == "failed", result.line
    assert result.evidence is not None and result.evidence.exists()
    assert f"FAILED {kind}" in result.line
    if audit_progress:
        before = monitor.state_path.read_bytes()
    assert monitor.state_path.read_bytes() == before, "a failed check changed the trusted state"
    evidence = read_evidence(result.evidence)
    assert evidence.kind == kind
    verdict = check_evidence(evidence, LOG_KEY.verifier())
    assert verdict.holds, verdict.report()
    # The same lie again: same evidence file, state still untouched.
    again = monitor.poll()
    assert again.failed and again.evidence == result.evidence
    assert monitor.state_path.read_bytes() == before
    return evidence


def trust_and_follow(fake: FakeLog, *monitors: LogMonitor) -> None:
    """Each monitor trusts the log at size 8 on first use, then follows it to 13."""
    for monitor in monitors:
        first = monitor.poll()
        assert first.outcome == "ok" and first.size == 8, first.line
        assert isinstance(monitor.out, io.StringIO)
        assert "TRUST ON FIRST USE" in monitor.out.getvalue()
    fake.append([b"more %d" % i for i in range(5)])
    for monitor in monitors:
        second = monitor.poll()
        assert second.outcome == "ok" and second.size == 13, second.line


# --- the lies ---------------------------------------------------------------------------------
def rewrite_history(fake: FakeLog) -> None:
    """Entry 2 rewritten, the tree recomputed and extended, and signed."""
    forked = list(fake.leaves)
    forked[2] = make_leaves([b"event 2 (rewritten)"])[0]
    forked += make_leaves([b"after the rewrite"])
    fake.view = forked


def roll_back(fake: FakeLog) -> None:
    """A genuine, older checkpoint served as the latest."""
    fake.latest_note = fake.note(fake.leaves, 10)


def break_signature(fake: FakeLog) -> None:
    fake.append([b"x"])
    fake.latest_note = flip(fake.note(), -10)


def same_size_other_tree(fake: FakeLog) -> None:
    """A different tree of the size the monitor trusts."""
    other = list(fake.leaves)
    other[12] = make_leaves([b"not what was logged"])[0]
    fake.view = other


@pytest.mark.parametrize(
    ("lie", "kind"),
    [
        (rewrite_history, "inconsistent"),
        (roll_back, "rollback"),
        (break_signature, "bad_signature"),
        (same_size_other_tree, "split_view"),
    ],
    ids=["rewritten-past-entry", "rolled-back-checkpoint", "bad-signature", "same-size-fork"],
)
def test_each_lie_is_caught_with_evidence_and_state_kept(
    harness: Harness, lie: Callable[[FakeLog], None], kind: str
) -> None:
    monitor = harness.monitor()
    trust_and_follow(harness.fake, monitor)
    lie(harness.fake)
    evidence = assert_caught(monitor, kind)
    assert evidence.trusted and evidence.checkpoint
    assert monitor.state is not None and monitor.state.checkpoint.checkpoint.size == 13


def test_altered_stored_entry_is_caught_only_by_a_full_audit(harness: Harness) -> None:
    auditor = harness.monitor("auditor", full_audit=True)
    plain = harness.monitor("plain")
    trust_and_follow(harness.fake, auditor, plain)
    # The operator edits a stored entry the monitors have not downloaded yet; the stored
    # hashes, and so every proof and checkpoint, stay as they were.
    harness.fake.append([b"payment %d" % i for i in range(20)])
    harness.fake.altered_entries[17] = make_leaves([b"payment 4 (edited)"])[0]
    assert plain.poll().outcome == "ok"  # proofs alone cannot see it
    evidence = assert_caught(auditor, "root_mismatch", audit_progress=True)
    assert evidence.audit_start == 13  # the page [13, 18) holds leaf 17
    assert auditor.state is not None and auditor.state.audited == 13
    # The state kept the verified part of the audit and the consistent checkpoint.
    assert auditor.state.checkpoint.checkpoint.size == 33


def test_fork_served_to_one_monitor_is_a_split_view_against_the_witnesses(
    harness: Harness, tmp_path: Path
) -> None:
    # Two endpoints of the same log key: the honest one, and one serving a fork to
    # monitor B. Monitor A witnesses the honest log; B requires that witness.
    key_file = tmp_path / "w1.key"
    write_private_key_file(key_file, WITNESS.skey)
    fork = FakeLog(LOG_KEY, list(harness.fake.leaves))
    fork_server = FakeLogServer(fork)
    try:
        a = harness.monitor("a", cosigner_key_file=key_file)
        trust_and_follow(harness.fake, a)
        fork.leaves = list(harness.fake.leaves)
        b_config = {"witnesses": (WITNESS.verifier().vkey,)}
        b = LogMonitor(
            LogConfig(
                name="b",
                target=fork_server.target,
                vkey=LOG_KEY.verifier().vkey,
                state_dir=tmp_path / "state" / "b",
                poll_interval_s=0,
                **b_config,  # type: ignore[arg-type]
            ),
            out=io.StringIO(),
            err=io.StringIO(),
        )
        harness.monitors.append(b)
        # The log relays what its witness cosigned to everyone.
        fork.witnessed_note = harness.fake.witnessed_note
        assert b.poll().outcome == "ok"
        # Now both grow by 3, differently. Only A sees (and cosigns) the honest tree.
        harness.fake.append([b"honest %d" % i for i in range(3)])
        fork.append([b"forked %d" % i for i in range(3)])
        assert a.poll().outcome == "ok"
        fork.witnessed_note = harness.fake.witnessed_note
        assert a.poll().outcome == "ok"
        evidence = assert_caught(b, "split_view")
        verdict = check_evidence(evidence, LOG_KEY.verifier())
        assert "PROVES" in verdict.proves
        assert a.poll().outcome == "ok"  # no alarm on the honest side
    finally:
        fork_server.stop()


def test_stale_witness_cosignature_is_caught(harness: Harness) -> None:
    monitor = harness.monitor(witnesses=(WITNESS.verifier().vkey,))
    cosigned = cosign_checkpoint(harness.fake.note(), WITNESS, 1_700_000_000)
    harness.fake.witnessed_note = cosigned
    trust_and_follow(harness.fake, monitor)
    # The log moves on and re-uses the witness's old line on its new checkpoint.
    old_line = cosigned.split(b"\n\n", 1)[1].split(b"\n")[1] + b"\n"
    harness.fake.witnessed_note = harness.fake.note() + old_line
    evidence = assert_caught(monitor, "invalid_cosignature")
    assert evidence.witness_vkey == WITNESS.verifier().vkey


@pytest.mark.slow
def test_check_evidence_cli_confirms_and_refuses(harness: Harness, tmp_path: Path) -> None:
    monitor = harness.monitor()
    trust_and_follow(harness.fake, monitor)
    rewrite_history(harness.fake)
    result = monitor.poll()
    assert result.evidence is not None
    vkey = LOG_KEY.verifier().vkey
    ok = run_sealog("check-evidence", str(result.evidence), "--vkey", vkey, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "EVIDENCE HOLDS (inconsistent)" in ok.stdout and "PROVES" in ok.stdout
    # Another key: the notes are not that log's, so nothing is proven.
    other = Ed25519Signer.generate("dishonest.example/log").verifier().vkey
    bad = run_sealog("check-evidence", str(result.evidence), "--vkey", other, cwd=tmp_path)
    assert bad.returncode == 1 and "DOES NOT HOLD" in bad.stdout
    # Evidence made up from an honest pair (a proof that verifies) is refused.
    obj = json.loads(result.evidence.read_text())
    harness.fake.view = None
    harness.fake.append([b"honest growth"])
    obj["checkpoint"]["text"] = harness.fake.note().decode()
    proof = ReferenceTree(harness.fake.leaves).proof(13, 14)
    obj["consistency_proof"] = [base64.b64encode(h).decode() for h in proof]
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(obj))
    refused = run_sealog("check-evidence", str(forged), "--vkey", vkey, cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{}")
    assert run_sealog("check-evidence", str(garbage), "--vkey", vkey, cwd=tmp_path).returncode == 1


def test_on_failure_continue_alerts_once_and_keeps_polling(
    harness: Harness, tmp_path: Path
) -> None:
    alerts = tmp_path / "alerts.txt"
    command = (
        sys.executable,
        "-c",
        "import os, sys; open(sys.argv[1], 'a').write("
        "os.environ['SEALOG_EVIDENCE_KIND'] + ' ' + sys.argv[2] + '\\n')",
        str(alerts),
    )
    monitor = harness.monitor(on_failure="continue", alert_command=command)
    trust_and_follow(harness.fake, monitor)
    roll_back(harness.fake)
    results: list[PollResult] = [monitor.poll() for _ in range(3)]
    assert all(r.failed for r in results)
    assert "alert sent" in results[0].line and "already reported" in results[2].line
    lines = alerts.read_text().splitlines()  # one alert per piece of evidence
    assert len(lines) == 1 and lines[0].startswith("rollback ")
    assert Path(lines[0].split(" ", 1)[1]) == results[0].evidence
    # The log turns honest again (it never lost the entries): the monitor carries on.
    harness.fake.latest_note = None
    harness.fake.append([b"back"])
    assert monitor.poll().outcome == "ok"


def test_monitor_run_stops_with_status_3_on_failure(harness: Harness, tmp_path: Path) -> None:
    config = MonitorConfig.from_dict(
        {
            "state_dir": "state",
            "poll_interval": 0,
            "log": [
                {"name": "fake", "target": harness.server.target, "vkey": LOG_KEY.verifier().vkey}
            ],
        },
        tmp_path,
    )
    out = io.StringIO()
    with Monitor(config, out=out, err=io.StringIO()) as monitor:
        assert monitor.run(max_polls=3) == 0
        break_signature(harness.fake)
        assert monitor.run(max_polls=100) == EXIT_FAILURE_DETECTED
    assert "FAILED bad_signature" in out.getvalue()
