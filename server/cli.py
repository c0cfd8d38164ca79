"""The ``sealog`` command: run a log, and talk to one as a service, monitor or auditor would."""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.errors import SealogError
from sealog.client.keyfile import read_key_file, write_private_key_file
from sealog.client.leaf import Leaf
from sealog.client.log_client import Entry, InclusionProof, LogClient, Receipt
from sealog.client.note import Ed25519Signer, Ed25519Verifier
from sealog.server.app import VKEY_FILE, LogServer
from sealog.server.config import Settings
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage

__all__ = ["main"]

DEFAULT_TARGET = "127.0.0.1:6962"
DEFAULT_DATA_DIR = "sealog-data"
_EPILOG = """\
Quick start (two terminals):
  sealog serve                    # a log in ./sealog-data, key generated on first run
  sealog append 'deploy svc/payments ok'
  sealog checkpoint
Client commands find the log's public key in --vkey, $SEALOG_VKEY or
./sealog-data/log.vkey, and the server in --target or $SEALOG_TARGET.
"""


_DESCRIPTIONS = {
    "keygen": "The private key file is created with mode 0600 and never overwritten; "
    "the verifier key (vkey) is printed and written beside it as NAME.vkey, to give to "
    "clients.",
    "append": "A receipt is the event's index, leaf hash and the signed checkpoint "
    "that includes it, all verified. Events come from the argument, a file (--file, one "
    "event), or stdin (one event per line). Each request is atomic; retries never log "
    "an event twice.",
    "checkpoint": "Its signature is verified. With --trusted FILE, also prove that it "
    "extends the checkpoint in FILE (the log only grew); --save FILE keeps it for next "
    "time.",
    "prove": "By index or by leaf hash, against the latest checkpoint or a saved one "
    "(--checkpoint); the proof is verified before it is printed.",
    "consistency": "OLD is a file with an older signed checkpoint; NEW (default: the "
    "latest) must extend it: nothing was rewritten or dropped.",
    "entries": "Entries [START, END), each page verified against the latest checkpoint "
    "before it is printed: index, acceptance time (ms), identity, payload.",
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- output ------------------------------------------------------------------
def _leaf_json(index: int, leaf: bytes) -> dict[str, Any]:
    parsed = Leaf.parse(leaf)
    payload: dict[str, Any] = {"payload_b64": _b64(parsed.payload)}
    with contextlib.suppress(UnicodeDecodeError):
        payload["payload"] = parsed.payload.decode("utf-8")
    return {
        "index": index,
        "leaf_hash": Entry(index, leaf).leaf_hash.hex(),
        "accepted_at_ms": parsed.accepted_at_ms,
        "identity": parsed.identity,
        **payload,
        "leaf_b64": _b64(leaf),
    }


def _checkpoint_json(signed: SignedCheckpoint) -> dict[str, Any]:
    cp = signed.checkpoint
    return {
        "origin": cp.origin,
        "tree_size": cp.size,
        "root_hash": _b64(cp.root_hash),
        "note": signed.note.decode("utf-8"),
    }


def _receipt_json(r: Receipt) -> dict[str, Any]:
    return {
        **_leaf_json(r.index, r.leaf),
        "duplicate": r.duplicate,
        "inclusion_proof": [_b64(h) for h in r.inclusion_proof],
        "checkpoint": _checkpoint_json(r.checkpoint),
    }


def _proof_json(p: InclusionProof) -> dict[str, Any]:
    return {
        "leaf_index": p.index,
        "leaf_hash": p.leaf_hash.hex(),
        "tree_size": p.checkpoint.checkpoint.size,
        "inclusion_proof": [_b64(h) for h in p.proof],
        "checkpoint": _checkpoint_json(p.checkpoint),
    }


def _emit(args: argparse.Namespace, obj: dict[str, Any], text: str) -> None:
    print(json.dumps(obj) if args.json else text, flush=True)


# --- key and client plumbing ---------------------------------------------------
def _verifier(args: argparse.Namespace) -> Ed25519Verifier:
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


def _client(args: argparse.Namespace) -> LogClient:
    target = args.target or os.environ.get("SEALOG_TARGET") or DEFAULT_TARGET
    return LogClient(target, _verifier(args), origin=args.origin, timeout=args.timeout)


# --- commands ------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    signer = Ed25519Signer.generate(args.name)
    out = Path(args.out or f"{args.name.replace('/', '_')}.key")
    write_private_key_file(out, signer.skey)
    vkey = signer.verifier().vkey
    out.with_suffix(".vkey").write_text(vkey + "\n")
    _emit(
        args,
        {"private_key_file": str(out), "vkey": vkey},
        f"wrote private key to {out} (mode 0600)\nverifier key: {vkey}",
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings(
        max_entry_bytes=args.max_entry_bytes,
        max_request_entries=args.max_request_entries,
        batch_max_entries=args.batch_max_entries,
        batch_max_wait_ms=args.batch_max_wait_ms,
        max_queued_entries=args.max_queued_entries,
    )
    server = LogServer.open(
        args.data_dir,
        address=args.listen,
        origin=args.origin_name,
        key_file=args.key_file,
        settings=settings,
    )
    host = args.listen.rsplit(":", 1)[0]
    vkey = server.signer.verifier().vkey
    cp = open_checkpoint(server.log.latest_checkpoint(), server.signer.verifier()).checkpoint
    print(
        f"sealog: serving log {args.origin_name!r} from {Path(args.data_dir).resolve()}\n"
        f"  address:      {host}:{server.port} (plaintext gRPC: loopback use only)\n"
        f"  verifier key: {vkey}\n"
        f"  checkpoint:   size {cp.size}, root {_b64(cp.root_hash)}\n"
        "Stop with Ctrl-C (queued appends are committed first).",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(1)  # a second signal forces
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stop.wait()
    print("sealog: shutting down", flush=True)
    server.stop()
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


def cmd_append(args: argparse.Namespace) -> int:
    with _client(args) as client:
        batch: list[bytes] = []

        def flush() -> None:
            if not batch:
                return
            result = client.append_batch(batch)
            for r in result.receipts():
                cp = r.checkpoint.checkpoint
                _emit(
                    args,
                    _receipt_json(r),
                    f"index {r.index}{' (already logged)' if r.duplicate else ''}  "
                    f"leaf_hash {Entry(r.index, r.leaf).leaf_hash.hex()}  "
                    f"in checkpoint size {cp.size} root {_b64(cp.root_hash)} (verified)",
                )
            batch.clear()

        for payload in _payloads(args):
            batch.append(payload)
            if len(batch) >= args.batch:
                flush()
        flush()
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    with _client(args) as client:
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
        _emit(args, _checkpoint_json(signed), signed.note.decode("utf-8").rstrip("\n") + extra)
    return 0


def cmd_prove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        cp = (
            open_checkpoint(
                Path(args.checkpoint).read_bytes(), client.verifier, origin=client.origin
            )
            if args.checkpoint
            else client.checkpoint()
        )
        if args.index is not None:
            entry, proof = client.entry_and_proof(args.index, cp)
            obj = {**_proof_json(proof), "entry": _leaf_json(entry.index, entry.leaf)}
        else:
            leaf_hash = bytes.fromhex(args.leaf_hash) if args.leaf_hash else None
            if leaf_hash is None:
                raise SealogError("give --index N or --leaf-hash HEX")
            proof = client.inclusion_proof_by_hash(leaf_hash, cp)
            obj = _proof_json(proof)
        text = (
            f"leaf {proof.index} (hash {proof.leaf_hash.hex()}) is in the tree of size "
            f"{proof.checkpoint.checkpoint.size}: verified\n"
            + "\n".join(f"  {_b64(h)}" for h in proof.proof)
        )
        _emit(args, obj, text)
    return 0


def cmd_consistency(args: argparse.Namespace) -> int:
    with _client(args) as client:
        old = open_checkpoint(Path(args.old).read_bytes(), client.verifier, origin=client.origin)
        new = (
            open_checkpoint(Path(args.new).read_bytes(), client.verifier, origin=client.origin)
            if args.new
            else client.checkpoint()
        )
        proof = client.consistency_proof(old, new)
        _emit(
            args,
            {
                "first": _checkpoint_json(old),
                "second": _checkpoint_json(new),
                "consistency_proof": [_b64(h) for h in proof],
            },
            f"tree size {new.checkpoint.size} is consistent with size {old.checkpoint.size}: "
            "verified\n" + "\n".join(f"  {_b64(h)}" for h in proof),
        )
    return 0


def cmd_entries(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for e in client.entries(args.start, args.end):
            obj = _leaf_json(e.index, e.leaf)
            text = (
                f"{e.index}\t{obj['accepted_at_ms']}\t{obj['identity'] or '-'}\t"
                f"{obj.get('payload', obj['payload_b64'])}"
            )
            _emit(args, obj, text)
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    verifier = _verifier(args)
    db = Path(args.data_dir)
    if not (db / "data.mdb").exists():
        db = db / "db"
    if not (db / "data.mdb").exists():
        raise SealogError(f"{args.data_dir}: no log here (no db/data.mdb)")
    storage = LmdbStorage(db, readonly=True)
    try:
        with storage.read() as snapshot:
            report = fsck(snapshot, verifier, origin=args.origin, progress=not args.json)
    finally:
        storage.close()
    text = "\n".join(f"PROBLEM: {p}" for p in report.problems) or (
        f"ok: {report.entries_checked} entries, every hash, index and the signed "
        f"checkpoint (size {report.size}) verified"
    )
    _emit(
        args,
        {
            "ok": report.ok,
            "tree_size": report.size,
            "entries_checked": report.entries_checked,
            "problems": report.problems,
        },
        text,
    )
    return 0 if report.ok else 2


# --- parser --------------------------------------------------------------------
def _client_options(p: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealog",
        description="A tamper-evident audit log for machine identities (an RFC 6962 "
        "transparency log). Every answer a client command prints has been verified "
        "against the log's signed checkpoint.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="create an Ed25519 signing key (file mode 0600)")
    p.add_argument("name", help="key name; for a log, its origin (e.g. example.com/log)")
    p.add_argument("--out", help="private key file (default NAME.key); the vkey goes beside it")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_keygen)

    d = Settings()
    p = sub.add_parser(
        "serve",
        help="run a log server",
        description="Run a log. With no options: data in ./sealog-data, a signing key "
        "generated there on first run, listening on loopback. SIGTERM/Ctrl-C commits "
        "queued appends before exiting; a second signal forces.",
    )
    p.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="data folder (default %(default)s)")
    p.add_argument(
        "--listen", default=DEFAULT_TARGET, help="address to listen on (default %(default)s)"
    )
    p.add_argument(
        "--origin",
        dest="origin_name",
        default="sealog.localhost/log",
        help="the log's origin line, fixed at creation (default %(default)s)",
    )
    p.add_argument(
        "--key-file", help="signing key file (default: DATA_DIR/log.key, created if missing)"
    )
    p.add_argument(
        "--max-entry-bytes",
        type=int,
        default=d.max_entry_bytes,
        help="largest payload (default %(default)s)",
    )
    p.add_argument(
        "--max-request-entries",
        type=int,
        default=d.max_request_entries,
        help="most entries per Append (default %(default)s)",
    )
    p.add_argument(
        "--batch-max-entries",
        type=int,
        default=d.batch_max_entries,
        help="most entries per durable commit (default %(default)s)",
    )
    p.add_argument(
        "--batch-max-wait-ms",
        type=float,
        default=d.batch_max_wait_ms,
        help="wait for more appends before a commit (default %(default)s)",
    )
    p.add_argument(
        "--max-queued-entries",
        type=int,
        default=d.max_queued_entries,
        help="queued entries before RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("append", help="append events; print their verified receipts")
    p.add_argument(
        "payload",
        nargs="?",
        help="the event as text; '-' or nothing reads stdin, one event per line",
    )
    p.add_argument("--file", help="append the whole file as one event")
    p.add_argument(
        "--batch",
        type=int,
        default=500,
        help="events per request when reading stdin (default %(default)s)",
    )
    _client_options(p)
    p.set_defaults(func=cmd_append)

    p = sub.add_parser("checkpoint", help="print the latest verified checkpoint")
    p.add_argument("--trusted", help="a checkpoint file you trust: also verify consistency with it")
    p.add_argument("--save", help="write the signed checkpoint note to this file")
    _client_options(p)
    p.set_defaults(func=cmd_checkpoint)

    p = sub.add_parser("prove", help="prove an entry is in the log (inclusion proof)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--index", type=int, help="the entry's leaf index")
    g.add_argument("--leaf-hash", help="the entry's RFC 6962 leaf hash, hex")
    p.add_argument(
        "--checkpoint",
        help="prove against this saved signed checkpoint (default: the latest checkpoint)",
    )
    _client_options(p)
    p.set_defaults(func=cmd_prove)

    p = sub.add_parser("consistency", help="prove a newer checkpoint extends an older one")
    p.add_argument("old", help="file with the older signed checkpoint")
    p.add_argument("new", nargs="?", help="file with the newer one (default: the latest)")
    _client_options(p)
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("entries", help="print entries, verified against the latest checkpoint")
    p.add_argument("start", type=int, nargs="?", default=0, help="first index (default 0)")
    p.add_argument("end", type=int, nargs="?", help="one past the last index (default: all)")
    _client_options(p)
    p.set_defaults(func=cmd_entries)
    p = sub.add_parser(
        "fsck",
        help="verify a log's data folder offline (read-only)",
        description="Re-parse and re-hash every leaf, recompute every stored hash and the "
        "root, check the indexes, and verify the stored checkpoint with the given key. "
        "Exit status 2 when anything is wrong. There is no repair: a log that fails "
        "fsck is evidence; see docs/operations.md.",
    )
    p.add_argument("data_dir", help="the log's data folder (the one given to serve)")
    p.add_argument(
        "--vkey",
        help="the log's verifier key, or @FILE, from a source you trust (default "
        "$SEALOG_VKEY or ./sealog-data/log.vkey)",
    )
    p.add_argument("--origin", help="the log's origin (default: as stored)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_fsck)
    for action in sub._choices_actions:
        command = sub.choices[action.dest]
        if command.description is None and action.help:
            summary = action.help[0].upper() + action.help[1:]
            command.description = f"{summary}. {_DESCRIPTIONS.get(action.dest, '')}".strip()
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sealog`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except SealogError as e:
        print(f"sealog: error: {e.diagnostics()}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"sealog: error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print(f"sealog: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
