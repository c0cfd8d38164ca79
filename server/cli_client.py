"""The ``sealog`` commands services and readers run against a log.

append, checkpoint, prove, consistency, entries and search, and the client-side
plumbing every command that talks to a log shares: JSON renderers, the verifier key,
witness policies, the verifying client and its command-line options.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sealog.client import display
from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.cosignature import CosignatureVerifier
from sealog.client.durable import write_durably
from sealog.client.errors import SealogError
from sealog.client.event import AuditEvent
from sealog.client.keyfile import read_key_file
from sealog.client.leaf import Leaf
from sealog.client.log_client import Entry, InclusionProof, LogClient, Receipt
from sealog.client.monitor.bundle import ProofBundle
from sealog.client.note import Ed25519Verifier
from sealog.client.tls import channel_credentials
from sealog.client.witness_policy import WitnessPolicy
from sealog.server.app import VKEY_FILE

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_TARGET",
    "add_client_options",
    "add_witness_options",
    "b64",
    "checkpoint_json",
    "client_from_args",
    "cmd_append",
    "cmd_checkpoint",
    "cmd_consistency",
    "cmd_entries",
    "cmd_prove",
    "cmd_search",
    "emit",
    "entry_line",
    "leaf_json",
    "verifier_from_args",
    "witness_keys",
    "witness_policy_from_args",
]

DEFAULT_TARGET = "127.0.0.1:6962"
DEFAULT_DATA_DIR = "sealog-data"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- output ------------------------------------------------------------------
def leaf_json(index: int, leaf: bytes) -> dict[str, Any]:
    parsed = Leaf.parse(leaf)
    payload: dict[str, Any] = {"payload_b64": b64(parsed.payload)}
    with contextlib.suppress(UnicodeDecodeError):
        payload["payload"] = parsed.payload.decode("utf-8")
    return {
        "index": index,
        "leaf_hash": Entry(index, leaf).leaf_hash.hex(),
        "accepted_at_ms": parsed.accepted_at_ms,
        "identity": parsed.identity,
        **payload,
        "leaf_b64": b64(leaf),
    }


def checkpoint_json(signed: SignedCheckpoint) -> dict[str, Any]:
    cp = signed.checkpoint
    return {
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": b64(cp.root_hash),
        "note": signed.note.decode("utf-8"),
    }


def _receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        **leaf_json(r.index, r.leaf),
        "duplicate": r.duplicate,
        "inclusion_proof": [b64(h) for h in r.inclusion_proof],
        "checkpoint": checkpoint_json(r.checkpoint),
    }


def _proof_json(p: InclusionProof) -> dict[str, Any]:
    return {
        "leaf_index": p.index,
        "leaf_hash": p.leaf_hash.hex(),
        "tree_size": p.checkpoint.checkpoint.size,
        "inclusion_proof": [b64(h) for h in p.proof],
        "checkpoint": checkpoint_json(p.checkpoint),
    }


def emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text, flush=True)


# --- key and client plumbing ---------------------------------------------------
def verifier_from_args(args: argparse.Namespace) -> Ed25519Verifier:
    value = args.vkey or os.environ.get("SEALOG_VKEY")
    if value is None:
        default = Path(DEFAULT_DATA_DIR) / VKEY_FILE
        if not default.exists():
            raise SealogError(
                "no verifier key: pass --vkey KEY (or @FILE), set $SEALOG_VKEY, or run "
                f"where {default} exists"
            )
        value = "@" + str(default)
    if value.startswith("@"):
        value = read_key_file(value[1:])
    return Ed25519Verifier.from_vkey(value)


def witness_keys(values: Sequence[str] | None) -> list[CosignatureVerifier]:
    """Witness verifier keys: each value a key, or @FILE with one key per line."""
    keys = []
    for value in values or ():
        if value.startswith("@"):
            lines = Path(value[1:]).read_text(encoding="ascii").split()
            keys += [CosignatureVerifier.from_vkey(line) for line in lines]
        else:
            keys.append(CosignatureVerifier.from_vkey(value))
    return keys


def witness_policy_from_args(args: argparse.Namespace) -> WitnessPolicy | None:
    keys = witness_keys(getattr(args, "witness_vkey", None))
    if not keys:
        if getattr(args, "witness_threshold", None) is not None:
            raise SealogError("--witness-threshold needs --witness-vkey")
        return None
    return WitnessPolicy.from_vkeys(keys, args.witness_threshold, args.witness_max_age)


def client_from_args(args: argparse.Namespace) -> LogClient:
    target = args.target or os.environ.get("SEALOG_TARGET") or DEFAULT_TARGET
    policy = witness_policy_from_args(args)
    credentials = None
    if args.tls_ca or args.tls_cert:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return LogClient(
        target,
        verifier_from_args(args),
        origin=args.origin,
        timeout=args.timeout,
        witnesses=policy if policy is not None else (),
        credentials=credentials,
        api_key=args.api_key or os.environ.get("SEALOG_API_KEY") or None,
    )


# --- options -------------------------------------------------------------------
def add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", help=f"log server address (default $SEALOG_TARGET or {DEFAULT_TARGET})"
    )
    p.add_argument(
        "--vkey",
        help="the log's verifier key, or @FILE holding it (default $SEALOG_VKEY or "
        f"./{DEFAULT_DATA_DIR}/{VKEY_FILE})",
    )
    p.add_argument("--origin", help="the log's origin, if not the key's name")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    p.add_argument(
        "--api-key", help="present this API key (default $SEALOG_API_KEY); see `sealog apikey`"
    )
    p.add_argument("--tls-ca", help="connect with TLS, trusting this CA file (PEM)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", help="client certificate's private key (PEM)")
    add_witness_options(p)


def add_witness_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--witness-vkey",
        action="append",
        metavar="VKEY",
        help="a witness's cosignature verifier key, or @FILE with one per line (repeatable): "
        "trust only checkpoints enough of them cosigned (the log's witnessed checkpoint)",
    )
    p.add_argument(
        "--witness-threshold",
        type=int,
        metavar="K",
        help="how many of the witnesses must have cosigned (default: all of them)",
    )
    p.add_argument(
        "--witness-max-age",
        type=float,
        metavar="SECONDS",
        help="ignore cosignatures older than this",
    )


# --- commands ------------------------------------------------------------------
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
                    f"in checkpoint size {cp.size} root {b64(cp.root_hash)} (verified)",
                )
            batch.clear()

        for payload in [event] if event is not None else _payloads(args):
            batch.append(payload)
            if len(batch) >= args.batch:
                flush()
        flush()
    return 0


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
            + "\n".join(f"  {b64(h)}" for h in proof.proof)
        )
        if args.bundle:
            bundle = ProofBundle.for_leaf(entry.index, entry.leaf, proof.proof, cp.note)
            bundle.verify(client.verifier, origin=client.origin, policy=client.policy)
            write_durably(args.bundle, bundle.to_bytes())
            obj["bundle"] = str(args.bundle)
            text += f"\nwrote the proof bundle (c2sp.org/tlog-proof@v1) to {args.bundle}"
        emit(args, obj, text)
    return 0


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
                "consistency_proof": [b64(h) for h in proof],
            },
            f"tree size {new.checkpoint.size} is consistent with size {old.checkpoint.size}: "
            "verified\n" + "\n".join(f"  {b64(h)}" for h in proof),
        )
    return 0


def entry_line(index: int, leaf: bytes, *, with_identity: bool = True) -> str:
    """One entry as one tab-separated line: index, acceptance time (ms), identity, payload.

    The identity and the payload are escaped (:mod:`sealog.client.display`), so
    whatever a client appended shows as exactly one line with these columns.
    """
    parsed = Leaf.parse(leaf)
    identity = f"{display.identity(parsed.identity)}\t" if with_identity else ""
    return f"{index}\t{parsed.accepted_at_ms}\t{identity}{display.escape(parsed.payload)}"


def cmd_entries(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        for e in client.entries(args.start, args.end):
            emit(args, leaf_json(e.index, e.leaf), entry_line(e.index, e.leaf))
    return 0


def _time_ms(text: str | None, flag: str) -> int:
    """A time flag: ms since the epoch, or an ISO 8601 date/time (UTC unless it says)."""
    if not text:
        return 0
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise SealogError(f"{flag} {text!r}: want ms since the epoch or ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return int(when.timestamp() * 1000)


def cmd_search(args: argparse.Namespace) -> int:
    since = _time_ms(args.since, "--since")
    until = _time_ms(args.until, "--until")
    with client_from_args(args) as client:
        for e in client.search(args.identity, since, until, page_size=args.page_size):
            emit(args, leaf_json(e.index, e.leaf), entry_line(e.index, e.leaf, with_identity=False))
    return 0
