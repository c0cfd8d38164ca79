"""The ``sealog`` commands a log's operator runs besides ``serve``.

keygen makes signing keys (C2SP signed-note Ed25519, or tlog-cosignature witness
keys); apikey and reload-policy manage the access policy; backup and fsck copy and
check a data folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tomllib
from pathlib import Path

from sealog.client._encoding import encode_base64
from sealog.client.cosignature import Cosigner
from sealog.client.errors import SealogError
from sealog.client.keyfile import vkey_path_for, write_private_key_file, write_public_key_file
from sealog.client.note import Ed25519Signer
from sealog.server.backup import backup
from sealog.server.cli.options import (
    TRUSTED_VKEY_HELP,
    Commands,
    add_client_options,
    add_command,
    add_origin_option,
    add_vkey_option,
    client_from_args,
    verifier_from_args,
)
from sealog.server.cli.output import add_json_option, emit
from sealog.server.fsck_process import fsck_storage
from sealog.server.policy import Policy, hash_api_key, new_api_key

__all__ = [
    "add_apikey",
    "add_backup",
    "add_fsck",
    "add_keygen",
    "add_reload_policy",
    "cmd_apikey",
    "cmd_backup",
    "cmd_fsck",
    "cmd_keygen",
    "cmd_reload_policy",
]


# --- keygen -----------------------------------------------------------------------
def add_keygen(commands: Commands) -> None:
    p = add_command(
        commands,
        "keygen",
        "create an Ed25519 signing key (file mode 0600)",
        "The private key file is created with mode 0600; the verifier key (vkey) is "
        "printed and written beside it, to give to clients: --out x.key gives x.vkey, "
        "--out dir/example.com gives dir/example.com.vkey. Nothing is written if either "
        "file exists.",
    )
    p.add_argument("name", help="key name; for a log, its origin (e.g. example.com/log)")
    p.add_argument(
        "--out",
        help="private key file (default NAME.key, '/' as '_'); the vkey goes beside it, named "
        "as the key file without a trailing .key, plus .vkey",
    )
    p.add_argument(
        "--witness",
        action="store_true",
        help="make a witness (cosigner) key: tlog-cosignature/v1, key type 0x04",
    )
    add_json_option(p)
    p.set_defaults(func=cmd_keygen)


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


# --- fsck -------------------------------------------------------------------------
def add_fsck(commands: Commands) -> None:
    p = add_command(
        commands,
        "fsck",
        "verify a log's data folder offline (read-only)",
        description="Re-parse and re-hash every leaf, recompute every stored hash and the "
        "root, check the indexes, and verify the stored checkpoint with the given key. "
        "Exit status 2 when anything is wrong. There is no repair: a log that fails "
        "fsck is evidence; see docs/operations.md.",
    )
    p.add_argument("data_dir", help="the log's data folder (the one given to serve)")
    add_vkey_option(p, TRUSTED_VKEY_HELP)
    add_origin_option(p, "the log's origin (default: as stored)")
    add_json_option(p, "print the report as JSON")
    p.set_defaults(func=cmd_fsck)


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


# --- backup -----------------------------------------------------------------------
def add_backup(commands: Commands) -> None:
    p = add_command(
        commands,
        "backup",
        "copy a log consistently while it serves, and fsck the copy",
        "The copy is compacted and taken in one read transaction, so it is consistent "
        "while the log keeps serving. It is built in DEST.incomplete-*, checked with fsck, "
        "and appears at DEST only once verified. It holds log.vkey and the signed "
        "checkpoint but never the private key: restore by copying the folder and putting "
        "log.key back, or serving it with --key-file (docs/operations.md).",
    )
    p.add_argument("data_dir", help="the log's data folder")
    p.add_argument("dest", help="a new folder for the copy (must not exist)")
    add_vkey_option(p, "the log's verifier key or @FILE (default: DATA_DIR/log.vkey)")
    add_json_option(p)
    p.set_defaults(func=cmd_backup)


def cmd_backup(args: argparse.Namespace) -> int:
    explicit = args.vkey or os.environ.get("SEALOG_VKEY")
    result = backup(args.data_dir, args.dest, verifier_from_args(args) if explicit else None)
    emit(
        args,
        {
            "path": str(result.path),
            "tree_size": result.size,
            "root_hash": encode_base64(result.root_hash),
            "bytes": result.bytes_copied,
            "fsck": "ok",
        },
        f"backup of tree size {result.size} (root {encode_base64(result.root_hash)}) "
        f"in {result.path}: "
        f"{result.bytes_copied:,} bytes, fsck ok",
    )
    return 0


# --- the access policy ------------------------------------------------------------
def add_apikey(commands: Commands) -> None:
    p = add_command(
        commands,
        "apikey",
        "create an API key for an identity of a policy file",
        "The key is printed once; only its SHA-256 goes into the policy file. Reload the "
        "server's policy afterwards.",
    )
    p.add_argument("--identity", required=True, help="an [[identity]] of the policy")
    p.add_argument("--policy", required=True, help="the policy file to add the key's hash to")
    p.add_argument("--comment", help="a note stored beside the hash (who, why)")
    add_json_option(p)
    p.set_defaults(func=cmd_apikey)


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


def add_reload_policy(commands: Commands) -> None:
    p = add_command(
        commands,
        "reload-policy",
        "make the log re-read its policy (admin role)",
        "Takes effect from the next request: a key removed from the file is refused from "
        "then on. Sending SIGHUP to the server does the same.",
    )
    add_client_options(p)
    p.set_defaults(func=cmd_reload_policy)


def cmd_reload_policy(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        identities, keys = client.reload_policy()
    emit(
        args,
        {"identities": identities, "api_keys": keys},
        f"policy reloaded: {identities} identities, {keys} API keys",
    )
    return 0
