"""The ``sealog`` commands monitors and auditors run.

monitor follows logs; check-evidence re-verifies what a monitor caught; audit proves
events are in a log; verify checks a proof bundle (c2sp.org/tlog-proof) offline.
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
from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import open_checkpoint
from sealog.client.errors import SealogError
from sealog.client.leaf import Leaf
from sealog.client.monitor.audit import SoughtEvent, audit_events, events_from_jsonl
from sealog.client.monitor.bundle import ProofBundle
from sealog.client.monitor.config import MonitorConfig
from sealog.client.monitor.evidence import check_evidence, read_evidence
from sealog.client.monitor.follow import Monitor
from sealog.server.cli.options import (
    TRUSTED_VKEY_HELP,
    VKEY_FALLBACK,
    Commands,
    add_client_options,
    add_command,
    add_origin_option,
    add_vkey_option,
    add_witness_options,
    add_witness_vkey_option,
    client_from_args,
    verifier_from_args,
    witness_keys,
    witness_policy_from_args,
)
from sealog.server.cli.output import add_json_option, checkpoint_json, emit, leaf_json

__all__ = [
    "add_audit",
    "add_check_evidence",
    "add_monitor",
    "add_verify",
    "cmd_audit",
    "cmd_check_evidence",
    "cmd_monitor",
    "cmd_verify",
]


# --- monitor ----------------------------------------------------------------------
def add_monitor(commands: Commands) -> None:
    p = add_command(
        commands,
        "monitor",
        "follow logs and check every checkpoint they sign",
        "The logs are listed in a TOML config (docs/monitoring.md). Each poll verifies the "
        "new checkpoint's signature and its consistency with the last trusted one; "
        "optionally it re-hashes every entry (full_audit), checks the witnessed checkpoint "
        "against a witness policy, and cosigns as a witness. State is replaced atomically "
        "and only with verified checkpoints; with no state it trusts the first checkpoint "
        "(TOFU) and says so. On a failed check it writes an evidence file, runs "
        'alert_command with its path, and exits with status 3 (on_failure = "exit") or '
        'keeps going ("continue"). One status line per poll on stdout; a progress bar on '
        "stderr while a full audit catches up.",
    )
    p.add_argument("config", help="TOML config listing the logs (docs/monitoring.md)")
    p.add_argument("--once", action="store_true", help="poll each log once, then exit")
    p.add_argument("--polls", type=int, help="stop after this many polls in all")
    p.set_defaults(func=cmd_monitor)


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


# --- check-evidence ---------------------------------------------------------------
def add_check_evidence(commands: Commands) -> None:
    p = add_command(
        commands,
        "check-evidence",
        "re-verify a monitor's evidence file offline",
        "The signatures are checked with the log key you give (not the one in the file), "
        "then the failure is reproduced (split view, failed consistency proof, rollback, "
        "bad signature, invalid cosignature, root mismatch). Prints what the file proves "
        "and what it does not. Exit status 0 only when the evidence holds.",
    )
    p.add_argument("file", help="the evidence file (JSON)")
    add_vkey_option(p, TRUSTED_VKEY_HELP)
    add_origin_option(p, "the log's origin (default: as in the file)")
    add_witness_vkey_option(
        p,
        "for invalid_cosignature evidence: the witness key to check with "
        "(default: the one in the file)",
    )
    add_json_option(p, "print the verdict as JSON")
    p.set_defaults(func=cmd_check_evidence)


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


# --- audit ------------------------------------------------------------------------
def add_audit(commands: Commands) -> None:
    p = add_command(
        commands,
        "audit",
        "prove that events are in the log; print a report",
        "Each event is proven against one verified checkpoint (the witnessed one with "
        "--witness-vkey, or --checkpoint FILE). Events: --index, --leaf-hash, "
        "--payload-file (the entry with that exact payload; reads the log to find it), or "
        "--batch FILE of JSON lines (keys index, leaf_hash, leaf_b64, payload, "
        "payload_b64, label; `sealog append --json` output works as is). Prints a table, "
        "or one JSON object per event. Exit status 0 only if every event is included.",
    )
    p.add_argument("--index", type=int, action="append", help="an entry's index (repeatable)")
    p.add_argument("--leaf-hash", action="append", help="an entry's leaf hash, hex (repeatable)")
    p.add_argument(
        "--payload-file",
        action="append",
        help="a file whose bytes are an event's payload (repeatable; reads the log to find it)",
    )
    p.add_argument("--batch", action="append", help="a JSON-lines file of events ('-' for stdin)")
    p.add_argument("--checkpoint", help="audit against this saved signed checkpoint")
    add_client_options(p)
    p.set_defaults(func=cmd_audit)


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
            f"{encode_base64(cp.checkpoint.root_hash)} (checkpoint signature verified{witnessed})"
        )
    return 0 if all(r.included for r in results) else 1


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


# --- verify -----------------------------------------------------------------------
def add_verify(commands: Commands) -> None:
    p = add_command(
        commands,
        "verify",
        "verify a proof bundle offline, with no network",
        "The bundle (c2sp.org/tlog-proof@v1, from `sealog prove --bundle`) is checked with "
        "no network: the log's signature on the checkpoint, the witness policy if given, "
        "the leaf in the bundle and its inclusion proof. Exit status 0 only if it verifies.",
    )
    p.add_argument("file", help="the bundle (c2sp.org/tlog-proof@v1 text)")
    add_vkey_option(p, f"the log's verifier key, or @FILE (default {VKEY_FALLBACK})")
    add_origin_option(p)
    p.add_argument("--leaf-hash", help="the leaf hash the bundle must prove, hex")
    add_json_option(p)
    add_witness_options(p)
    p.set_defaults(func=cmd_verify)


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
        f"of size {cp.size}, root {encode_base64(cp.root_hash)}, "
        f"signed by {display.escape(verifier.name)}"
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
