"""``sealog serve``: run a log server.

Its flags are the log's data folder, key and origin, every limit of
:class:`~sealog.server.config.Settings` that an operator tunes, the witnesses whose
cosignatures it keeps (c2sp.org/tlog-witness), its access policy and its TLS.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path

from sealog.client._encoding import encode_base64
from sealog.client.checkpoint import open_checkpoint
from sealog.client.errors import SealogError
from sealog.server.access_log import AccessLog
from sealog.server.app import LogServer, TlsFiles
from sealog.server.cli import serve_config
from sealog.server.cli.options import (
    DEFAULT_DATA_DIR,
    DEFAULT_TARGET,
    Commands,
    add_command,
    add_log_format_option,
    add_witness_vkey_option,
    log_to_stderr,
    positive_seconds,
    witness_keys,
)
from sealog.server.config import Settings
from sealog.server.tls import is_loopback
from sealog.server.witness_push import DEFAULT_PUSH_INTERVAL_S

__all__ = ["add_serve", "cmd_serve"]

log = logging.getLogger("sealog.serve")

_SETTINGS_FLAGS: tuple[tuple[str, str], ...] = (
    ("max_entry_bytes", "largest payload (default %(default)s)"),
    ("max_request_entries", "most entries per Append (default %(default)s)"),
    ("batch_max_entries", "most entries per durable commit (default %(default)s)"),
    ("batch_max_wait_ms", "wait for more appends before a commit (default %(default)s)"),
    (
        "index_flush_entries",
        "appended leaves held in memory (about 250 bytes each) before they are written to "
        "the leaf-hash and idempotency indexes; fewer: less memory, smaller and less "
        "efficient index writes (default %(default)s)",
    ),
    ("max_queued_entries", "queued entries before RESOURCE_EXHAUSTED (default %(default)s)"),
    (
        "max_connections",
        "TCP connections kept open, before any authentication; more are closed at once. "
        "Lowered to fit the open file limit, which serve raises to its hard limit "
        "(default %(default)s)",
    ),
    (
        "max_entry_streams",
        "GetEntries streams open at once, in all; each holds up to about "
        "--max-page-bytes of memory (default %(default)s)",
    ),
    (
        "max_entry_streams_per_peer",
        "GetEntries streams open at once from one client address (default %(default)s)",
    ),
    (
        "clock_tolerance_ms",
        "how far the wall clock may fall behind the last acceptance time before appends "
        "are refused until it catches up (docs/operations.md, 'Clock'; default %(default)s)",
    ),
    (
        "max_page_bytes",
        "a GetEntries page ends at the leaf that brings it to this many bytes "
        "(default %(default)s)",
    ),
    (
        "entry_stream_stall_s",
        "end a GetEntries stream whose reader took no page for this long (default %(default)s)",
    ),
    (
        "handshake_timeout_s",
        "close a connection still in its TLS/HTTP/2 handshake after this long "
        "(default %(default)s)",
    ),
    (
        "idle_connection_timeout_s",
        "close a connection with no call open for this long (default %(default)s)",
    ),
    (
        "tiles_cache_bytes",
        "memory for the full hash tiles --tiles-listen served last, answered again without "
        "a storage read (default %(default)s)",
    ),
    (
        "tiles_max_connections",
        "TCP connections --tiles-listen keeps open; more are answered 503 (default %(default)s)",
    ),
)
"""The :class:`Settings` fields serve takes as flags (``--max-entry-bytes`` for
``max_entry_bytes``, of the field's type and default), in the order --help lists them."""


def add_serve(commands: Commands) -> None:
    p = add_command(
        commands,
        "serve",
        "run a log server",
        description="Run a log. With no options: data in ./sealog-data, a signing key "
        "generated there on first run, listening on loopback. SIGTERM/Ctrl-C commits "
        "queued appends before exiting; a second signal forces.",
    )
    serve_config.add_config_options(p)
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
    defaults = Settings()
    for name, help in _SETTINGS_FLAGS:
        default = getattr(defaults, name)
        p.add_argument(
            "--" + name.replace("_", "-"), type=type(default), default=default, help=help
        )
    add_witness_vkey_option(
        p,
        "a witness whose cosignatures AddCosignature accepts: its verifier key, or @FILE "
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
        type=positive_seconds,
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
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics over plain HTTP at http://HOST:PORT/metrics "
        "(docs/operations.md, 'Metrics'; default: off). They name no identity or payload; "
        "keep the address private all the same",
    )
    p.add_argument(
        "--tiles-listen",
        metavar="HOST:PORT",
        help="also serve the log as C2SP tlog-tiles over HTTP here (checkpoint, hash tiles, "
        "entry bundles; docs/tiles.md; default: off). HTTPS with --tls-cert; hash tiles and "
        "the checkpoint are public, entry bundles need the read role (API key or, with "
        "--tls-client-ca, a client certificate)",
    )
    p.add_argument(
        "--tiles-prefix",
        default="",
        metavar="PATH",
        help="URL path the tiles are served below, e.g. /mylog/ for "
        "http://HOST:PORT/mylog/checkpoint (default: the root)",
    )
    add_log_format_option(p)
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="write no access line per RPC (method, peer, identity, status, duration, sizes) "
        "to the log",
    )
    p.add_argument(
        "--no-reflection",
        dest="reflection",
        action="store_false",
        help="do not serve gRPC server reflection (on by default, on every port, to anyone "
        "who can connect: it lists the services and their .proto schema, which ship with "
        "sealog, and nothing of the log)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    config = serve_config.resolve(args)  # flags > SEALOG_* > --config FILE > defaults
    if args.print_config:
        print(config.toml(), end="")
        return 0
    args = config.args
    handler = log_to_stderr(args)
    settings = Settings(**{name: getattr(args, name) for name, _ in _SETTINGS_FLAGS})
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
        reflection=args.reflection,
        metrics_address=args.metrics_listen,
        access_log=AccessLog(handler, args.log_format) if args.access_log else None,
        tiles_address=args.tiles_listen,
        tiles_prefix=args.tiles_prefix,
    )
    address, mtls_address, metrics_address = _bound_addresses(args, server)
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
        f"  address:      {address} ({transport})\n"
        f"  access:       {access}\n"
        + (f"  mutual TLS:   {mtls_address}\n" if mtls_address else "")
        + f"  verifier key: {vkey}\n"
        f"  checkpoint:   size {cp.size}, root {encode_base64(cp.root_hash)}\n"
        + "".join(f"  witness:      {w.vkey}\n" for w in witnesses)
        + "".join(f"  pushing to:   {url}\n" for url in args.push_witness or ())
        + (f"  metrics:      http://{metrics_address}/metrics\n" if metrics_address else "")
        + (f"  tiles:        {_tiles_url(args, server)}\n" if server.tiles is not None else "")
        + "Stop with Ctrl-C (queued appends are committed first).",
        flush=True,
    )

    def on_hangup(signum: int, frame: object) -> None:
        try:
            reloaded = server.auth.reload()
        except SealogError as e:
            print(f"sealog: policy NOT reloaded, the old one stays in force: {e}", flush=True)
            log.warning("policy NOT reloaded, the old one stays in force: %s", e)
        else:
            if reloaded is not None:
                print(
                    f"sealog: policy reloaded ({len(reloaded.identities)} identities)", flush=True
                )
                log.info(
                    "policy reloaded", extra={"fields": {"identities": len(reloaded.identities)}}
                )

    signal.signal(signal.SIGHUP, on_hangup)
    _log_start(
        args, server, settings, (address, mtls_address, metrics_address), transport, access, cp.size
    )
    stop.wait()
    print("sealog: shutting down", flush=True)
    log.info(
        "shutting down: committing queued appends",
        extra={"fields": {"queued_entries": server.log.queued_entries()}},
    )
    server.stop()
    size = open_checkpoint(server.log.latest_checkpoint(), server.signer.verifier()).checkpoint.size
    log.info("stopped", extra={"fields": {"tree_size": size}})
    return 0


def _tiles_url(args: argparse.Namespace, server: LogServer) -> str:
    """The URL prefix of the tlog-tiles listener, with the port bound."""
    assert server.tiles is not None and server.tile_service is not None
    host = args.tiles_listen.rsplit(":", 1)[0]
    scheme = "https" if args.tls_cert else "http"
    return f"{scheme}://{host}:{server.tiles.port}{server.tile_service.prefix}"


def _bound_addresses(
    args: argparse.Namespace, server: LogServer
) -> tuple[str, str | None, str | None]:
    """``HOST:PORT`` with the port bound, of the main port, the mutual TLS port and the
    metrics listener (None for those not served)."""

    def bound(address: str, port: int) -> str:
        return f"{address.rsplit(':', 1)[0]}:{port}"

    listener = server.metrics_listener
    return (
        bound(args.listen, server.port),
        bound(args.mtls_listen, server.mtls_port) if server.mtls_port is not None else None,
        bound(args.metrics_listen, listener.port) if listener is not None else None,
    )


def _log_start(
    args: argparse.Namespace,
    server: LogServer,
    settings: Settings,
    addresses: tuple[str, str | None, str | None],
    transport: str,
    access: str,
    size: int,
) -> None:
    """Two lines in the log: what was opened, and every setting in force."""
    address, mtls_address, metrics_address = addresses
    log.info(
        "serving",
        extra={
            "fields": {
                "origin": args.origin_name,
                "data_dir": str(Path(args.data_dir).resolve()),
                "address": address,
                "transport": transport,
                "mtls_address": mtls_address,
                "access": access,
                "verifier_key": server.signer.verifier().vkey,
                "tree_size": size,
                "witnesses": len(server.log.witnesses),
                "push_witnesses": len(args.push_witness or ()),
                "metrics": metrics_address,
                "tiles": _tiles_url(args, server) if server.tiles is not None else None,
                "access_log": bool(args.access_log),
                "log_format": args.log_format,
            }
        },
    )
    log.info("settings", extra={"fields": dataclasses.asdict(settings)})
