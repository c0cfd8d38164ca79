"""The monitor's configuration: which logs to follow and how, from a TOML file.

Every setting is documented in docs/monitoring.md, "Configuration". Loading
checks everything a poll would need (keys parse, the witness policy is well
formed, names are unique), so a bad file fails at start-up, not at the first
poll.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealog.client.keyfile import read_key_file
from sealog.client.note import Ed25519Verifier
from sealog.client.witness_policy import WitnessPolicy

__all__ = ["LogConfig", "MonitorConfig"]

_NAME = re.compile(r"[A-Za-z0-9._-]+")
_ON_FAILURE = ("exit", "continue")
_LOG_KEYS = {
    "name",
    "target",
    "vkey",
    "vkey_file",
    "origin",
    "witnesses",
    "witness_threshold",
    "witness_max_age",
    "state_dir",
    "poll_interval",
    "alert_command",
    "on_failure",
    "full_audit",
    "pinned_checkpoint",
    "cosigner_key_file",
    "page_size",
    "save_interval",
    "timeout",
}
_DEFAULT_KEYS = {
    "state_dir",
    "poll_interval",
    "alert_command",
    "on_failure",
    "full_audit",
    "page_size",
    "save_interval",
    "timeout",
    "witnesses",
    "witness_threshold",
    "witness_max_age",
}


@dataclass(frozen=True)
class LogConfig:
    """How to follow one log. Field by field in docs/monitoring.md, "Configuration"."""

    name: str
    target: str
    vkey: str
    origin: str | None = None
    witnesses: tuple[str, ...] = ()
    witness_threshold: int | None = None
    witness_max_age_s: float | None = None
    state_dir: Path = Path("monitor-state")
    poll_interval_s: float = 60.0
    alert_command: tuple[str, ...] = ()
    on_failure: str = "exit"
    full_audit: bool = False
    pinned_checkpoint: Path | None = None
    cosigner_key_file: Path | None = None
    page_size: int = 0
    save_interval_s: float = 5.0
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"log name {self.name!r}: use letters, digits, '.', '_', '-'")
        if self.on_failure not in _ON_FAILURE:
            raise ValueError(f"on_failure: {self.on_failure!r}, want one of {_ON_FAILURE}")
        if self.poll_interval_s < 0 or self.save_interval_s < 0 or self.timeout_s <= 0:
            raise ValueError("poll_interval and save_interval must be >= 0, timeout > 0")
        if not 0 <= self.page_size <= 1_000_000:
            raise ValueError(f"page_size: {self.page_size}, want 0 (server default) or more")
        Ed25519Verifier.from_vkey(self.vkey)  # fail at load time, not at the first poll
        self.policy()

    def verifier(self) -> Ed25519Verifier:
        """The log's key."""
        return Ed25519Verifier.from_vkey(self.vkey)

    def policy(self) -> WitnessPolicy | None:
        """The witness policy, if witness keys are configured."""
        if not self.witnesses:
            return None
        return WitnessPolicy.from_vkeys(
            self.witnesses, self.witness_threshold, self.witness_max_age_s
        )


def _want(kind: type | tuple[type, ...], value: object, key: str) -> Any:
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{key}: {value!r} is not a number")
    if not isinstance(value, kind):
        raise ValueError(f"{key}: {value!r} has the wrong type")
    return value


def _command(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(shlex.split(value))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{key}: want a command string or a list of arguments")


@dataclass(frozen=True)
class MonitorConfig:
    """Every log to follow, from a TOML file (:meth:`load`)."""

    logs: tuple[LogConfig, ...]

    def __post_init__(self) -> None:
        if not self.logs:
            raise ValueError("no [[log]] to monitor")
        names = [log.name for log in self.logs]
        if len(set(names)) != len(names):
            raise ValueError(f"two logs share a name: {sorted(names)} (set name = ...)")

    @classmethod
    def load(cls, path: str | Path) -> MonitorConfig:
        """Parse a TOML config; relative paths are relative to the file's folder."""
        path = Path(path)
        with path.open("rb") as f:
            data = tomllib.load(f)
        return cls.from_dict(data, path.parent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base: Path) -> MonitorConfig:
        """Build from parsed TOML: top-level defaults and one ``[[log]]`` table per log."""
        unknown = set(data) - _DEFAULT_KEYS - {"log"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        tables = data.get("log", [])
        if not isinstance(tables, list):
            raise ValueError("use [[log]] tables, one per log")
        logs = []
        for i, table in enumerate(tables):
            logs.append(_log_config(data, dict(table), base, f"log[{i}]"))
        return cls(tuple(logs))


def _log_config(
    defaults: Mapping[str, Any], table: dict[str, Any], base: Path, where: str
) -> LogConfig:
    unknown = set(table) - _LOG_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown settings: {sorted(unknown)}")

    def get(key: str, default: Any = None) -> Any:
        return table.get(key, defaults.get(key, default))

    def path(value: object, key: str) -> Path:
        p = Path(_want(str, value, f"{where}.{key}")).expanduser()
        return p if p.is_absolute() else base / p

    if "vkey" in table:
        vkey = _want(str, table["vkey"], f"{where}.vkey").strip()
    elif "vkey_file" in table:
        vkey = read_key_file(path(table["vkey_file"], "vkey_file"))
    else:
        raise ValueError(f"{where}: give the log's key: vkey = '...' or vkey_file = 'FILE'")
    if "target" not in table:
        raise ValueError(f"{where}: give the log's address: target = 'host:port'")
    key_name = vkey.split("+", 1)[0]
    name = _want(str, table.get("name", re.sub(r"[^A-Za-z0-9._-]", "_", key_name)), "name")
    state_dir = path(table["state_dir"], "state_dir") if "state_dir" in table else None
    if state_dir is None:
        state_dir = path(defaults.get("state_dir", "monitor-state"), "state_dir") / name
    witnesses = get("witnesses", [])
    if not isinstance(witnesses, list) or not all(isinstance(w, str) for w in witnesses):
        raise ValueError(f"{where}.witnesses: want a list of witness verifier keys")
    threshold = get("witness_threshold")
    max_age = get("witness_max_age")
    alert = get("alert_command")
    pinned = table.get("pinned_checkpoint")
    cosigner = table.get("cosigner_key_file")
    return LogConfig(
        name=name,
        target=_want(str, table["target"], f"{where}.target"),
        vkey=vkey,
        origin=_want(str, table["origin"], f"{where}.origin") if "origin" in table else None,
        witnesses=tuple(witnesses),
        witness_threshold=None if threshold is None else _want(int, threshold, "threshold"),
        witness_max_age_s=None if max_age is None else float(_want((int, float), max_age, "age")),
        state_dir=state_dir,
        poll_interval_s=float(_want((int, float), get("poll_interval", 60.0), "poll_interval")),
        alert_command=() if alert is None else _command(alert, f"{where}.alert_command"),
        on_failure=_want(str, get("on_failure", "exit"), "on_failure"),
        full_audit=_want(bool, get("full_audit", False), "full_audit"),
        pinned_checkpoint=None if pinned is None else path(pinned, "pinned_checkpoint"),
        cosigner_key_file=None if cosigner is None else path(cosigner, "cosigner_key_file"),
        page_size=_want(int, get("page_size", 0), "page_size"),
        save_interval_s=float(_want((int, float), get("save_interval", 5.0), "save_interval")),
        timeout_s=float(_want((int, float), get("timeout", 30.0), "timeout")),
    )
