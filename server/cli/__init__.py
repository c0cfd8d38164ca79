"""The ``sealog`` command: run a log, and talk to one as a service, monitor or auditor would.

This package's top holds the program (its global flags, epilog and exit statuses) and
the list of its commands; each command's arguments, help and body sit together in the
module of the party that runs it: :mod:`.operator`, :mod:`.serve` and :mod:`.health`
(the log's operator), :mod:`.service` (services and readers), :mod:`.monitor` (monitors and
auditors) and :mod:`.witness`. :mod:`.options` and :mod:`.output` hold what several
commands share.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

import grpc

from sealog.client import display
from sealog.client.errors import SealogError
from sealog.server.cli import health, monitor, operator, serve, service, witness
from sealog.server.cli.options import CommandParser, Commands

__all__ = ["EXIT_STDOUT_CLOSED", "build_parser", "main"]

_COMMANDS: tuple[Callable[[Commands], None], ...] = (
    operator.add_keygen,
    serve.add_serve,
    service.add_append,
    service.add_checkpoint,
    service.add_prove,
    service.add_consistency,
    service.add_entries,
    operator.add_fsck,
    operator.add_backup,
    service.add_search,
    operator.add_apikey,
    operator.add_reload_policy,
    health.add_health,
    monitor.add_monitor,
    monitor.add_check_evidence,
    monitor.add_audit,
    monitor.add_verify,
    witness.add_witness,
)
"""Every command, in the order ``sealog --help`` lists them: first what the quick start
uses, then checks and copies of the data folder, access, the running server's health
(an operator's probe, beside reload-policy, the other call an operator makes to it),
monitoring and witnessing."""

_EPILOG = """\
Quick start (two terminals):
  sealog serve                    # a log in ./sealog-data, key generated on first run
  sealog append 'deploy svc/payments ok'
  sealog checkpoint
Client commands find the log's public key in --vkey, $SEALOG_VKEY or
./sealog-data/log.vkey, and the server in --target or $SEALOG_TARGET.
A command whose reader goes away (`sealog entries | head`) stops quietly, exit status 141.
"""


def _version() -> str:
    try:
        return importlib.metadata.version("sealog")
    except importlib.metadata.PackageNotFoundError:
        return "(version unknown: not installed as a package)"


def build_parser() -> argparse.ArgumentParser:
    """The ``sealog`` parser: global flags and every command of :data:`_COMMANDS`."""
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
    # Each command's parser keeps the arguments it parsed (serve tells given options apart).
    commands = cast(
        Commands,
        parser.add_subparsers(
            dest="command", required=True, metavar="COMMAND", parser_class=CommandParser
        ),
    )
    for add in _COMMANDS:
        add(commands)
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
