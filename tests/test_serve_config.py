"""Where `sealog serve` takes its settings from: flags, SEALOG_* variables, --config FILE,
defaults; and --print-config, which writes the result back as a file --config takes."""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench.serve_process import child_env, sealog_command
from sealog.client.log_client import LogClient
from sealog.server.cli import build_parser, main
from sealog.server.cli.serve_config import (
    CLIENT_VARIABLES,
    ConfigError,
    EffectiveConfig,
    resolve,
    serve_options,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_sealog_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment with no SEALOG_* variable."""
    for name in list(os.environ):
        if name.startswith("SEALOG_"):
            monkeypatch.delenv(name)


def serve_parser() -> argparse.ArgumentParser:
    """The parser of `sealog serve`, as build_parser makes it."""
    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            serve: argparse.ArgumentParser = action.choices["serve"]
            return serve
    raise AssertionError("no serve command")


def effective(*argv: str, env: dict[str, str] | None = None) -> EffectiveConfig:
    return resolve(build_parser().parse_args(["serve", *argv]), environ=env or {})


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def print_config(*argv: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["serve", *argv, "--print-config"]) == 0
    return capsys.readouterr().out


# --- precedence --------------------------------------------------------------------------
# (dest, file line, file value, env text, env value, flag argv, flag value, default)
PRECEDENCE = [
    pytest.param(
        "max_entry_bytes",
        "max_entry_bytes = 1000",
        1000,
        "2000",
        2000,
        ["--max-entry-bytes", "3000"],
        3000,
        64496,
        id="int",
    ),
    pytest.param(
        "push_witness_interval",
        "push_witness_interval = 20",
        20.0,
        "0.5",
        0.5,
        ["--push-witness-interval", "7"],
        7.0,
        10.0,
        id="float",
    ),
    pytest.param(
        "new_log",
        "new_log = false",
        False,
        "yes",
        True,
        ["--new-log"],
        True,
        False,
        id="bool",
    ),
    pytest.param(
        "push_witness",
        'push_witness = ["https://a.example/", "https://b.example/"]',
        ["https://a.example/", "https://b.example/"],
        "https://c.example/",
        ["https://c.example/"],
        ["--push-witness", "https://d.example/"],
        ["https://d.example/"],
        None,
        id="repeatable",
    ),
]


@pytest.mark.parametrize(
    ("dest", "line", "in_file", "text", "in_env", "flag", "on_flag", "default"), PRECEDENCE
)
def test_flag_over_environment_over_file_over_default(
    tmp_path: Path,
    dest: str,
    line: str,
    in_file: object,
    text: str,
    in_env: object,
    flag: list[str],
    on_flag: object,
    default: object,
) -> None:
    config = write(tmp_path / "sealog.toml", line + "\n")
    variable = "SEALOG_" + dest.upper()

    def value(*argv: str, env: dict[str, str] | None = None) -> tuple[object, str]:
        result = effective(*argv, env=env)
        (setting,) = (s for s in result.settings if s.option.dest == dest)
        assert getattr(result.args, dest) == setting.value
        return setting.value, setting.source

    assert value() == (default, "default")
    assert value("--config", config) == (in_file, f"file {config}")
    assert value("--config", config, env={variable: text}) == (in_env, f"env {variable}")
    assert value("--config", config, *flag, env={variable: text}) == (on_flag, "flag")


def test_a_flag_given_with_its_default_value_still_wins(tmp_path: Path) -> None:
    config = write(tmp_path / "sealog.toml", 'max_entry_bytes = 10\nlisten = "10.0.0.1:1"\n')
    env = {"SEALOG_MAX_ENTRY_BYTES": "20", "SEALOG_LISTEN": "10.0.0.2:2"}

    result = effective(
        "--config", config, "--max-entry-bytes", "64496", "--listen", "127.0.0.1:6962", env=env
    )

    assert result.args.max_entry_bytes == 64496
    assert result.args.listen == "127.0.0.1:6962"
    assert {s.option.key: s.source for s in result.settings}["max_entry_bytes"] == "flag"


def test_a_bool_from_the_file_is_turned_off_by_the_environment(tmp_path: Path) -> None:
    config = write(tmp_path / "sealog.toml", "insecure_allow_remote = true\n")

    assert effective("--config", config).args.insecure_allow_remote is True
    for word in ("0", "false", "NO", "Off"):
        env = {"SEALOG_INSECURE_ALLOW_REMOTE": word}
        assert effective("--config", config, env=env).args.insecure_allow_remote is False


def test_a_repeatable_option_from_a_higher_source_replaces_the_lower_list(tmp_path: Path) -> None:
    config = write(tmp_path / "sealog.toml", 'extra_key_file = ["a.key", "b.key"]\n')

    assert effective("--config", config).args.extra_key_file == ["a.key", "b.key"]
    from_env = effective("--config", config, env={"SEALOG_EXTRA_KEY_FILE": "c.key, d.key"})
    assert from_env.args.extra_key_file == ["c.key", "d.key"]
    emptied = effective("--config", config, env={"SEALOG_EXTRA_KEY_FILE": ""})
    assert emptied.args.extra_key_file == []
    from_flags = effective(
        "--config",
        config,
        "--extra-key-file",
        "e.key",
        "--extra-key-file",
        "f.key",
        env={"SEALOG_EXTRA_KEY_FILE": "c.key"},
    )
    assert from_flags.args.extra_key_file == ["e.key", "f.key"]


def test_file_values_go_through_the_options_converter(tmp_path: Path) -> None:
    ok = write(tmp_path / "ok.toml", "push_witness_interval = 30\nbatch_max_wait_ms = 2\n")
    result = effective("--config", ok)
    assert result.args.push_witness_interval == 30.0
    assert result.args.batch_max_wait_ms == 2.0

    bad = write(tmp_path / "bad.toml", "push_witness_interval = 0\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: key 'push_witness_interval'.*seconds > 0"):
        effective("--config", bad)


def test_a_new_serve_option_is_a_key_and_a_variable_with_no_other_change(tmp_path: Path) -> None:
    parser = build_parser()
    (serve,) = (
        a.choices["serve"] for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    serve.add_argument("--example-limit", type=int, default=5)
    serve.add_argument("--example-switch", action="store_true")
    config = write(tmp_path / "sealog.toml", "example_limit = 6\nexample_switch = true\n")

    from_file = resolve(parser.parse_args(["serve", "--config", config]), environ={})
    from_env = resolve(
        parser.parse_args(["serve", "--config", config]), environ={"SEALOG_EXAMPLE_LIMIT": "7"}
    )

    assert (from_file.args.example_limit, from_file.args.example_switch) == (6, True)
    assert from_env.args.example_limit == 7
    assert "example_limit = 7  # env SEALOG_EXAMPLE_LIMIT" in from_env.toml()


# --- the file ----------------------------------------------------------------------------
def test_an_unknown_key_is_named_with_the_closest_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "sealog.toml", "max_entry_byte = 1024\n")

    assert main(["serve", "--config", config, "--print-config"]) == 1

    err = capsys.readouterr().err
    assert f"{config}: unknown key 'max_entry_byte' (did you mean 'max_entry_bytes'?)" in err


def test_an_unknown_key_with_nothing_close_has_no_suggestion(tmp_path: Path) -> None:
    config = write(tmp_path / "sealog.toml", "colour = 'blue'\n")

    with pytest.raises(ConfigError, match=r"unknown key 'colour'$"):
        effective("--config", config)


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ('max_entry_bytes = "1024"', "key 'max_entry_bytes': the string '1024', want an integer"),
        ("max_entry_bytes = true", "key 'max_entry_bytes': the boolean true, want an integer"),
        ("max_entry_bytes = 1.5", "key 'max_entry_bytes': the number 1.5, want an integer"),
        ("batch_max_wait_ms = false", "key 'batch_max_wait_ms': the boolean false, want a number"),
        ('new_log = "yes"', "key 'new_log': the string 'yes', want a boolean"),
        ("new_log = 1", "key 'new_log': the number 1, want a boolean"),
        ("listen = 6962", "key 'listen': the number 6962, want a string"),
        ('push_witness = "https://w.example/"', "key 'push_witness': the string"),
        ("push_witness = [1, 2]", "key 'push_witness': an array of non-strings, want a list"),
        ("tls_cert = 1979-05-27", "key 'tls_cert': a date, want a string"),
    ],
)
def test_a_value_of_the_wrong_type_is_named_with_what_the_key_wants(
    tmp_path: Path, line: str, want: str
) -> None:
    config = write(tmp_path / "sealog.toml", line + "\n")

    with pytest.raises(ConfigError, match=re.escape(f"{config}: {want}")):
        effective("--config", config)


@pytest.mark.parametrize(
    "text",
    ['[serve]\nlisten = "127.0.0.1:1"\n', '[[serve]]\nlisten = "127.0.0.1:1"\n'],
    ids=["table", "array-of-tables"],
)
def test_sections_are_refused_the_file_is_flat(tmp_path: Path, text: str) -> None:
    config = write(tmp_path / "sealog.toml", text)

    with pytest.raises(ConfigError, match=r"sealog\.toml: .*(flat|unknown key 'serve')"):
        effective("--config", config)


def test_a_table_under_a_known_key_is_refused_as_flat(tmp_path: Path) -> None:
    config = write(tmp_path / "sealog.toml", '[listen]\nhost = "127.0.0.1"\n')

    with pytest.raises(
        ConfigError, match=r"key 'listen': a table, want a string \(the file is flat"
    ):
        effective("--config", config)


def test_a_missing_unreadable_or_invalid_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: cannot read") + ".*No such file"):
        effective("--config", missing)

    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: cannot read")):
        effective("--config", str(tmp_path))  # a folder

    invalid = write(tmp_path / "invalid.toml", "max_entry_bytes = \n")
    with pytest.raises(ConfigError, match=re.escape(f"{invalid}: not a valid TOML file")):
        effective("--config", invalid)

    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b'origin = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{latin1}: not a valid TOML file")):
        effective("--config", str(latin1))


def test_a_file_error_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"

    status = main(["serve", "--data-dir", str(data), "--config", str(tmp_path / "nope.toml")])

    assert status == 1
    assert "nope.toml: cannot read the configuration file" in capsys.readouterr().err
    assert not data.exists()


# --- the environment ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "text", "want"),
    [
        ("SEALOG_MAX_ENTRY_BYTES", "lots", "$SEALOG_MAX_ENTRY_BYTES: invalid int value: 'lots'"),
        ("SEALOG_PUSH_WITNESS_INTERVAL", "-1", "$SEALOG_PUSH_WITNESS_INTERVAL: '-1': want"),
        ("SEALOG_NEW_LOG", "maybe", "$SEALOG_NEW_LOG: 'maybe': want one of 1, 0, true"),
        ("SEALOG_BATCH_MAX_WAIT_MS", "", "$SEALOG_BATCH_MAX_WAIT_MS: invalid float value: ''"),
    ],
)
def test_a_bad_variable_is_named(name: str, text: str, want: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(want)):
        effective(env={name: text})


def test_an_unknown_sealog_variable_is_warned_about_by_name_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"SEALOG_FOO": "hunter2", "SEALOG_MAX_ENTRY_BYTE": "1024", "SEALOG_CONFIG": "x.toml"}

    with caplog.at_level(logging.WARNING):
        result = effective(env=env)

    assert result.args.max_entry_bytes == 64496
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("$SEALOG_FOO is not a sealog serve setting" in w for w in warnings)
    assert any("(did you mean SEALOG_MAX_ENTRY_BYTES?)" in w for w in warnings)
    assert any("$SEALOG_CONFIG" in w and "pass --config" in w for w in warnings)
    assert not any("hunter2" in w or "x.toml" in w for w in warnings)


def test_the_variables_of_other_commands_pass_silently(caplog: pytest.LogCaptureFixture) -> None:
    env = dict.fromkeys(CLIENT_VARIABLES, "anything")

    with caplog.at_level(logging.WARNING):
        effective(env=env)

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_every_sealog_variable_the_code_uses_is_known() -> None:
    """A SEALOG_* variable another command reads must be in CLIENT_VARIABLES, or serve
    would warn about it; and no serve setting may take one of those names."""
    serve_variables = {o.variable for o in serve_options(serve_parser())}
    used: set[str] = set()
    for folder in ("client", "server", "bench", "tests", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ""} and path.name != Path(__file__).name:
                used |= set(re.findall(r"SEALOG_[A-Z_]+", path.read_text(errors="replace")))

    assert used - serve_variables - CLIENT_VARIABLES == set()
    assert serve_variables & CLIENT_VARIABLES == set()


# --- --print-config ----------------------------------------------------------------------
def test_print_config_lists_every_serve_option(capsys: pytest.CaptureFixture[str]) -> None:
    out = print_config(capsys=capsys)

    listed = re.findall(r"^(?:# )?([a-z_]+) = ", out, re.MULTILINE)
    longs = [
        next(s for s in a.option_strings if s.startswith("--"))
        for a in serve_parser()._actions
        if a.option_strings and not isinstance(a, argparse._HelpAction)
    ]
    want = [s[2:].replace("-", "_") for s in longs if s not in ("--config", "--print-config")]
    assert listed == want
    assert "max_entry_bytes = 64496  # default\n" in out
    assert "# tls_cert = ...  # default: unset\n" in out


def test_print_config_round_trips_through_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write(
        tmp_path / "first.toml",
        'origin = "example.com/log \\"quoted\\" \\u00e9\\t"\n'
        'push_witness = ["https://w.example/add?a=1,b=2"]\n'
        "batch_max_wait_ms = 0.25\n"
        "new_log = true\n",
    )
    monkeypatch.setenv("SEALOG_MAX_ENTRY_BYTES", "4096")
    monkeypatch.setenv("SEALOG_WITNESS_VKEY", "w1,w2")
    argv = ["--config", first, "--listen", "127.0.0.1:7000", "--data-dir", str(tmp_path / "d")]

    out = print_config(*argv, capsys=capsys)
    parsed = tomllib.loads(out)
    second = write(tmp_path / "second.toml", out)
    for name in ("SEALOG_MAX_ENTRY_BYTES", "SEALOG_WITNESS_VKEY"):
        monkeypatch.delenv(name)
    again = print_config("--config", second, capsys=capsys)

    assert parsed["origin"] == 'example.com/log "quoted" é\t'
    assert parsed["push_witness"] == ["https://w.example/add?a=1,b=2"]
    assert parsed["witness_vkey"] == ["w1", "w2"]
    assert parsed["max_entry_bytes"] == 4096
    assert parsed["listen"] == "127.0.0.1:7000"
    assert tomllib.loads(again) == parsed
    assert "max_entry_bytes = 4096  # env SEALOG_MAX_ENTRY_BYTES\n" in out
    assert 'listen = "127.0.0.1:7000"  # flag\n' in out
    assert f"batch_max_wait_ms = 0.25  # file {first}\n" in out
    assert f"max_entry_bytes = 4096  # file {second}\n" in again
    assert not (tmp_path / "d").exists()  # the data folder was not opened


def test_print_config_prints_key_paths_never_their_contents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "PRIVATE-KEY-MATERIAL-3f9a"
    paths: dict[str, str] = {}
    for name in ("key_file", "tls_key", "tls_cert", "policy"):
        file = tmp_path / f"{name}.pem"
        file.write_text(secret)
        paths[name] = str(file)
    flags = [x for name, p in paths.items() for x in ("--" + name.replace("_", "-"), p)]

    out = print_config(*flags, "--extra-key-file", paths["key_file"], capsys=capsys)

    assert secret not in out
    for name, shown in paths.items():
        assert f'{name} = "{shown}"  # flag\n' in out
    assert f'extra_key_file = ["{paths["key_file"]}"]  # flag\n' in out


def test_no_serve_option_is_named_like_a_secret() -> None:
    """Options hold paths to key files, never keys: --print-config prints every value."""
    for option in serve_options(serve_parser()):
        assert not re.search(r"secret|password|token|api_key|skey", option.key), option.key


def test_config_help_states_the_precedence() -> None:
    text = " ".join(serve_parser().format_help().split())

    assert "--config FILE" in text
    assert "wins over its SEALOG_* environment variable" in text
    assert "docs/operations.md, 'Configuration'" in text
    assert "--print-config" in text


# --- end to end --------------------------------------------------------------------------
_ADDRESS = re.compile(r"^\s*address:\s+(\S+:\d+)\b")
_VKEY = re.compile(r"^\s*verifier key:\s+(\S+)")


@pytest.fixture
def serve_with_config(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """`sealog serve --config FILE` with nothing else on its command line."""
    config = write(
        tmp_path / "sealog.toml",
        f'data_dir = "{tmp_path / "data"}"\nlisten = "127.0.0.1:0"\nmax_entry_bytes = 100\n',
    )
    env = {**child_env(), "SEALOG_MAX_REQUEST_ENTRIES": "2"}
    proc = subprocess.Popen(
        [*sealog_command(), "serve", "--config", config],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            found.setdefault("output", "")
            found["output"] += line
            if m := _ADDRESS.match(line):
                found["target"] = m.group(1)
            elif m := _VKEY.match(line):
                found["vkey"] = m.group(1)
            elif line.lstrip().startswith("checkpoint:"):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30), "sealog serve printed nothing in 30 s"
        assert "target" in found and "vkey" in found, found.get("output")
        yield proc, found
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_serve_takes_its_address_and_limits_from_the_file_and_environment(
    tmp_path: Path, serve_with_config: tuple[subprocess.Popen[str], dict[str, Any]]
) -> None:
    _, found = serve_with_config

    assert (tmp_path / "data" / "log.vkey").read_text().strip() == found["vkey"]
    with LogClient(found["target"], found["vkey"]) as client:
        receipt = client.append(b"x" * 100)
        with pytest.raises(grpc.RpcError) as too_big:
            client.append(b"x" * 101)
        with pytest.raises(grpc.RpcError) as too_many:
            client.append_batch([b"a", b"b", b"c"])
        checkpoint = client.checkpoint()

    assert receipt.index == 0
    assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert checkpoint.checkpoint.size == 1
