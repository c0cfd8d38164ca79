"""The ``sealog`` commands a log's operator runs.

keygen, serve, apikey, reload-policy, backup, fsck and witness serve: keys, running
the log and its witness, its access policy, and its data folder.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import tomllib
from pathlib import Path

from sealog.client.checkpoint import open_checkpoint
from sealog.client.cosignature import Cosigner
from sealog.client.errors import SealogError
from sealog.client.http_serve import HttpLimits
from sealog.client.keyfile import (
    read_key_file,
    vkey_path_for,
    write_private_key_file,
    write_public_key_file,
)
from sealog.client.note import Ed25519Signer, Ed25519Verifier
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import Witness
from sealog.server.app import LogServer, TlsFiles
from sealog.server.backup import backup
from sealog.server.cli_client import b64, client_from_args, emit, verifier_from_args, witness_keys
from sealog.server.config import Settings
from sealog.server.fsck_process import fsck_storage
from sealog.server.policy import Policy, hash_api_key, new_api_key
from sealog.server.tls import is_loopback

__all__ = [
    "cmd_apikey",
    "cmd_backup",
    "cmd_fsck",
    "cmd_keygen",
    "cmd_reload_policy",
    "cmd_serve",
    "cmd_witness_serve",
]


def cmd_keygen(args: argparse.Namespace) -> int:
    signer: Ed25519Signer | Cosigner = (
        Cosigner.generate(args.name) if args.witness else Ed25519Signer.generate(args.name)
    )
    out = Path(args.out or f"{args.name.replace('/', '_')}.key")
    try:
        vkey_file = vkey_path_for(out)
    except ValueError as e:
        raise SealogError(f"--out {e}") from None
    for path in (out, vkey_file):
        if path.exists() or path.is_symlink():
            raise SealogError(
                f"{path} already exists; keygen never overwrites a key file: give another "
                "--out, or move the old key away first"
            )
    vkey = signer.verifier().vkey
    try:
        write_private_key_file(out, signer.skey)
    except FileExistsError:
        raise SealogError(f"{out} already exists; keygen never overwrites a key file") from None
    try:
        write_public_key_file(vkey_file, vkey)
    except OSError as e:
        out.unlink()  # ours, created just now: leave no key without its vkey
        raise SealogError(
            f"{vkey_file}: cannot write the verifier key ({e}); nothing was kept"
        ) from e
    emit(
        args,
        {"private_key_file": str(out), "vkey_file": str(vkey_file), "vkey": vkey},
        f"wrote private key to {out} (mode 0600) and verifier key to {vkey_file}\n"
        f"verifier key: {vkey}",
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = Settings(
        max_entry_bytes=args.max_entry_bytes,
        max_request_entries=args.max_request_entries,
        batch_max_entries=args.batch_max_entries,
        batch_max_wait_ms=args.batch_max_wait_ms,
        index_flush_entries=args.index_flush_entries,
        max_queued_entries=args.max_queued_entries,
        max_connections=args.max_connections,
        max_entry_streams=args.max_entry_streams,
        max_entry_streams_per_peer=args.max_entry_streams_per_peer,
        max_page_bytes=args.max_page_bytes,
        entry_stream_stall_s=args.entry_stream_stall_s,
        handshake_timeout_s=args.handshake_timeout_s,
        idle_connection_timeout_s=args.idle_connection_timeout_s,
        clock_tolerance_ms=args.clock_tolerance_ms,
    )
    witnesses = witness_keys(args.witness_vkey)
    if args.push_witness and not witnesses:
        raise SealogError("--push-witness needs --witness-vkey: the witnesses' keys to accept")
    # Before the log opens: a SIGTERM from the moment the process exists is a clean
    # shutdown (once the log is open), never the default death mid-start.
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        if stop.is_set():
            os._exit(1)  # a second signal forces
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = LogServer.open(
        args.data_dir,
        address=args.listen,
        origin=args.origin_name,
        key_file=args.key_file,
        settings=settings,
        witnesses=witnesses,
        push_witnesses=args.push_witness or (),
        push_witness_interval_s=args.push_witness_interval,
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
        new_log=args.new_log,
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
        f"  checkpoint:   size {cp.size}, root {b64(cp.root_hash)}\n"
        + "".join(f"  witness:      {w.vkey}\n" for w in witnesses)
        + "".join(f"  pushing to:   {url}\n" for url in args.push_witness or ())
        + "Stop with Ctrl-C (queued appends are committed first).",
        flush=True,
    )

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

    signal.signal(signal.SIGHUP, on_hangup)
    stop.wait()
    print("sealog: shutting down", flush=True)
    server.stop()
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
    emit(
        args,
        {"identity": args.identity, "api_key": token, "policy": str(policy_file)},
        f"API key for {args.identity!r} (shown once; only its hash is in {policy_file}):\n"
        f"{token}\nReload the server's policy (SIGHUP or `sealog reload-policy`) to use it.",
    )
    return 0


def cmd_reload_policy(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        identities, keys = client.reload_policy()
    emit(
        args,
        {"identities": identities, "api_keys": keys},
        f"policy reloaded: {identities} identities, {keys} API keys",
    )
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    explicit = args.vkey or os.environ.get("SEALOG_VKEY")
    result = backup(args.data_dir, args.dest, verifier_from_args(args) if explicit else None)
    emit(
        args,
        {
            "path": str(result.path),
            "tree_size": result.size,
            "root_hash": b64(result.root_hash),
            "bytes": result.bytes_copied,
            "fsck": "ok",
        },
        f"backup of tree size {result.size} (root {b64(result.root_hash)}) in {result.path}: "
        f"{result.bytes_copied:,} bytes, fsck ok",
    )
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    verifier = verifier_from_args(args)
    db = Path(args.data_dir)
    if not (db / "data.mdb").exists():
        db = db / "db"
    if not (db / "data.mdb").exists():
        raise SealogError(f"{args.data_dir}: no log here (no db/data.mdb)")
    # In a child process: damage that kills LMDB's reader is a PROBLEM line too.
    report = fsck_storage(db, verifier.vkey, origin=args.origin, progress=not args.json)
    text = "\n".join(f"PROBLEM: {p}" for p in report.problems) or (
        f"ok: {report.entries_checked} entries, every hash, index and the signed "
        f"checkpoint (size {report.size}) verified"
    )
    emit(
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


def cmd_witness_serve(args: argparse.Namespace) -> int:
    cosigner = Cosigner.from_skey(read_key_file(args.key, private=True))
    logs: dict[str, list[Ed25519Verifier]] = {}
    for value in args.log:
        texts = Path(value[1:]).read_text(encoding="ascii").split() if value[:1] == "@" else [value]
        for text in texts:
            key = Ed25519Verifier.from_vkey(text)
            logs.setdefault(key.name, []).append(key)
    host, _, port = args.listen.rpartition(":")
    limits = HttpLimits(
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        keepalive_timeout_s=args.keepalive_timeout,
        max_connections=args.max_connections,
        max_requests=args.max_requests,
    )
    witness = Witness(cosigner, logs, args.state_dir)
    server = WitnessHTTPServer(witness, host or "127.0.0.1", int(port), args.prefix, limits=limits)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.start()
    except OSError as e:
        witness.close()
        raise SealogError(
            f"witness serve: cannot listen on {args.listen}: {e.strerror or e}"
        ) from e
    print(
        f"sealog: witness {cosigner.name} serving {server.url}\n"
        f"  witness key: {cosigner.verifier().vkey}\n"
        + "".join(f"  log:         {origin}\n" for origin in sorted(logs))
        + f"  limits:      {limits.max_connections} connections, {limits.max_requests} requests "
        f"at once; headers {limits.header_timeout_s:g} s, body {limits.body_timeout_s:g} s, "
        f"idle {limits.keepalive_timeout_s:g} s\n"
        "Stop with Ctrl-C.",
        flush=True,
    )
    stop.wait()
    server.stop()
    witness.close()
    return 0
