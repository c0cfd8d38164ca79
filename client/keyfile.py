"""Key files: a signer key string on one line, created readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sealog.client.errors import KeyFormatError

__all__ = ["read_key_file", "write_private_key_file"]


def write_private_key_file(path: str | Path, skey: str) -> None:
    """Create ``path`` with mode 0600 holding ``skey``; refuse to overwrite an existing file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, skey.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def read_key_file(path: str | Path, *, private: bool = False) -> str:
    """Read a key string from a file; a private key file must not be readable by others."""
    path = Path(path)
    if private:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFormatError(
                f"{path}: private key file has mode {stat.S_IMODE(mode):04o}; "
                f"run `chmod 600 {path}`"
            )
    text = path.read_text(encoding="ascii").strip()
    if not text or "\n" in text:
        raise KeyFormatError(f"{path}: want exactly one key string on one line")
    return text
