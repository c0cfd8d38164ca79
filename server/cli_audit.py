"""The ``sealog`` commands monitors and auditors run.

monitor follows logs; check-evidence re-verifies what a monitor caught; audit proves
events are in a log; verify checks a proof bundle offline.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from sealog.client import display
from sealog.client.checkpoint import open_checkpoint
from sealog.client.errors import SealogError
from sealog.client.leaf import Leaf
from sealog.client.monitor.audit import SoughtEvent, audit_events, events_from_jsonl
from sealog.client.monitor.bundle import ProofBundle
from sealog.client.monitor.config import MonitorConfig
from sealog.client.monitor.evidence import check_evidence, read_evidence
from sealog.client.monitor.follow import Monitor
from sealog.server.cli_client import (
    b64,
    checkpoint_json,
    client_from_args,
    emit,
    leaf_json,
    verifier_from_args,
    witness_keys,
    witness_policy_from_args,
)

__all__ = ["cmd_audit", "cmd_check_evidence", "cmd_monitor", "cmd_verify"]


def cmd_monitor(args: argparse.Namespace) -> int:
    config = MonitorConfig.load(args.config)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with Monitor(config) as monitor:
        if args.once:
            results = monitor.run_once()
            if any(r.failed for r in results):
                return 3
            return 1 if any(r.outcome == "error" for r in results) else 0
        return monitor.run(max_polls=args.polls, stop=stop)


def cmd_check_evidence(args: argparse.Namespace) -> int:
    evidence = read_evidence(args.file)
    witnesses = witness_keys(args.witness_vkey)
    verdict = check_evidence(
        evidence,
        verifier_from_args(args),
        origin=args.origin,
        witness=witnesses[0] if witnesses else None,
    )
    emit(
        args,
        {
            "holds": verdict.holds,
            "kind": verdict.kind,
            "findings": verdict.findings,
            "proves": verdict.proves,
            "observed_at": evidence.observed_at,
            "summary": evidence.summary,
        },
        f"{display.escape(evidence.summary)} (observed {display.escape(evidence.observed_at)})\n"
        f"{verdict.report()}",
    )
    return 0 if verdict.holds else 1


def _audit_events(args: argparse.Namespace) -> list[SoughtEvent]:
    events = [SoughtEvent(f"index {i}", index=i) for i in args.index or ()]
    events += [
        SoughtEvent(f"leaf hash {h[:16]}", leaf_hash=bytes.fromhex(h)) for h in args.leaf_hash or ()
    ]
    events += [SoughtEvent(f, payload=Path(f).read_bytes()) for f in args.payload_file or ()]
    for batch in args.batch or ():
        if batch == "-":
            events += events_from_jsonl(sys.stdin, "stdin")
        else:
            with open(batch, encoding="utf-8") as f:
                events += events_from_jsonl(f, batch)
    if not events:
        raise SealogError("no events: give --index, --leaf-hash, --payload-file or --batch")
    return events


def cmd_audit(args: argparse.Namespace) -> int:
    events = _audit_events(args)
    with client_from_args(args) as client:
        if args.checkpoint:
            cp = open_checkpoint(
                Path(args.checkpoint).read_bytes(), client.verifier, origin=client.origin
            )
            cosigned = client.check_witnesses(cp)
        else:
            cp = client.checkpoint()
            cosigned = client.check_witnesses(cp)
        results = audit_events(client, events, cp)
    size = cp.checkpoint.size
    if args.json:
        for r in results:
            print(json.dumps({**r.to_json(), "checkpoint": checkpoint_json(cp)}), flush=True)
    else:
        labels = [display.escape(r.event.label) for r in results]
        width = max(len("EVENT"), *(len(label) for label in labels))
        print(f"{'EVENT':<{width}}  {'STATUS':<9}  {'INDEX':>8}  LEAF HASH")
        for r, label in zip(results, labels, strict=True):
            index = "-" if r.index is None else str(r.index)
            leaf = r.leaf_hash.hex() if r.leaf_hash else "-"
            line = f"{label:<{width}}  {r.status:<9}  {index:>8}  {leaf}"
            print(line + (f"  ({display.escape(r.detail)})" if r.detail else ""))
        witnessed = f", {len(cosigned)} witness cosignature(s) verified" if cosigned else ""
        ok = sum(r.included for r in results)
        print(
            f"{ok} of {len(results)} included in the tree of size {size}, root "
            f"{b64(cp.checkpoint.root_hash)} (checkpoint signature verified{witnessed})"
        )
    return 0 if all(r.included for r in results) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = ProofBundle.parse(Path(args.file).read_bytes())
    verifier = verifier_from_args(args)
    expected = bytes.fromhex(args.leaf_hash) if args.leaf_hash else None
    verified = bundle.verify(
        verifier,
        origin=args.origin,
        policy=witness_policy_from_args(args),
        expected_leaf_hash=expected,
    )
    cp = verified.checkpoint.checkpoint
    obj: dict[str, Any] = {
        "valid": True,
        "leaf_index": verified.index,
        "leaf_hash": verified.leaf_hash.hex(),
        "checkpoint": checkpoint_json(verified.checkpoint),
        "witness_cosignatures": [c.name for c in verified.cosignatures],
    }
    text = (
        f"VALID: entry {verified.index} (leaf hash {verified.leaf_hash.hex()}) is in the tree "
        f"of size {cp.size}, root {b64(cp.root_hash)}, signed by {display.escape(verifier.name)}"
    )
    if verified.cosignatures:
        names = ", ".join(display.escape(c.name) for c in verified.cosignatures)
        text += f" and cosigned by {names}"
    if bundle.extra is not None:
        obj["entry"] = leaf_json(verified.index, bundle.extra)
        leaf = Leaf.parse(bundle.extra)
        text += (
            f"\n  accepted_at_ms {leaf.accepted_at_ms}  identity {display.identity(leaf.identity)}"
            f"\n  payload {display.escape(leaf.payload)}"
        )
    emit(args, obj, text)
    return 0
