"""``sealog witness serve``: a witness (c2sp.org/tlog-witness) that cosigns logs'
checkpoints (c2sp.org/tlog-cosignature) over HTTP."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import threading
from pathlib import Path

from sealog.client.cosignature import Cosigner
from sealog.client.errors import SealogError
from sealog.client.http_serve import HttpLimits
from sealog.client.keyfile import read_key_file
from sealog.client.note import Ed25519Verifier
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import Witness
from sealog.server.cli.options import (
    Commands,
    add_command,
    add_log_format_option,
    log_to_stderr,
    positive_int,
    positive_seconds,
)

__all__ = ["add_witness", "cmd_witness_serve"]

log = logging.getLogger("sealog.witness")


def add_witness(commands: Commands) -> None:
    p = add_command(
        commands,
        "witness",
        "run a C2SP witness that cosigns logs' checkpoints",
        "A witness per c2sp.org/tlog-witness: `sealog witness serve` answers "
        "POST /add-checkpoint for the logs it is given, cosigning (tlog-cosignature/v1) only "
        "checkpoints consistent with the last one it cosigned for that log.",
    )
    witness_commands = p.add_subparsers(dest="witness_command", required=True, metavar="COMMAND")
    _add_witness_serve(witness_commands)


def _add_witness_serve(commands: Commands) -> None:
    w = add_command(
        commands,
        "serve",
        "serve POST /add-checkpoint (c2sp.org/tlog-witness) over HTTP",
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
        type=positive_seconds,
        default=lim.header_timeout_s,
        metavar="SECONDS",
        help="drop a connection whose request line and headers are not in within this long "
        "(default %(default)s)",
    )
    w.add_argument(
        "--body-timeout",
        type=positive_seconds,
        default=lim.body_timeout_s,
        metavar="SECONDS",
        help="answer 408 and drop a request whose body is not in within this long "
        "(default %(default)s)",
    )
    w.add_argument(
        "--keepalive-timeout",
        type=positive_seconds,
        default=lim.keepalive_timeout_s,
        metavar="SECONDS",
        help="close an idle keep-alive connection after this long (default %(default)s)",
    )
    w.add_argument(
        "--max-connections",
        type=positive_int,
        default=lim.max_connections,
        help="open connections; more are answered 503 and closed (default %(default)s)",
    )
    w.add_argument(
        "--max-requests",
        type=positive_int,
        default=lim.max_requests,
        help="requests handled at once; more are answered 503 with Retry-After "
        "(default %(default)s)",
    )
    add_log_format_option(w)
    w.set_defaults(func=cmd_witness_serve)


def cmd_witness_serve(args: argparse.Namespace) -> int:
    log_to_stderr(args)
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
    log.info(
        "serving",
        extra={
            "fields": {
                "witness": cosigner.name,
                "url": server.url,
                "witness_key": cosigner.verifier().vkey,
                "logs": sorted(logs),
                "state_dir": str(Path(args.state_dir).resolve()),
                **dataclasses.asdict(limits),
            }
        },
    )
    stop.wait()
    log.info("shutting down")
    server.stop()
    witness.close()
    log.info("stopped")
    return 0
