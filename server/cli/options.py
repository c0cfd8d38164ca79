"""What several ``sealog`` commands share: defaults, value types, and the options that
name a log, its key and its witnesses, with the code that turns them into objects.

Each ``add_*`` function declares a group of flags once; the function beside it reads
them back from the parsed arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeAlias

import grpc

from sealog.client.cosignature import CosignatureVerifier
from sealog.client.errors import SealogError
from sealog.client.keyfile import read_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Verifier
from sealog.client.tls import channel_credentials
from sealog.client.witness_policy import WitnessPolicy
from sealog.server.app import VKEY_FILE
from sealog.server.log_format import FORMATS, LogFormat, configure_logging

__all__ = [
    "COMMAND_LINE",
    "DEFAULT_DATA_DIR",
    "DEFAULT_TARGET",
    "ORIGIN_HELP",
    "TRUSTED_VKEY_HELP",
    "VKEY_FALLBACK",
    "VKEY_HELP",
    "CommandLine",
    "CommandParser",
    "Commands",
    "add_client_options",
    "add_command",
    "add_log_format_option",
    "add_origin_option",
    "add_target_option",
    "add_tls_client_options",
    "add_vkey_option",
    "add_witness_options",
    "add_witness_vkey_option",
    "client_from_args",
    "credentials_from_args",
    "log_to_stderr",
    "positive_int",
    "positive_seconds",
    "target_from_args",
    "verifier_from_args",
    "witness_keys",
    "witness_policy_from_args",
]

DEFAULT_TARGET = "127.0.0.1:6962"
"""Where ``sealog serve`` listens and client commands connect, unless told otherwise."""
DEFAULT_DATA_DIR = "sealog-data"
"""The data folder ``sealog serve`` uses, and where client commands look for log.vkey."""

VKEY_FALLBACK = f"$SEALOG_VKEY or ./{DEFAULT_DATA_DIR}/{VKEY_FILE}"
"""Where :func:`verifier_from_args` looks for the key when --vkey is not given."""
VKEY_HELP = f"the log's verifier key, or @FILE holding it (default {VKEY_FALLBACK})"
"""--vkey of the commands that talk to a log."""
TRUSTED_VKEY_HELP = (
    f"the log's verifier key, or @FILE, from a source you trust (default {VKEY_FALLBACK})"
)
"""--vkey of the offline checks whose verdict rests on the key (fsck, check-evidence)."""
ORIGIN_HELP = "the log's origin, if not the key's name"

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""What ``add_subparsers`` returns: the place each command's parser is added to."""


# --- commands and value types -----------------------------------------------------
COMMAND_LINE = "command_line"
"""The attribute of a parsed command's arguments that holds its :class:`CommandLine`."""


@dataclass(frozen=True)
class CommandLine:
    """The arguments one command's parser was given, and that parser."""

    parser: argparse.ArgumentParser
    args: tuple[str, ...]

    def given(self) -> frozenset[str]:
        """The ``dest`` of every option the command line gave, whatever its value: an
        option given with its default value is given, one left out is not.

        The arguments are parsed again into a namespace where every option's value is
        None, so that no default is filled in: an option the command line gave has
        a value afterwards (a store action's converted value, a flag's constant, an
        append action's list).
        """
        dests = {a.dest for a in self.parser._actions if a.dest != argparse.SUPPRESS}
        blank = argparse.Namespace(**dict.fromkeys(dests))
        self.parser.parse_known_args(self.args, blank)
        return frozenset(d for d in dests if getattr(blank, d) is not None)


class CommandParser(argparse.ArgumentParser):
    """The parser of one command: it also keeps the arguments it parsed, as a
    :class:`CommandLine` under :data:`COMMAND_LINE`, so that the command can tell an
    option given on the command line from one left at its default."""

    def parse_known_args(
        self, args: Iterable[str] | None = None, namespace: Any = None
    ) -> tuple[Any, list[str]]:
        given = tuple(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(given, namespace)
        setattr(parsed, COMMAND_LINE, CommandLine(self, given))
        return parsed, extras


def add_command(
    commands: Commands,
    name: str,
    summary: str,
    details: str = "",
    *,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the command ``name`` and return its parser.

    ``summary`` is its line in ``sealog --help``; its own ``--help`` opens with the
    summary as a sentence followed by ``details``, unless ``description`` replaces both.
    """
    if description is None:
        description = f"{summary[0].upper()}{summary[1:]}. {details}".strip()
    return commands.add_parser(name, help=summary, description=description)


def positive_seconds(text: str) -> float:
    """An argparse type: a duration in seconds, > 0."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: want a number of seconds > 0")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a count, > 0."""
    if not (text.isascii() and text.isdigit()) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: want a whole number > 0")
    return int(text)


# --- the log's key ----------------------------------------------------------------
def add_log_format_option(p: argparse.ArgumentParser) -> None:
    """``--log-format`` of the commands that run a server."""
    p.add_argument(
        "--log-format",
        choices=FORMATS,
        default="text",
        help="log lines on stderr as text for people or json for log collectors, one "
        "record per line (docs/operations.md, 'Logs'; default %(default)s)",
    )


def log_to_stderr(args: argparse.Namespace) -> logging.StreamHandler[TextIO]:
    """Set up the log as a server logs: ``--log-format``, INFO and up (DEBUG with -v)."""
    log_format: LogFormat = args.log_format
    level = logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    return configure_logging(log_format, level)


def add_vkey_option(p: argparse.ArgumentParser, help: str = VKEY_HELP) -> None:
    """--vkey: the log's Ed25519 verifier key (C2SP signed-note), read by
    :func:`verifier_from_args`."""
    p.add_argument("--vkey", help=help)


def add_origin_option(p: argparse.ArgumentParser, help: str = ORIGIN_HELP) -> None:
    """--origin: the log's origin line (c2sp.org/tlog-checkpoint), when not the key's name."""
    p.add_argument("--origin", help=help)


def verifier_from_args(args: argparse.Namespace) -> Ed25519Verifier:
    """The log's verifier: --vkey, else $SEALOG_VKEY, else ./sealog-data/log.vkey.

    A value starting with ``@`` names a file holding the key.
    """
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


# --- witnesses ----------------------------------------------------------------------
def add_witness_vkey_option(p: argparse.ArgumentParser, help: str) -> None:
    """--witness-vkey (repeatable): witness keys, read by :func:`witness_keys`."""
    p.add_argument("--witness-vkey", action="append", metavar="VKEY", help=help)


def add_witness_options(p: argparse.ArgumentParser) -> None:
    """The witness policy a checkpoint must satisfy, read by
    :func:`witness_policy_from_args`."""
    add_witness_vkey_option(
        p,
        "a witness's cosignature verifier key, or @FILE with one per line (repeatable): "
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


def witness_keys(values: Sequence[str] | None) -> list[CosignatureVerifier]:
    """Witness verifier keys (c2sp.org/tlog-cosignature): each value a key, or @FILE with
    one key per line."""
    keys = []
    for value in values or ():
        if value.startswith("@"):
            lines = Path(value[1:]).read_text(encoding="ascii").split()
            keys += [CosignatureVerifier.from_vkey(line) for line in lines]
        else:
            keys.append(CosignatureVerifier.from_vkey(value))
    return keys


def witness_policy_from_args(args: argparse.Namespace) -> WitnessPolicy | None:
    """The policy of :func:`add_witness_options`, or None when no witness was given."""
    keys = witness_keys(getattr(args, "witness_vkey", None))
    if not keys:
        if getattr(args, "witness_threshold", None) is not None:
            raise SealogError("--witness-threshold needs --witness-vkey")
        return None
    return WitnessPolicy.from_vkeys(keys, args.witness_threshold, args.witness_max_age)


# --- a connection to a log ----------------------------------------------------------
def add_target_option(p: argparse.ArgumentParser) -> None:
    """--target: the log server's address, read by :func:`target_from_args`."""
    p.add_argument(
        "--target", help=f"log server address (default $SEALOG_TARGET or {DEFAULT_TARGET})"
    )


def target_from_args(args: argparse.Namespace) -> str:
    """--target, else $SEALOG_TARGET, else :data:`DEFAULT_TARGET`."""
    return str(args.target or os.environ.get("SEALOG_TARGET") or DEFAULT_TARGET)


def add_tls_client_options(p: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert, --tls-key: how to connect with TLS, read by
    :func:`credentials_from_args`."""
    p.add_argument("--tls-ca", help="connect with TLS, trusting this CA file (PEM)")
    p.add_argument("--tls-cert", help="client certificate for mutual TLS (PEM)")
    p.add_argument("--tls-key", help="client certificate's private key (PEM)")


def credentials_from_args(args: argparse.Namespace) -> grpc.ChannelCredentials | None:
    """TLS credentials of :func:`add_tls_client_options`, or None for plaintext."""
    if args.tls_ca or args.tls_cert:
        return channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
    return None


def add_client_options(p: argparse.ArgumentParser) -> None:
    """Where the log is, how to trust and reach it, and --json: every command that talks
    to a log takes these, read by :func:`client_from_args`."""
    add_target_option(p)
    add_vkey_option(p)
    add_origin_option(p)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per line)")
    p.add_argument(
        "--api-key", help="present this API key (default $SEALOG_API_KEY); see `sealog apikey`"
    )
    add_tls_client_options(p)
    add_witness_options(p)


def client_from_args(args: argparse.Namespace) -> LogClient:
    """A verifying client of the log :func:`add_client_options` describes.

    The target falls back to $SEALOG_TARGET, then :data:`DEFAULT_TARGET`; the API key
    to $SEALOG_API_KEY.
    """
    policy = witness_policy_from_args(args)
    return LogClient(
        target_from_args(args),
        verifier_from_args(args),
        origin=args.origin,
        timeout=args.timeout,
        witnesses=policy if policy is not None else (),
        credentials=credentials_from_args(args),
        api_key=args.api_key or os.environ.get("SEALOG_API_KEY") or None,
    )
