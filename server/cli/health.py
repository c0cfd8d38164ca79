"""``sealog health``: ask a running log server whether it serves (grpc.health.v1).

A probe for systemd, Kubernetes exec probes and scripts: the answer is in the exit
status, and the status name on stdout. Health is answered without an identity, so
the probe needs no API key or policy entry; with mutual TLS on the port it asks, it
needs a client certificate only to finish the handshake.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealog.client import display
from sealog.server.cli.options import (
    Commands,
    add_command,
    add_target_option,
    add_tls_client_options,
    credentials_from_args,
    positive_seconds,
    target_from_args,
)

__all__ = [
    "EXIT_NOT_SERVING",
    "EXIT_NO_ANSWER",
    "EXIT_SERVING",
    "add_health",
    "cmd_health",
]

EXIT_SERVING = 0
"""The server (or the service asked about) answered SERVING."""
EXIT_NOT_SERVING = 1
"""It answered, and not SERVING: NOT_SERVING (starting up, stopping, or appends refused
while the clock is behind) or SERVICE_UNKNOWN (no such service)."""
EXIT_NO_ANSWER = 2
"""No answer within the timeout: unreachable, refused, a TLS failure, no health service;
also a usage error (argparse's own status 2) or an unreadable TLS file."""

_DESCRIPTION = """\
Check that a log server is serving: one grpc.health.v1.Health/Check call, which
needs no API key. NOT_SERVING means the server is starting up or stopping; for
sealog.v1.LogService it also means appends are refused while the clock is behind
(docs/operations.md, "Health checks").
"""

_EPILOG = f"""\
Exit status:
  {EXIT_SERVING}  SERVING (printed on stdout)
  {EXIT_NOT_SERVING}  the server answered NOT_SERVING or SERVICE_UNKNOWN (printed on stdout)
  {EXIT_NO_ANSWER}  no answer: cannot connect, TLS failed, timeout, or bad options
     (the gRPC status and why, on stderr)
-q prints nothing; the exit status alone answers.

Examples:
  sealog health                                   # the whole server, 127.0.0.1:6962
  sealog health --service sealog.v1.LogService    # can it append?
  sealog health --target log.example.com:6962 --tls-ca ca.pem -q
"""

_LOG_SERVICE = "sealog.v1.LogService"


def add_health(commands: Commands) -> None:
    p = add_command(
        commands,
        "health",
        "check that a log server is serving (gRPC health)",
        description=_DESCRIPTION,
    )
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_target_option(p)
    p.add_argument(
        "--service",
        default="",
        help=f'the service to ask about: "" (default) the whole server, {_LOG_SERVICE} '
        "whether it can append",
    )
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=5.0,
        metavar="SECONDS",
        help="give up after this long, connecting included (default %(default)s)",
    )
    add_tls_client_options(p)
    p.add_argument(
        "--tls-server-name",
        metavar="NAME",
        help="the name the server's certificate must carry, when it is not the --target "
        "host (say, probing 127.0.0.1 for a certificate issued to log.example.com)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(func=cmd_health)


def _channel(args: argparse.Namespace, target: str) -> grpc.Channel:
    credentials = credentials_from_args(args)
    if credentials is None:
        if args.tls_server_name:
            raise ValueError("--tls-server-name needs TLS: give --tls-ca")
        return grpc.insecure_channel(target)
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(target, credentials, options=options)


def cmd_health(args: argparse.Namespace) -> int:
    target = target_from_args(args)

    def fail(message: str) -> int:
        if not args.quiet:
            print(f"sealog: error: {display.escape(message)}", file=sys.stderr)
        return EXIT_NO_ANSWER

    try:
        channel = _channel(args, target)
    except (OSError, ValueError) as e:
        return fail(str(e))
    with channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                return fail(f"no health answer from {target}: {e.code().name}: {e.details() or ''}")
            status = "SERVICE_UNKNOWN"  # what Check says for a service it does not know
        else:
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    if not args.quiet:
        print(status)
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING
