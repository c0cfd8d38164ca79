"""The auditor: events by index, leaf hash, leaf, payload or receipts, proven or reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from e2e_support import RunningLog, TamperInterceptor, run_sealog

from sealog.client.monitor.audit import SoughtEvent, audit_events, events_from_jsonl


def test_audit_events_of_every_kind(log: RunningLog) -> None:
    client = log.client()
    result = client.append_batch([b"deploy %d" % i for i in range(20)])
    receipt = result.receipt(7)
    cp = client.checkpoint()
    events = [
        SoughtEvent("by index", index=3),
        SoughtEvent("by leaf hash", leaf_hash=result.entries[9].leaf_hash),
        SoughtEvent("by leaf", leaf=result.entries[11].leaf),
        SoughtEvent("by leaf and index", leaf=receipt.leaf, index=7),
        SoughtEvent("by payload", payload=b"deploy 15"),
        SoughtEvent("by payload and index", payload=b"deploy 4", index=4),
        SoughtEvent("wrong index", leaf=receipt.leaf, index=8),
        SoughtEvent("unknown payload", payload=b"never logged"),
        SoughtEvent("unknown leaf hash", leaf_hash=b"\x42" * 32),
        SoughtEvent("beyond", index=99),
    ]
    results = {r.event.label: r for r in audit_events(client, events, cp)}
    for label, index in [
        ("by index", 3),
        ("by leaf hash", 9),
        ("by leaf", 11),
        ("by leaf and index", 7),
        ("by payload", 15),
        ("by payload and index", 4),
    ]:
        r = results[label]
        assert r.status == "included" and r.index == index, (label, r)
        assert r.tree_size == 20 and r.inclusion_proof
    assert results["wrong index"].status == "mismatch"
    assert results["unknown payload"].status == "not_found"
    assert results["unknown leaf hash"].status == "not_found"
    assert results["beyond"].status == "not_found"


def test_a_lying_log_is_an_error_never_included(log: RunningLog) -> None:
    log.client().append_batch([b"a", b"b", b"c"])

    def lie(response: object) -> None:
        response.inclusion_proof[0] = b"\x00" * 32  # type: ignore[attr-defined]

    client = log.client_with(TamperInterceptor(mutate={"GetEntryAndProof": lie}))
    (r,) = audit_events(client, [SoughtEvent("x", index=1)], client.checkpoint())
    assert r.status == "error" and "verification" in r.detail


def test_events_from_jsonl() -> None:
    events = events_from_jsonl(
        [
            '{"index": 1}',
            "",
            '{"leaf_hash": "' + "ab" * 32 + '", "label": "mine"}',
            '{"payload": "hi"}',
            '{"payload_b64": "aGk="}',
        ],
        "b.jsonl",
    )
    assert [e.label for e in events] == ["b.jsonl:1", "mine", "b.jsonl:4", "b.jsonl:5"]
    assert events[2].payload == events[3].payload == b"hi"
    for bad in ['{"index": "1"}', "[1]", "nope", "{}", '{"leaf_hash": "zz"}']:
        with pytest.raises(ValueError):
            events_from_jsonl([bad])


@pytest.mark.slow
def test_audit_cli_with_receipts(tmp_path: Path, log: RunningLog) -> None:
    common = ("--target", log.target, "--vkey", log.verifier.vkey)
    appended = run_sealog("append", *common, "--json", stdin="x\ny\nz\n", cwd=tmp_path)
    assert appended.returncode == 0, appended.stderr
    (tmp_path / "receipts.jsonl").write_text(appended.stdout)
    (tmp_path / "y.txt").write_bytes(b"y")
    report = run_sealog(
        "audit", *common, "--batch", "receipts.jsonl", "--payload-file", "y.txt", cwd=tmp_path
    )
    assert report.returncode == 0, report.stdout + report.stderr
    assert "4 of 4 included in the tree of size 3" in report.stdout
    as_json = run_sealog("audit", *common, "--index", "0", "--index", "5", "--json", cwd=tmp_path)
    assert as_json.returncode == 1
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["status"] for r in rows] == ["included", "not_found"]
    assert rows[0]["checkpoint"]["tree_size"] == 3
