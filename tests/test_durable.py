"""Atomic, durable file replacement (sealog.client.durable)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sealog.client.durable import write_durably


def test_replaces_the_file_and_creates_missing_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "state"
    write_durably(target, b"one")
    write_durably(target, b"two, longer")
    assert target.read_bytes() == b"two, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state"]


def test_mode_applies_to_a_new_file(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        write_durably(tmp_path / "secret", b"x", mode=0o600)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_before_replace_runs_between_the_durable_temporary_file_and_the_rename(
    tmp_path: Path,
) -> None:
    target = tmp_path / "spool"
    target.write_bytes(b"old")
    seen: list[tuple[bytes, bytes]] = []

    def between() -> None:
        seen.append((target.read_bytes(), (tmp_path / ".spool.tmp").read_bytes()))

    write_durably(target, b"new", before_replace=between)
    assert seen == [(b"old", b"new")]
    assert target.read_bytes() == b"new"


def test_a_failing_before_replace_leaves_the_target_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "spool"
    target.write_bytes(b"old")

    def fail() -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_durably(target, b"new", before_replace=fail)
    assert target.read_bytes() == b"old"
    write_durably(target, b"newer")  # the stray temporary file is simply replaced
    assert target.read_bytes() == b"newer"
