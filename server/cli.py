"""The ``sealog`` command: run a log, and talk to one as a service, monitor or auditor would.

This module holds the argument parser and the dispatch; the commands live in
``cli_operator`` (the log's operator), ``cli_client`` (services and readers, and the
client-side helpers the others share) and ``cli_audit`` (monitors and auditors).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

import grpc

from sealog.client import display
from sealog.client.errors import SealogError
from sealog.client.event import OUTCOMES
from sealog.client.http_serve import HttpLimits
from sealog.server.cli_audit import cmd_audit, cmd_check_evidence, cmd_monitor, cmd_verify
from sealog.server.cli_client import (
    DEFAULT_DATA_DIR,
    DEFAULT_TARGET,
    add_client_options,
    add_witness_options,
    cmd_append,
    cmd_checkpoint,
    cmd_consistency,
    cmd_entries,
    cmd_prove,
    cmd_search,
)
from sealog.server.cli_operator import (
    cmd_apikey,
    cmd_backup,
    cmd_fsck,
    cmd_keygen,
    cmd_reload_policy,
    cmd_serve,
    cmd_witness_serve,
)
from sealog.server.config import Settings
from sealog.server.witness_push import DEFAULT_PUSH_INTERVAL_S

__all__ = ["main"]


def _positive_seconds(text: str) -> float:
    """An argparse type: a duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: want a number of seconds > 0")
    return value


def _positive_int(text: str) -> int:
    """An argparse type: a count, > 0."""
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: want a whole number > 0")
    return int(text)


_EPILOG = """\
Quick start (two terminals):
  sealog serve                    # a log in ./sealog-data, key generated on first run
  sealog append 'deploy svc/payments ok'
  sealog checkpoint
Client commands find the log's public key in --vkey, $SEALOG_VKEY or
./sealog-data/log.vkey, and the server in --target or $SEALOG_TARGET.
A command whose reader goes away (`sealog entries | head`) stops quietly, exit status 141.
"""


_DESCRIPTIONS = {
    "keygen": "The private key file is created with mode 0600; the verifier key (vkey) is "
    "printed and written beside it, to give to clients: --out x.key gives x.vkey, --out "
    "dir/example.com gives dir/example.com.vkey. Nothing is written if either file exists.",
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
    "consistent while the log keeps serving. It is built in DEST.incomplete-*, checked "
    "with fsck, and appears at DEST only once verified. It holds log.vkey and the signed "
    "checkpoint but never the private key: restore by copying the folder and putting "
    "log.key back, or serving it with --key-file (docs/operations.md).",
    "apikey": "The key is printed once; only its SHA-256 goes into the policy file. "
    "Reload the server's policy afterwards.",
    "reload-policy": "Takes effect from the next request: a key removed from the file is "
    "refused from then on. Sending SIGHUP to the server does the same.",
    "entries": "Entries [START, END), each page verified against the latest checkpoint "
    "before it is printed: index, acceptance time (ms), identity, payload, one line each, "
    "tab-separated. Identity and payload are shown escaped (backslash, \\n, \\t, \\xNN for "
    "other controls and bytes that are not UTF-8, \\uNNNN for other unprintable characters); "
    "--json gives them exactly.",
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


def _version() -> str:
    try:
        return importlib.metadata.version("sealog")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: not installed as a package)"


# --- parser --------------------------------------------------------------------
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("keygen", help="create an Ed25519 signing key (file mode 0600)")
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
        "--key-file",
        help="signing key file (default: DATA_DIR/log.key, created with a new log); a new log "
        "under a key file of its own also needs --new-log",
    )
    p.add_argument(
        "--new-log",
        action="store_true",
        help="start a new log with --key-file in a missing or empty DATA_DIR (refused once the "
        "folder holds a log): without it, an empty folder and a key of its own are refused, "
        "since the key may already sign a log whose folder is not mounted",
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
        "--index-flush-entries",
        type=int,
        default=d.index_flush_entries,
        help="appended leaves held in memory (about 250 bytes each) before they are written to "
        "the leaf-hash and idempotency indexes; fewer: less memory, smaller and less efficient "
        "index writes (default %(default)s)",
    )
    p.add_argument(
        "--max-queued-entries",
        type=int,
        default=d.max_queued_entries,
        help="queued entries before RESOURCE_EXHAUSTED (default %(default)s)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        help="TCP connections kept open, before any authentication; more are closed at once. "
        "Lowered to fit the open file limit, which serve raises to its hard limit "
        "(default %(default)s)",
    )
    p.add_argument(
        "--max-entry-streams",
        type=int,
        default=d.max_entry_streams,
        help="GetEntries streams open at once, in all; each holds up to about "
        "--max-page-bytes of memory (default %(default)s)",
    )
    p.add_argument(
        "--max-entry-streams-per-peer",
        type=int,
        default=d.max_entry_streams_per_peer,
        help="GetEntries streams open at once from one client address (default %(default)s)",
    )
    p.add_argument(
        "--clock-tolerance-ms",
        type=float,
        default=d.clock_tolerance_ms,
        help="how far the wall clock may fall behind the last acceptance time before appends "
        "are refused until it catches up (docs/operations.md, 'Clock'; default %(default)s)",
    )
    p.add_argument(
        "--max-page-bytes",
        type=int,
        default=d.max_page_bytes,
        help="a GetEntries page ends at the leaf that brings it to this many bytes "
        "(default %(default)s)",
    )
    p.add_argument(
        "--entry-stream-stall-s",
        type=float,
        default=d.entry_stream_stall_s,
        help="end a GetEntries stream whose reader took no page for this long "
        "(default %(default)s)",
    )
    p.add_argument(
        "--handshake-timeout-s",
        type=float,
        default=d.handshake_timeout_s,
        help="close a connection still in its TLS/HTTP/2 handshake after this long "
        "(default %(default)s)",
    )
    p.add_argument(
        "--idle-connection-timeout-s",
        type=float,
        default=d.idle_connection_timeout_s,
        help="close a connection with no call open for this long (default %(default)s)",
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
        "--push-witness-interval",
        type=_positive_seconds,
        default=DEFAULT_PUSH_INTERVAL_S,
        metavar="SECONDS",
        help="send each --push-witness at most one checkpoint per this long, the latest; "
        "witnesses grant each log a quota of requests a day (default %(default)s: 8,640 a day)",
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
    add_client_options(p)
    p.set_defaults(func=cmd_append)

    p = sub.add_parser("checkpoint", help="print the latest verified checkpoint")
    p.add_argument("--trusted", help="a checkpoint file you trust: also verify consistency with it")
    p.add_argument("--save", help="write the signed checkpoint note to this file")
    add_client_options(p)
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
    add_client_options(p)
    p.set_defaults(func=cmd_prove)

    p = sub.add_parser("consistency", help="prove a newer checkpoint extends an older one")
    p.add_argument("old", help="file with the older signed checkpoint")
    p.add_argument("new", nargs="?", help="file with the newer one (default: the latest)")
    add_client_options(p)
    p.set_defaults(func=cmd_consistency)

    p = sub.add_parser("entries", help="print entries, verified against the latest checkpoint")
    p.add_argument("start", type=int, nargs="?", default=0, help="first index (default 0)")
    p.add_argument("end", type=int, nargs="?", help="one past the last index (default: all)")
    add_client_options(p)
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
    add_client_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("apikey", help="create an API key for an identity of a policy file")
    p.add_argument("--identity", required=True, help="an [[identity]] of the policy")
    p.add_argument("--policy", required=True, help="the policy file to add the key's hash to")
    p.add_argument("--comment", help="a note stored beside the hash (who, why)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_apikey)

    p = sub.add_parser("reload-policy", help="make the log re-read its policy (admin role)")
    add_client_options(p)
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
    add_client_options(p)
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
    add_witness_options(p)
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
    lim = HttpLimits()
    w.add_argument(
        "--header-timeout",
        type=_positive_seconds,
        default=lim.header_timeout_s,
        metavar="SECONDS",
        help="drop a connection whose request line and headers are not in within this long "
        "(default %(default)s)",
    )
    w.add_argument(
        "--body-timeout",
        type=_positive_seconds,
        default=lim.body_timeout_s,
        metavar="SECONDS",
        help="answer 408 and drop a request whose body is not in within this long "
        "(default %(default)s)",
    )
    w.add_argument(
        "--keepalive-timeout",
        type=_positive_seconds,
        default=lim.keepalive_timeout_s,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this long (default %(default)s)",
    )
    w.add_argument(
        "--max-connections",
        type=_positive_int,
        default=lim.max_connections,
        help="open connections; more are answered 503 and closed (default %(default)s)",
    )
    w.add_argument(
        "--max-requests",
        type=_positive_int,
        default=lim.max_requests,
        help="requests handled at once; more are answered 503 with Retry-After "
        "(default %(default)s)",
    )
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
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return status
    except BrokenPipeError:
        return _stdout_closed()
    # Error texts quote what a log or a file said: one escaped line each.
    except SealogError as e:
        print(f"sealog: error: {display.escape(e.diagnostics())}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(
            f"sealog: error: {e.code().name}: {display.escape(e.details() or '')}", file=sys.stderr
        )
        return 1
    except (OSError, ValueError) as e:
        print(f"sealog: error: {display.escape(str(e))}", file=sys.stderr)
        return 1


EXIT_STDOUT_CLOSED = 141
"""The status when the reader of stdout went away (``sealog entries | head``): 128 +
SIGPIPE, what a command killed by SIGPIPE reports, so ``set -o pipefail`` sees it as
usual while the output is known to be cut short."""


def _stdout_closed() -> int:
    """The reader of stdout went away: stop quietly (no error, no traceback).

    stdout is pointed at /dev/null so that the interpreter's final flush of
    what is still buffered does not fail a second time.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass  # stdout is not a file descriptor (an in-process caller's buffer)
    finally:
        os.close(devnull)
    return EXIT_STDOUT_CLOSED


if __name__ == "__main__":
    sys.exit(main())
