"""The ``sealog`` commands services and readers run against a log.

append writes events; checkpoint, prove and consistency fetch what RFC 6962 lets a
client verify (a signed tree head, inclusion and consistency proofs); entries and
search read entries back. Everything printed was verified first.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sealog.client import display
from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import open_checkpoint
from sealog.client.durable import write_durably
from sealog.client.errors import SealogError
from sealog.client.event import OUTCOMES, AuditEvent
from sealog.client.leaf import Leaf
from sealog.client.log_client import Entry, InclusionProof, Receipt
from sealog.client.monitor.bundle import ProofBundle
from sealog.server.cli.options import Commands, add_client_options, add_command, client_from_args
from sealog.server.cli.output import checkpoint_json, emit, leaf_json

__all__ = [
    "add_append",
    "add_checkpoint",
    "add_consistency",
    "add_entries",
    "add_prove",
    "add_search",
    "cmd_append",
    "cmd_checkpoint",
    "cmd_consistency",
    "cmd_entries",
    "cmd_prove",
    "cmd_search",
    "entry_line",
]


# --- append -----------------------------------------------------------------------
def add_append(commands: Commands) -> None:
    p = add_command(
        commands,
        "append",
        "append events; print their verified receipts",
        "A receipt is the event's index, leaf hash and the signed checkpoint that includes "
        "it, all verified. Events come from the argument, a file (--file, one event), or "
        "stdin (one event per line). Each request is atomic; retries never log an event "
        "twice.",
    )
    p.add_argument(
        "payload",
        nargs="?",
        help="the event as text; '-' or nothing reads stdin, one event per line",
    )
    p.add_argument("--file", help="append the whole file as one event")
    g = p.add_argument_group(
        "audit event",
        "describe a typed audit event instead of a raw payload (docs/audit-events.md)",
    )
    g.add_argument("--action", help="what was done, e.g. deploy")
    g.add_argument("--resource", help="what it was done to, e.g. svc/payments")
    g.add_argument("--outcome", choices=OUTCOMES, help="how it went")
    g.add_argument("--attr", action="append", metavar="KEY=VALUE", help="an attribute (repeatable)")
    g.add_argument("--request-id", help="the request this event belongs to")
    g.add_argument("--trace-id", help="the trace this event belongs to")
    g.add_argument(
        "--event-time-ms", type=int, help="when it happened, ms since the epoch (default: now)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="events per request when reading stdin (default %(default)s)",
    )
    add_client_options(p)
    p.set_defaults(func=cmd_append)


def cmd_append(args: argparse.Namespace) -> int:
    event = _event_payload(args)
    with client_from_args(args) as client:
        batch: list[bytes] = []

        def flush() -> None:
            if not batch:
                return
            result = client.append_batch(batch)
            for r in result.receipts():
                cp = r.checkpoint.checkpoint
                emit(
                    args,
                    _receipt_json(r),
                    f"index {r.index}{' (already logged)' if r.duplicate else ''}  "
                    f"leaf_hash {Entry(r.index, r.leaf).leaf_hash.hex()}  "
                    f"in checkpoint size {cp.size} root {encode_base64(cp.root_hash)} (verified)",
                )
            batch.clear()

        for payload in [event] if event is not None else _payloads(args):
            batch.append(payload)
            if len(batch) >= args.batch:
                flush()
        flush()
    return 0


def _payloads(args: argparse.Namespace) -> Iterator[bytes]:
    if args.file:
        yield Path(args.file).read_bytes()
    elif args.payload == "-" or args.payload is None:
        for raw in sys.stdin.buffer:
            line = raw.rstrip(b"\n")
            if line:
                yield line
    else:
        yield args.payload.encode("utf-8")


def _event_payload(args: argparse.Namespace) -> bytes | None:
    """The audit event the append flags describe, or None when none was given."""
    if not args.action:
        if args.resource or args.outcome or args.attr or args.request_id or args.trace_id:
            raise SealogError("--resource/--outcome/--attr/... describe an event: add --action")
        return None
    if args.payload or args.file:
        raise SealogError("give either an event (--action ...) or a raw payload, not both")
    attributes = {}
    for item in args.attr or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise SealogError(f"--attr {item!r}: want KEY=VALUE")
        attributes[key] = value
    return AuditEvent(
        action=args.action,
        resource=args.resource or "",
        outcome=args.outcome or "",
        event_time_ms=args.event_time_ms
        if args.event_time_ms is not None
        else time.time_ns() // 1_000_000,
        request_id=args.request_id or "",
        trace_id=args.trace_id or "",
        attributes=attributes,
    ).to_payload()


def _receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        **leaf_json(r.index, r.leaf),
        "duplicate": r.duplicate,
        "inclusion_proof": [encode_base64(h) for h in r.inclusion_proof],
        "checkpoint": checkpoint_json(r.checkpoint),
    }


# --- checkpoint -------------------------------------------------------------------
def add_checkpoint(commands: Commands) -> None:
    p = add_command(
        commands,
        "checkpoint",
        "print the latest verified checkpoint",
        "Its signature is verified. With --trusted FILE, also prove that it extends the "
        "checkpoint in FILE (the log only grew); --save FILE keeps it for next time.",
    )
    p.add_argument("--trusted", help="a checkpoint file you trust: also verify consistency with it")
    p.add_argument("--save", help="write the signed checkpoint note to this file")
    add_client_options(p)
    p.set_defaults(func=cmd_checkpoint)


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        trusted = None
        if args.trusted:
            trusted = open_checkpoint(
                Path(args.trusted).read_bytes(), client.verifier, origin=client.origin
            )
        signed = client.checkpoint(trusted)
        if args.save:
            Path(args.save).write_bytes(signed.note)
        extra = (
            f"\n(consistent with trusted size {trusted.checkpoint.size}: verified)"
            if trusted
            else ""
        )
        emit(args, checkpoint_json(signed), signed.note.decode("utf-8").rstrip("\n") + extra)
    return 0


# --- prove ------------------------------------------------------------------------
def add_prove(commands: Commands) -> None:
    p = add_command(
        commands,
        "prove",
        "prove an entry is in the log (inclusion proof)",
        "By index or by leaf hash, against the latest checkpoint or a saved one "
        "(--checkpoint); the proof is verified before it is printed.",
    )
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--index", type=int, help="the entry's leaf index")
    g.add_argument("--leaf-hash", help="the entry's RFC 6962 leaf hash, hex")
    p.add_argument(
        "--checkpoint",
        help="prove against this saved signed checkpoint (default: the latest checkpoint)",
    )
    p.add_argument(
        "--bundle",
        metavar="FILE",
        help="also write a self-contained proof (c2sp.org/tlog-proof@v1 with the leaf in its "
        "extra line) that `sealog verify` checks offline",
    )
    add_client_options(p)
    p.set_defaults(func=cmd_prove)


def cmd_prove(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        cp = (
            open_checkpoint(
                Path(args.checkpoint).read_bytes(), client.verifier, origin=client.origin
            )
            if args.checkpoint
            else client.checkpoint()
        )
        if args.checkpoint and client.policy is not None:
            client.check_witnesses(cp)
        if args.index is not None:
            entry, proof = client.entry_and_proof(args.index, cp)
            obj = {**_proof_json(proof), "entry": leaf_json(entry.index, entry.leaf)}
        else:
            leaf_hash = bytes.fromhex(args.leaf_hash) if args.leaf_hash else None
            if leaf_hash is None:
                raise SealogError("give --index N or --leaf-hash HEX")
            proof = client.inclusion_proof_by_hash(leaf_hash, cp)
            obj = _proof_json(proof)
            if args.bundle:
                entry, proof = client.entry_and_proof(proof.index, cp)
        text = (
            f"leaf {proof.index} (hash {proof.leaf_hash.hex()}) is in the tree of size "
            f"{proof.checkpoint.checkpoint.size}: verified\n"
            + "\n".join(f"  {encode_base64(h)}" for h in proof.proof)
        )
        if args.bundle:
            bundle = ProofBundle.for_leaf(entry.index, entry.leaf, proof.proof, cp.note)
            bundle.verify(client.verifier, origin=client.origin, policy=client.policy)
            write_durably(args.bundle, bundle.to_bytes())
            obj["bundle"] = str(args.bundle)
            text += f"\nwrote the proof bundle (c2sp.org/tlog-proof@v1) to {args.bundle}"
        emit(args, obj, text)
    return 0


def _proof_json(p: InclusionProof) -> dict[str, Any]:
    return {
        "leaf_index": p.index,
        "leaf_hash": p.leaf_hash.hex(),
        "tree_size": p.checkpoint.checkpoint.size,
        "inclusion_proof": [encode_base64(h) for h in p.proof],
        "checkpoint": checkpoint_json(p.checkpoint),
    }


# --- consistency ------------------------------------------------------------------
def add_consistency(commands: Commands) -> None:
    p = add_command(
        commands,
        "consistency",
        "prove a newer checkpoint extends an older one",
        "OLD is a file with an older signed checkpoint; NEW (default: the latest) must "
        "extend it: nothing was rewritten or dropped.",
    )
    p.add_argument("old", help="file with the older signed checkpoint")
    p.add_argument("new", nargs="?", help="file with the newer one (default: the latest)")
    add_client_options(p)
    p.set_defaults(func=cmd_consistency)


def cmd_consistency(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        old = open_checkpoint(Path(args.old).read_bytes(), client.verifier, origin=client.origin)
        new = (
            open_checkpoint(Path(args.new).read_bytes(), client.verifier, origin=client.origin)
            if args.new
            else client.checkpoint()
        )
        proof = client.consistency_proof(old, new)
        emit(
            args,
            {
                "first": checkpoint_json(old),
                "second": checkpoint_json(new),
                "consistency_proof": [encode_base64(h) for h in proof],
            },
            f"tree size {new.checkpoint.size} is consistent with size {old.checkpoint.size}: "
            "verified\n" + "\n".join(f"  {encode_base64(h)}" for h in proof),
        )
    return 0


# --- entries ----------------------------------------------------------------------
def add_entries(commands: Commands) -> None:
    p = add_command(
        commands,
        "entries",
        "print entries, verified against the latest checkpoint",
        "Entries [START, END), each page verified against the latest checkpoint before it "
        "is printed: index, acceptance time (ms), identity, payload, one line each, "
        "tab-separated. Identity and payload are shown escaped (backslash, \\n, \\t, \\xNN "
        "for other controls and bytes that are not UTF-8, \\uNNNN for other unprintable "
        "characters); --json gives them exactly.",
    )
    p.add_argument("start", type=int, nargs="?", default=0, help="first index (default 0)")
    p.add_argument("end", type=int, nargs="?", help="one past the last index (default: all)")
    add_client_options(p)
    p.set_defaults(func=cmd_entries)


def cmd_entries(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for e in client.entries(args.start, args.end):
            emit(args, leaf_json(e.index, e.leaf), entry_line(e.index, e.leaf))
    return 0


def entry_line(index: int, leaf: bytes, *, with_identity: bool = True) -> str:
    """One entry as one tab-separated line: index, acceptance time (ms), identity, payload.

    The identity and the payload are escaped (:mod:`sealog.client.display`), so
    whatever a client appended shows as exactly one line with these columns.
    """
    parsed = Leaf.parse(leaf)
    identity = f"{display.identity(parsed.identity)}\t" if with_identity else ""
    return f"{index}\t{parsed.accepted_at_ms}\t{identity}{display.escape(parsed.payload)}"


# --- search -----------------------------------------------------------------------
def add_search(commands: Commands) -> None:
    p = add_command(
        commands,
        "search",
        "find an identity's entries in a time window (verified)",
        "Auditors ask what one machine identity did between two times. The server answers "
        "from its identity/time index; every result's inclusion proof, identity and time "
        "are verified, so an index that returns wrong entries is caught.",
    )
    p.add_argument("--identity", required=True, help="the identity, as stamped into leaves")
    p.add_argument("--since", help="from this acceptance time (ms since the epoch or ISO 8601)")
    p.add_argument("--until", help="to this acceptance time, inclusive (default: now)")
    p.add_argument("--page-size", type=int, default=0, help="results per request")
    add_client_options(p)
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    since = _time_ms(args.since, "--since")
    until = _time_ms(args.until, "--until")
    with client_from_args(args) as client:
        for e in client.search(args.identity, since, until, page_size=args.page_size):
            emit(args, leaf_json(e.index, e.leaf), entry_line(e.index, e.leaf, with_identity=False))
    return 0


def _time_ms(text: str | None, flag: str) -> int:
    """A time flag: ms since the epoch, or an ISO 8601 date/time (UTC unless it says)."""
    if not text:
        return 0
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SealogError(f"{flag} {text!r}: want ms since the epoch or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)
