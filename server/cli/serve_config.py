"""Where ``sealog serve``'s settings come from: its command line, ``SEALOG_*``
environment variables, a TOML file (``--config``) and the defaults, in that order.

The settings are serve's own options, read off its parser: the option
``--max-entry-bytes`` is the key ``max_entry_bytes`` in the file and the variable
``SEALOG_MAX_ENTRY_BYTES`` in the environment, and its value goes through the
option's own converter wherever it comes from. An option added to serve is a key
and a variable without a change here. docs/operations.md, "Configuration", is the
operator's side of this.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from sealog.client.errors import SealogError
from sealog.server.cli.options import COMMAND_LINE, CommandLine

__all__ = [
    "CLIENT_VARIABLES",
    "ENV_PREFIX",
    "ConfigError",
    "EffectiveConfig",
    "EffectiveSetting",
    "ServeOption",
    "add_config_options",
    "read_config_file",
    "read_environment",
    "resolve",
    "serve_options",
]

_log = logging.getLogger(__name__)

ENV_PREFIX = "SEALOG_"
"""A serve setting's variable is this and its key in capitals."""

CLIENT_VARIABLES = frozenset(
    {
        "SEALOG_VKEY",  # client commands: the log's verifier key
        "SEALOG_TARGET",  # client commands: the server's address
        "SEALOG_API_KEY",  # client commands: the API key they present
        "SEALOG_EVIDENCE",  # set for a monitor's alert command
        "SEALOG_EVIDENCE_KIND",
        "SEALOG_LOG",
        "SEALOG_HYPOTHESIS_PROFILE",  # the test suite
    }
)
"""``SEALOG_*`` variables that other commands read or set. They are no serve settings,
and serve says nothing about them: one environment serves every command."""

_NOT_SETTINGS = frozenset({"config", "print_config"})
"""The keys of the options that say where the settings come from, not what they are."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

Kind = Literal["bool", "int", "float", "list", "str"]
"""What a key takes in the file: a boolean, an integer, a number, a list of strings, or
a string."""

_WANT: dict[Kind, str] = {
    "bool": "a boolean (true or false)",
    "int": "an integer",
    "float": "a number",
    "list": "a list of strings",
    "str": "a string",
}


class ConfigError(SealogError):
    """A configuration file or variable serve cannot use: names the file or variable,
    the key and what it wants."""


@dataclass(frozen=True)
class ServeOption:
    """One of serve's options, as the file and the environment name it."""

    key: str
    """The long option without ``--``, ``-`` turned into ``_``: ``max_entry_bytes``."""
    action: argparse.Action
    kind: Kind

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def dest(self) -> str:
        return self.action.dest

    def convert(self, text: str) -> object:
        """``text`` as the command line would take it: through the option's converter,
        then checked against its choices. Raises ValueError with the reason."""
        convert: Callable[[str], object] = self.action.type if callable(self.action.type) else str
        try:
            value = convert(text)
        except argparse.ArgumentTypeError as e:
            raise ValueError(str(e)) from None
        except (TypeError, ValueError):
            name = getattr(convert, "__name__", repr(convert))
            raise ValueError(f"invalid {name} value: {text!r}") from None
        choices = self.action.choices
        if choices is not None and value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{value!r}: want one of {shown}")
        return value

    def flag_value(self, on: bool) -> object:
        """What the namespace holds for a boolean option set to ``on``."""
        if isinstance(self.action, argparse.BooleanOptionalAction):
            return on
        return self.action.const if on else self.action.default

    def is_on(self, value: object) -> bool:
        """Whether a boolean option's namespace value means the flag is given."""
        if isinstance(self.action, argparse.BooleanOptionalAction):
            return bool(value)
        return bool(value == self.action.const)


def _kind(action: argparse.Action, flag: str) -> Kind:
    """What the option takes: a flag (no argument) is a boolean, a repeatable option a
    list, and an option with one argument what its converter returns (int, float),
    else a string. Raises TypeError for an action with no such form (a count, nargs=2):
    a new serve option must be one of these to be a setting."""
    if action.nargs == 0:
        if isinstance(action, argparse.BooleanOptionalAction) or action.const is not None:
            return "bool"
    elif isinstance(action, argparse._AppendAction) and action.nargs is None:
        return "list"
    elif action.nargs is None:
        if action.type is int:
            return "int"
        if action.type is float:
            return "float"
        if callable(action.type):
            try:
                returns = typing.get_type_hints(action.type).get("return")
            except TypeError:  # a callable object without annotations
                returns = None
            if returns is int:
                return "int"
            if returns is float:
                return "float"
        return "str"
    raise TypeError(f"sealog serve {flag}: a {type(action).__name__} has no configuration form")


def serve_options(parser: argparse.ArgumentParser) -> tuple[ServeOption, ...]:
    """Every option of serve's ``parser`` that is a setting, in the order ``--help``
    lists them: all but ``-h``, ``--config`` and ``--print-config``.

    Positional arguments (serve has none) are no settings: a command line gives
    them every time.
    """
    options = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.dest == argparse.SUPPRESS:
            continue
        long = next((s for s in action.option_strings if s.startswith("--")), None)
        if long is None:
            continue
        key = long[2:].replace("-", "_")
        if key in _NOT_SETTINGS:
            continue
        options.append(ServeOption(key, action, _kind(action, long)))
    return tuple(options)


def add_config_options(p: argparse.ArgumentParser) -> None:
    """``--config`` and ``--print-config``, read by :func:`resolve`."""
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from this TOML file, one key per option (max_entry_bytes = "
        "1024 for --max-entry-bytes). A flag on the command line wins over its "
        "SEALOG_* environment variable (SEALOG_MAX_ENTRY_BYTES), which wins over the "
        "file, which wins over the default; see docs/operations.md, 'Configuration'",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the settings serve would run with, as a TOML file --config takes "
        "(each key's source in a comment), and exit without opening the data folder",
    )


# --- reading the sources -----------------------------------------------------------------
def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "an array" + ("" if all(isinstance(v, str) for v in value) else " of non-strings")
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _from_toml(option: ServeOption, value: object) -> object:
    """A TOML value of the option's kind, converted as on the command line. Raises
    ValueError with the reason."""
    if isinstance(value, dict):
        raise ValueError(
            f"{_describe(value)}, want {_WANT[option.kind]} (the file is flat: "
            "key = value lines, no [sections] or inline tables)"
        )
    kind = option.kind
    if kind == "bool":
        if isinstance(value, bool):
            return option.flag_value(value)
    elif kind == "list":
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [option.convert(v) for v in value]
    elif kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return option.convert(str(value))
    elif kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return option.convert(str(value))
    elif isinstance(value, str):
        return option.convert(value)
    raise ValueError(f"{_describe(value)}, want {_WANT[kind]}")


def read_config_file(path: str, options: Iterable[ServeOption]) -> dict[str, object]:
    """The settings in the TOML file at ``path``: each option's ``dest`` and its value,
    converted as on the command line.

    Raises :class:`ConfigError`, naming the file, when it cannot be read or parsed,
    holds a table (the file is flat), a key that is no serve option (with the closest
    one), or a value of the wrong type or that the option's converter refuses.
    """
    by_key = {o.key: o for o in options}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the configuration file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not a valid TOML file: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a valid TOML file: not UTF-8 ({e.reason})") from None
    values: dict[str, object] = {}
    for key, value in data.items():
        option = by_key.get(key)
        if option is None:
            if isinstance(value, dict):
                raise ConfigError(
                    f"{path}: table [{key}] is not allowed: the file is flat, key = value "
                    "lines with no [sections]"
                )
            raise ConfigError(f"{path}: unknown key {key!r}{_suggest(key, by_key)}")
        try:
            values[option.dest] = _from_toml(option, value)
        except ValueError as e:
            raise ConfigError(f"{path}: key {key!r}: {e}") from None
    return values


def _from_text(option: ServeOption, text: str) -> object:
    """A variable's text for the option, as the command line takes it."""
    if option.kind == "bool":
        word = text.strip().lower()
        if word in _TRUE | _FALSE:
            return option.flag_value(word in _TRUE)
        raise ValueError(f"{text!r}: want one of 1, 0, true, false, yes, no, on, off")
    if option.kind == "list":
        items = [item.strip() for item in text.split(",")]
        return [option.convert(item) for item in items if item]
    return option.convert(text)


def read_environment(
    environ: Mapping[str, str], options: Iterable[ServeOption]
) -> dict[str, tuple[str, object]]:
    """The settings in ``SEALOG_*`` variables: each option's ``dest``, with the
    variable and its value, converted as on the command line (a list option's items
    separated by commas).

    Raises :class:`ConfigError` naming the variable whose value the option refuses.
    Every other ``SEALOG_*`` variable, except :data:`CLIENT_VARIABLES`, gets a warning
    naming it (never its value): a misspelt setting must not pass unnoticed.
    """
    by_variable = {o.variable: o for o in options}
    values: dict[str, tuple[str, object]] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        option = by_variable.get(name)
        if option is None:
            if name not in CLIENT_VARIABLES:
                _warn_unknown(name, by_variable.values())
            continue
        try:
            values[option.dest] = (name, _from_text(option, environ[name]))
        except ValueError as e:
            raise ConfigError(f"${name}: {e}") from None
    return values


def _warn_unknown(name: str, options: Iterable[ServeOption]) -> None:
    key = name[len(ENV_PREFIX) :].lower()
    close = difflib.get_close_matches(key, [o.key for o in options], n=1)
    if key in _NOT_SETTINGS:
        hint = f"; pass --{key.replace('_', '-')} instead"
    elif close:
        hint = f" (did you mean {ENV_PREFIX + close[0].upper()}?)"
    else:
        hint = ""
    _log.warning("$%s is not a sealog serve setting, ignored%s", name, hint)


# --- the effective configuration ---------------------------------------------------------
@dataclass(frozen=True)
class EffectiveSetting:
    """One setting's value and where it came from: ``default``, ``file PATH``,
    ``env SEALOG_MAX_ENTRY_BYTES`` or ``flag``."""

    option: ServeOption
    value: object
    source: str

    def toml_line(self) -> str:
        """This setting as a line of a file ``--config`` takes, its source in a comment.
        One with no value is a commented-out line, so the output is a template."""
        if self.value is None:
            return f"# {self.option.key} = ...  # {self.source}: unset"
        return f"{self.option.key} = {self._toml_value()}  # {self.source}"

    def _toml_value(self) -> str:
        kind, value = self.option.kind, self.value
        if kind == "bool":
            return "true" if self.option.is_on(value) else "false"
        if kind == "list":
            assert isinstance(value, list)
            return "[" + ", ".join(self._toml_string(str(v)) for v in value) + "]"
        if kind in ("int", "float"):
            return repr(value)
        return self._toml_string(str(value))

    def _toml_string(self, text: str) -> str:
        out = []
        for ch in text:
            if ch in '"\\':
                out.append("\\" + ch)
            elif ord(ch) < 0x20 or ord(ch) == 0x7F:
                out.append(f"\\u{ord(ch):04x}")
            elif 0xD800 <= ord(ch) <= 0xDFFF:
                raise ConfigError(
                    f"{self.option.key}: {text!r} is not valid text, TOML cannot hold it"
                )
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class EffectiveConfig:
    """The arguments serve runs with, and each setting's value and source."""

    args: argparse.Namespace
    settings: tuple[EffectiveSetting, ...]

    def toml(self) -> str:
        """The configuration as a TOML file ``--config`` takes, one line per key."""
        header = (
            "# sealog serve: flags > SEALOG_* environment > --config file > defaults "
            "(docs/operations.md, Configuration)\n"
        )
        return header + "".join(s.toml_line() + "\n" for s in self.settings)


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EffectiveConfig:
    """Serve's parsed ``args`` with each setting taken from the first source that has
    it: the command line (even when it gives the default value), a ``SEALOG_*``
    variable of ``environ`` (default: this process's environment), the ``--config``
    file, the default. A list option from a higher source replaces a lower one's list.

    ``args`` must come from serve's parser in :func:`sealog.server.cli.build_parser`,
    which records the command line it parsed.
    """
    command_line = getattr(args, COMMAND_LINE, None)
    if not isinstance(command_line, CommandLine):
        raise TypeError(
            "serve's arguments must come from build_parser(), whose parsers record the "
            "command line: without it a flag cannot be told from a default"
        )
    options = serve_options(command_line.parser)
    given = command_line.given()
    from_env = read_environment(os.environ if environ is None else environ, options)
    from_file = read_config_file(args.config, options) if args.config else {}
    merged = argparse.Namespace(**vars(args))
    settings = []
    for option in options:
        dest = option.dest
        if dest in given:
            value, source = getattr(args, dest), "flag"
        elif dest in from_env:
            variable, value = from_env[dest]
            source = f"env {variable}"
        elif dest in from_file:
            value, source = from_file[dest], f"file {args.config}"
        else:
            value, source = getattr(args, dest), "default"
        setattr(merged, dest, value)
        settings.append(EffectiveSetting(option, value, source))
    return EffectiveConfig(merged, tuple(settings))
