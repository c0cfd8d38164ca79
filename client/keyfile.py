"""Key files: a signer key string on one line, created readable by its owner only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sealog.client.errors import KeyFormatError

__all__ = ["read_key_file", "vkey_path_for", "write_private_key_file", "write_public_key_file"]


def vkey_path_for(key_path: str | Path) -> Path:
    """Where the verifier key of the private key file ``key_path`` goes: beside it.

    ``.vkey`` is appended to the name, after dropping a trailing ``.key``:
    ``x.key`` -> ``x.vkey``, ``dir/example.com`` -> ``dir/example.com.vkey``.
    A key path that itself ends in ``.vkey`` is refused (``ValueError``): its
    verifier key would overwrite it.
    """
    path = Path(key_path)
    if path.name.endswith(".vkey"):
        raise ValueError(
            f"{path}: a private key file must not end in .vkey (that name is for its "
            "verifier key); name it NAME.key"
        )
    stem = path.name.removesuffix(".key")
    if not stem:
        raise ValueError(f"{path}: want a file name, such as NAME.key")
    return path.with_name(stem + ".vkey")


def _create(path: str | Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private_key_file(path: str | Path, skey: str) -> None:
    """Create ``path`` with mode 0600 holding ``skey``; refuse to overwrite an existing file."""
    _create(path, skey, 0o600)


def write_public_key_file(path: str | Path, vkey: str) -> None:
    """Create ``path`` with mode 0644 holding ``vkey``; refuse to overwrite an existing file."""
    _create(path, vkey, 0o644)


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
