"""The ``sealog`` command: run a log, and talk to one as a service, monitor or auditor would."""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from sealog.client.audit import SoughtEvent, audit_events, events_from_jsonl
from sealog.client.bundle import ProofBundle
from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.cosignature import CosignatureVerifier, Cosigner
from sealog.client.durable import write_durably
from sealog.client.errors import SealogError
from sealog.client.event import OUTCOMES, AuditEvent
from sealog.client.evidence import check_evidence, read_evidence
from sealog.client.keyfile import read_key_file, write_private_key_file
from sealog.client.leaf import Leaf
from sealog.client.log_client import Entry, InclusionProof, LogClient, Receipt
from sealog.client.monitor import Monitor, MonitorConfig
from sealog.client.note import Ed25519Signer, Ed25519Verifier
from sealog.client.tls import channel_credentials
from sealog.client.witness import Witness
from sealog.client.witness_policy import WitnessPolicy
from sealog.server.app import VKEY_FILE, LogServer, TlsFiles
from sealog.server.backup import backup
from sealog.server.config import Settings
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.policy import Policy, hash_api_key, new_api_key
from sealog.server.tls import is_loopback
from sealog.server.witness_http import WitnessHTTPServer

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
    "search": "Auditors ask what one machine identity did between two times. The server "
    "answers from its identity/time index; every result's inclusion proof, identity and "
    "time are verified, so an index that returns wrong entries is caught.",
    "backup": "The copy is compacted and taken in one read transaction, so it is "
    "consistent while the log keeps serving; it holds log.vkey and the signed checkpoint "
    "but never the private key, and is removed again if fsck on it fails. Restore by "
    "serving the copy's folder (docs/operations.md).",
    "apikey": "The key is printed once; only its SHA-256 goes into the policy file. "
    "Reload the server's policy afterwards.",
    "reload-policy": "Takes effect from the next request: a key removed from the file is "
    "refused from then on. Sending SIGHUP to the server does the same.",
    "entries": "Entries [START, END), each page verified against the latest checkpoint "
    "before it is printed: index, acceptance time (ms), identity, payload.",
    "monitor": "The logs are listed in a TOML config (docs/monitoring.md). Each poll verifies "
    "the new checkpoint's signature and its consistency with the last trusted one; optionally "
    "it re-hashes every entry (full_audit), checks the witnessed checkpoint against a witness "
    "policy, and cosigns as a witness. State is replaced atomically and only with verified "
    "checkpoints; with no state it trusts the first checkpoint (TOFU) and says so. On a "
    "failed check it writes an evidence file, runs alert_command with its path, and exits "
    'with status 3 (on_failure = "exit") or keeps going ("continue"). One status line '
    "per poll on stdout; a progress bar on stderr while a full audit catches up.",
    "check-evidence": "The signatures are checked with the log key you give (not the one in "
    "the file), then the failure is reproduced "
    "(split view, failed consistency proof, rollback, bad signature, invalid cosignature, "
    "root mismatch). Prints what the file proves and what it does not. Exit status 0 only "
    "when the evidence holds.",
    "audit": "Each event is proven against one verified checkpoint (the witnessed one with "
    "--witness-vkey, or --checkpoint FILE). Events: --index, "
    "--leaf-hash, --payload-file (the entry with that exact payload; reads the log to find "
    "it), or --batch FILE of JSON lines (keys index, leaf_hash, leaf_b64, payload, "
    "payload_b64, label; `sealog append --json` output works as is). Prints a table, or one "
    "JSON object per event. Exit status 0 only if every event is included.",
    "verify": "The bundle (c2sp.org/tlog-proof@v1, from `sealog prove --bundle`) is checked "
    "with no network: the log's signature on the checkpoint, the witness policy if given, "
    "the leaf in the bundle and its inclusion proof. Exit status 0 only if it verifies.",
    "witness": "A witness per c2sp.org/tlog-witness: `sealog witness serve` answers "
    "POST /add-checkpoint for the logs it is given, cosigning (tlog-cosignature/v1) only "
    "checkpoints consistent with the last one it cosigned for that log.",
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


def _witness_keys(values: Sequence[str] | None) -> list[CosignatureVerifier]:
    """Witness verifier keys: each value a key, or @FILE with one key per line."""
    keys = []
    for value in values or ():
        if value.startswith("@"):
            lines = Path(value[1:]).read_text(encoding="ascii").split()
            keys += [CosignatureVerifier.from_vkey(line) for line in lines]
        else:
            keys.append(CosignatureVerifier.from_vkey(value))
    return keys


def _policy(args: argparse.Namespace) -> WitnessPolicy | None:
    keys = _witness_keys(getattr(args, "witness_vkey", None))
    if not keys:
        if getattr(args, "witness_threshold", None) is not None:
            raise SealogError("--witness-threshold needs --witness-vkey")
        return None
    return WitnessPolicy.from_vkeys(keys, args.witness_threshold, args.witness_max_age)


def _client(args: argparse.Namespace) -> LogClient:
    target = args.target or os.environ.get("SEALOG_TARGET") or DEFAULT_TARGET
    policy = _policy(args)
    credentials = None
    if args.tls_ca or args.tls_cert:
        credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return LogClient(
        target,
        _verifier(args),
        origin=args.origin,
        timeout=args.timeout,
        witnesses=policy if policy is not None else (),
        credentials=credentials,
        api_key=args.api_key or os.environ.get("SEALOG_API_KEY") or None,
    )


# --- commands ------------------------------------------------------------------
def cmd_keygen(args: argparse.Namespace) -> int:
    signer: Ed25519Signer | Cosigner = (
        Cosigner.generate(args.name) if args.witness else Ed25519Signer.generate(args.name)
    )
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
    witnesses = _witness_keys(args.witness_vkey)
    if args.push_witness and not witnesses:
        raise SealogError("--push-witness needs --witness-vkey: the witnesses' keys to accept")
    server = LogServer.open(
        args.data_dir,
        address=args.listen,
        origin=args.origin_name,
        key_file=args.key_file,
        settings=settings,
        witnesses=witnesses,
        push_witnesses=args.push_witness or (),
        policy_file=args.policy,
        tls=TlsFiles(
            Path(args.tls_cert),
            Path(args.tls_key),
            Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
        if args.tls_cert
        else None,
        allow_insecure_remote=args.insecure_allow_remote,
        mtls_address=args.mtls_listen,
        extra_key_files=args.extra_key_file or (),
    )
    host = args.listen.rsplit(":", 1)[0]
    if args.tls_cert:
        transport = "TLS" + (
            " with client certificates" if args.tls_client_ca and not args.mtls_listen else ""
        )
    elif is_loopback(args.listen):
        transport = "plaintext gRPC, INSECURE: loopback use only"
    else:
        transport = "plaintext gRPC, INSECURE: --insecure-allow-remote"
    policy = server.auth.policy
    access = (
        f"policy {args.policy} ({len(policy.identities)} identities; reads "
        f"{'public' if policy.public_read else 'need the read role'}; SIGHUP reloads)"
        if policy is not None
        else "open: no policy, anyone who can connect may append"
    )
    vkey = server.signer.verifier().vkey
    cp = open_checkpoint(server.log.latest_checkpoint(), server.signer.verifier()).checkpoint
    print(
        f"sealog: serving log {args.origin_name!r} from {Path(args.data_dir).resolve()}\n"
        f"  address:      {host}:{server.port} ({transport})\n"
        f"  access:       {access}\n"
        + (
            f"  mutual TLS:   {args.mtls_listen.rsplit(':', 1)[0]}:{server.mtls_port}\n"
            if args.mtls_listen
            else ""
        )
        + f"  verifier key: {vkey}\n"
        f"  checkpoint:   size {cp.size}, root {_b64(cp.root_hash)}\n"
        + "".join(f"  witness:      {w.vkey}\n" for w in witnesses)
        + "".join(f"  pushing to:   {url}\n" for url in args.push_witness or ())
        + "Stop with Ctrl-C (queued appends are committed first).",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(1)  # a second signal forces
        stop.set()

    def on_hangup(signum: int, frame: object) -> None:
        try:
            reloaded = server.auth.reload()
        except SealogError as e:
            print(f"sealog: policy NOT reloaded, the old one stays in force: {e}", flush=True)
        else:
            if reloaded is not None:
                print(
                    f"sealog: policy reloaded ({len(reloaded.identities)} identities)", flush=True
                )

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
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

        for payload in [event] if event is not None else _payloads(args):
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
        if args.checkpoint and client.policy is not None:
            client.check_witnesses(cp)
        if args.index is not None:
            entry, proof = client.entry_and_proof(args.index, cp)
            obj = {**_proof_json(proof), "entry": _leaf_json(entry.index, entry.leaf)}
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
            + "\n".join(f"  {_b64(h)}" for h in proof.proof)
        )
        if args.bundle:
            bundle = ProofBundle.for_leaf(entry.index, entry.leaf, proof.proof, cp.note)
            bundle.verify(client.verifier, origin=client.origin, policy=client.policy)
            write_durably(args.bundle, bundle.to_bytes())
            obj["bundle"] = str(args.bundle)
            text += f"\nwrote the proof bundle (c2sp.org/tlog-proof@v1) to {args.bundle}"
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
    with _client(args) as client:
        for e in client.search(args.identity, since, until, page_size=args.page_size):
            obj = _leaf_json(e.index, e.leaf)
            text = f"{e.index}\t{obj['accepted_at_ms']}\t{obj.get('payload', obj['payload_b64'])}"
            _emit(args, obj, text)
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    token = new_api_key()
    policy_file = Path(args.policy)
    current = Policy.load(policy_file) if policy_file.exists() else None
    if current is None or args.identity not in current.identities:
        raise SealogError(
            f"{policy_file}: add an [[identity]] named {args.identity!r} with its roles first"
        )
    entry = f'\n[[api_key]]\nidentity = "{args.identity}"\nsha256 = "{hash_api_key(token)}"\n' + (
        f"comment = {json.dumps(args.comment)}\n" if args.comment else ""
    )
    Policy.from_dict(
        tomllib.loads(policy_file.read_text(encoding="utf-8") + entry), source=str(policy_file)
    )
    with policy_file.open("a", encoding="utf-8") as f:
        f.write(entry)
    _emit(
        args,
        {"identity": args.identity, "api_key": token, "policy": str(policy_file)},
        f"API key for {args.identity!r} (shown once; only its hash is in {policy_file}):\n"
        f"{token}\nReload the server's policy (SIGHUP or `sealog reload-policy`) to use it.",
    )
    return 0


def cmd_reload_policy(args: argparse.Namespace) -> int:
    with _client(args) as client:
        identities, keys = client.reload_policy()
    _emit(
        args,
        {"identities": identities, "api_keys": keys},
        f"policy reloaded: {identities} identities, {keys} API keys",
    )
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    explicit = args.vkey or os.environ.get("SEALOG_VKEY")
    result = backup(args.data_dir, args.dest, _verifier(args) if explicit else None)
    _emit(
        args,
        {
            "path": str(result.path),
            "tree_size": result.size,
            "root_hash": _b64(result.root_hash),
            "bytes": result.bytes_copied,
            "fsck": "ok",
        },
        f"backup of tree size {result.size} (root {_b64(result.root_hash)}) in {result.path}: "
        f"{result.bytes_copied:,} bytes, fsck ok",
    )
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
    witnesses = _witness_keys(args.witness_vkey)
    verdict = check_evidence(
        evidence,
        _verifier(args),
        origin=args.origin,
        witness=witnesses[0] if witnesses else None,
    )
    _emit(
        args,
        {
            "holds": verdict.holds,
            "kind": verdict.kind,
            "findings": verdict.findings,
            "proves": verdict.proves,
            "observed_at": evidence.observed_at,
            "summary": evidence.summary,
        },
        f"{evidence.summary} (observed {evidence.observed_at})\n{verdict.report()}",
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
    with _client(args) as client:
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
            print(json.dumps({**r.to_json(), "checkpoint": _checkpoint_json(cp)}), flush=True)
    else:
        width = max(len("EVENT"), *(len(r.event.label) for r in results))
        print(f"{'EVENT':<{width}}  {'STATUS':<9}  {'INDEX':>8}  LEAF HASH")
        for r in results:
            index = "-" if r.index is None else str(r.index)
            leaf = r.leaf_hash.hex() if r.leaf_hash else "-"
            line = f"{r.event.label:<{width}}  {r.status:<9}  {index:>8}  {leaf}"
            print(line + (f"  ({r.detail})" if r.detail else ""))
        witnessed = f", {len(cosigned)} witness cosignature(s) verified" if cosigned else ""
        ok = sum(r.included for r in results)
        print(
            f"{ok} of {len(results)} included in the tree of size {size}, root "
            f"{_b64(cp.checkpoint.root_hash)} (checkpoint signature verified{witnessed})"
        )
    return 0 if all(r.included for r in results) else 1


def cmd_verify(args: argparse.Namespace) -> int:
    bundle = ProofBundle.parse(Path(args.file).read_bytes())
    verifier = _verifier(args)
    expected = bytes.fromhex(args.leaf_hash) if args.leaf_hash else None
    verified = bundle.verify(
        verifier, origin=args.origin, policy=_policy(args), expected_leaf_hash=expected
    )
    cp = verified.checkpoint.checkpoint
    obj: dict[str, Any] = {
        "valid": True,
        "leaf_index": verified.index,
        "leaf_hash": verified.leaf_hash.hex(),
        "checkpoint": _checkpoint_json(verified.checkpoint),
        "witness_cosignatures": [c.name for c in verified.cosignatures],
    }
    text = (
        f"VALID: entry {verified.index} (leaf hash {verified.leaf_hash.hex()}) is in the tree "
        f"of size {cp.size}, root {_b64(cp.root_hash)}, signed by {verifier.name}"
    )
    if verified.cosignatures:
        text += f" and cosigned by {', '.join(c.name for c in verified.cosignatures)}"
    if bundle.extra is not None:
        obj["entry"] = _leaf_json(verified.index, bundle.extra)
        entry = obj["entry"]
        text += (
            f"\n  accepted_at_ms {entry['accepted_at_ms']}  identity {entry['identity'] or '-'}"
            f"\n  payload {entry.get('payload', entry['payload_b64'])}"
        )
    _emit(args, obj, text)
    return 0


def cmd_witness_serve(args: argparse.Namespace) -> int:
    cosigner = Cosigner.from_skey(read_key_file(args.key, private=True))
    logs: dict[str, list[Ed25519Verifier]] = {}
    for value in args.log:
        texts = Path(value[1:]).read_text(encoding="ascii").split() if value[:1] == "@" else [value]
        for text in texts:
            key = Ed25519Verifier.from_vkey(text)
            logs.setdefault(key.name, []).append(key)
    host, _, port = args.listen.rpartition(":")
    witness = Witness(cosigner, logs, args.state_dir)
    server = WitnessHTTPServer(witness, host or "127.0.0.1", int(port), args.prefix)
    print(
        f"sealog: witness {cosigner.name} serving {server.url}\n"
        f"  witness key: {cosigner.verifier().vkey}\n"
        + "".join(f"  log:         {origin}\n" for origin in sorted(logs))
        + "Stop with Ctrl-C.",
        flush=True,
    )
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    stop.wait()
    server.stop()
    witness.close()
    return 0


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
    p.add_argument(
        "--api-key", help="present this API key (default $SEALOG_API_KEY); see `sealog apikey`"
    )
    p.add_argument("--tls-ca", help="connect with TLS, trusting this CA file (PEM)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", help="client certificate's private key (PEM)")
    _witness_options(p)


def _witness_options(p: argparse.ArgumentParser) -> None:
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
    p.add_argument(
        "--witness",
        action="store_true",
        help="make a witness (cosigner) key: tlog-cosignature/v1, key type 0x04",
    )
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
    p.add_argument(
        "--witness-vkey",
        action="append",
        metavar="VKEY",
        help="a witness whose cosignatures AddCosignature accepts: its verifier key, or @FILE "
        "with one per line (repeatable); others get PERMISSION_DENIED",
    )
    p.add_argument(
        "--push-witness",
        action="append",
        metavar="URL",
        help="send each new checkpoint to this C2SP tlog-witness add-checkpoint URL and keep "
        "its cosignature (repeatable; its key must be a --witness-vkey)",
    )
    p.add_argument(
        "--extra-key-file",
        action="append",
        metavar="FILE",
        help="also sign every checkpoint with this key (same name, new key): the middle "
        "step of a key rotation, docs/authentication.md (repeatable)",
    )
    p.add_argument(
        "--policy",
        help="access policy file (TOML: identities, roles, API key hashes, quotas; "
        "docs/authentication.md). Without one the log is open to anyone who can connect.",
    )
    p.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the TLS certificate's private key (PEM)")
    p.add_argument(
        "--tls-client-ca",
        help="mutual TLS: clients must present a certificate this CA (PEM) signed; their "
        "identity is its URI SAN (SPIFFE ID) or CN. Applies to --mtls-listen if given, "
        "else to --listen",
    )
    p.add_argument(
        "--mtls-listen",
        help="a second address for mutual TLS, so --listen stays TLS-only for API keys",
    )
    p.add_argument(
        "--insecure-allow-remote",
        action="store_true",
        help="allow plaintext on a non-loopback address (only behind something that encrypts)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("append", help="append events; print their verified receipts")
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
    p.add_argument(
        "--bundle",
        metavar="FILE",
        help="also write a self-contained proof (c2sp.org/tlog-proof@v1 with the leaf in its "
        "extra line) that `sealog verify` checks offline",
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

    p = sub.add_parser("backup", help="copy a log consistently while it serves, and fsck the copy")
    p.add_argument("data_dir", help="the log's data folder")
    p.add_argument("dest", help="a new folder for the copy (must not exist)")
    p.add_argument("--vkey", help="the log's verifier key or @FILE (default: DATA_DIR/log.vkey)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("search", help="find an identity's entries in a time window (verified)")
    p.add_argument("--identity", required=True, help="the identity, as stamped into leaves")
    p.add_argument("--since", help="from this acceptance time (ms since the epoch or ISO 8601)")
    p.add_argument("--until", help="to this acceptance time, inclusive (default: now)")
    p.add_argument("--page-size", type=int, default=0, help="results per request")
    _client_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("apikey", help="create an API key for an identity of a policy file")
    p.add_argument("--identity", required=True, help="an [[identity]] of the policy")
    p.add_argument("--policy", required=True, help="the policy file to add the key's hash to")
    p.add_argument("--comment", help="a note stored beside the hash (who, why)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_apikey)

    p = sub.add_parser("reload-policy", help="make the log re-read its policy (admin role)")
    _client_options(p)
    p.set_defaults(func=cmd_reload_policy)

    p = sub.add_parser("monitor", help="follow logs and check every checkpoint they sign")
    p.add_argument("config", help="TOML config listing the logs (docs/monitoring.md)")
    p.add_argument("--once", action="store_true", help="poll each log once, then exit")
    p.add_argument("--polls", type=int, help="stop after this many polls in all")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("check-evidence", help="re-verify a monitor's evidence file offline")
    p.add_argument("file", help="the evidence file (JSON)")
    p.add_argument(
        "--vkey",
        help="the log's verifier key, or @FILE, from a source you trust (default "
        "$SEALOG_VKEY or ./sealog-data/log.vkey)",
    )
    p.add_argument("--origin", help="the log's origin (default: as in the file)")
    p.add_argument(
        "--witness-vkey",
        action="append",
        metavar="VKEY",
        help="for invalid_cosignature evidence: the witness key to check with "
        "(default: the one in the file)",
    )
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(func=cmd_check_evidence)

    p = sub.add_parser("audit", help="prove that events are in the log; print a report")
    p.add_argument("--index", type=int, action="append", help="an entry's index (repeatable)")
    p.add_argument("--leaf-hash", action="append", help="an entry's leaf hash, hex (repeatable)")
    p.add_argument(
        "--payload-file",
        action="append",
        help="a file whose bytes are an event's payload (repeatable; reads the log to find it)",
    )
    p.add_argument("--batch", action="append", help="a JSON-lines file of events ('-' for stdin)")
    p.add_argument("--checkpoint", help="audit against this saved signed checkpoint")
    _client_options(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("verify", help="verify a proof bundle offline, with no network")
    p.add_argument("file", help="the bundle (c2sp.org/tlog-proof@v1 text)")
    p.add_argument(
        "--vkey",
        help="the log's verifier key, or @FILE (default $SEALOG_VKEY or ./sealog-data/log.vkey)",
    )
    p.add_argument("--origin", help="the log's origin, if not the key's name")
    p.add_argument("--leaf-hash", help="the leaf hash the bundle must prove, hex")
    p.add_argument("--json", action="store_true", help="print JSON")
    _witness_options(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("witness", help="run a C2SP witness that cosigns logs' checkpoints")
    witness_sub = p.add_subparsers(dest="witness_command", required=True, metavar="COMMAND")
    w = witness_sub.add_parser(
        "serve",
        help="serve POST /add-checkpoint (c2sp.org/tlog-witness) over HTTP",
        description="Serve the tlog-witness add-checkpoint call for the given logs. Each "
        "checkpoint must be signed by its log's key and come with a consistency proof from "
        "the last one this witness cosigned for that log; the latest cosigned checkpoint "
        "per log is kept in --state-dir. Plain HTTP on loopback by default.",
    )
    w.add_argument("--key", required=True, help="the witness's signer key file (keygen --witness)")
    w.add_argument(
        "--log",
        action="append",
        required=True,
        metavar="VKEY",
        help="a log to witness: its verifier key (origin = the key's name), or @FILE (repeatable)",
    )
    w.add_argument("--state-dir", default="witness-state", help="default %(default)s")
    w.add_argument("--listen", default="127.0.0.1:7380", help="default %(default)s")
    w.add_argument("--prefix", default="", help="submission prefix path (default: none)")
    w.set_defaults(func=cmd_witness_serve)
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
