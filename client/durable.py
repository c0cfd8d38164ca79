"""Replacing a small file atomically and durably: all of the new bytes or all of the old.

The steps are the usual ones for POSIX file systems: write a temporary file
in the same folder, ``fsync`` it, ``rename`` it over the target (atomic), then
``fsync`` the folder so the rename itself survives a power cut. A crash at any
instant leaves either the old file or the new one, never a torn mix; at worst
a stray temporary file (``.NAME.tmp`` next to the target), which the next
write replaces. The monitor's state and evidence, the witness's state and the
capture spool's files are all replaced through :func:`write_durably`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["fsync_path", "write_durably"]


def write_durably(
    path: str | Path,
    data: bytes,
    *,
    mode: int = 0o644,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring).

    Creates the parent folder if missing. ``mode`` (before the umask) applies
    to a new file; the temporary file is not inherited by child processes.
    ``before_replace``, if given, runs once the new bytes are durable in the
    temporary file and before the rename, for a step that must come between
    the two. If writing (or ``before_replace``) raises, the target is unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if before_replace is not None:
        before_replace()
    os.replace(tmp, path)
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """Make a file's bytes, or a folder's entries (creations, renames), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
