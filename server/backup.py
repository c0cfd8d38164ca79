"""Consistent backups of a log's data folder, taken while the log may be serving.

LMDB copies an environment inside one read transaction (``mdb_env_copy2``
with compaction), so the copy is exactly some committed state: a tree and
the checkpoint signed for it, never half a batch. The server keeps writing
meanwhile; it only cannot reuse the pages that read transaction pins until
the copy ends.

A backup folder has the layout of a data folder (``db/``, ``log.vkey``) plus
``checkpoint.note``, the signed checkpoint it holds, so that you can check
with your monitors that they trust it before you ever restore it. The signing
key (``log.key``) is never copied: back it up separately, as the secret it is.
Every backup is verified with :func:`sealog.server.fsck.fsck` before it is
reported good; a copy that fails is removed.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import lmdb

from sealog.client.checkpoint import open_checkpoint
from sealog.client.errors import SealogError
from sealog.client.keyfile import read_key_file
from sealog.client.note import Ed25519Verifier, NoteVerifier
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage

__all__ = ["CHECKPOINT_FILE", "BackupError", "BackupResult", "backup"]

CHECKPOINT_FILE = "checkpoint.note"
_VKEY_FILE = "log.vkey"
_DB = "db"


class BackupError(SealogError):
    """The backup could not be taken, or the copy did not verify (it was removed)."""


@dataclass(frozen=True)
class BackupResult:
    """A verified backup: where it is and which signed tree it holds."""

    path: Path
    size: int
    """The tree size of the checkpoint in the copy."""
    root_hash: bytes
    checkpoint: bytes
    """The signed checkpoint note in the copy (also in ``path / CHECKPOINT_FILE``)."""
    bytes_copied: int
    """The size of the copied (compacted) ``data.mdb``."""


def _db_dir(data_dir: Path) -> Path:
    if (data_dir / "data.mdb").exists():
        return data_dir
    if (data_dir / _DB / "data.mdb").exists():
        return data_dir / _DB
    raise BackupError(f"{data_dir}: no log here (no {_DB}/data.mdb)")


def backup(
    data_dir: str | Path,
    dest: str | Path,
    verifier: NoteVerifier | None = None,
) -> BackupResult:
    """Copy the log in ``data_dir`` to the new folder ``dest`` and verify the copy.

    ``verifier`` is the log's key (default: ``data_dir/log.vkey``). Raises
    :class:`BackupError` if ``dest`` exists, if the copy fails, or if the copy
    does not pass fsck (the copy is then removed; the source is never modified).
    """
    data_dir, dest = Path(data_dir), Path(dest)
    source = _db_dir(data_dir)
    vkey_file = data_dir / _VKEY_FILE
    if verifier is None:
        if not vkey_file.exists():
            raise BackupError(f"no verifier key: {vkey_file} is missing; pass the log's key")
        verifier = Ed25519Verifier.from_vkey(read_key_file(vkey_file))
    try:
        dest.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise BackupError(f"{dest} exists; a backup goes to a new folder") from None
    try:
        return _copy_and_check(source, vkey_file, dest, verifier)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _copy_and_check(
    source: Path, vkey_file: Path, dest: Path, verifier: NoteVerifier
) -> BackupResult:
    (dest / _DB).mkdir()
    try:
        env = lmdb.open(str(source), readonly=True, lock=True, max_dbs=8, subdir=True)
    except lmdb.Error as e:
        raise BackupError(f"cannot open {source}: {e}") from e
    try:
        env.copy(str(dest / _DB), compact=True)  # one read transaction: a consistent state
    except lmdb.Error as e:
        raise BackupError(f"copying {source} failed: {e}") from e
    finally:
        env.close()
    _fsync(dest / _DB / "data.mdb")
    _fsync(dest / _DB)
    if vkey_file.exists():
        shutil.copy2(vkey_file, dest / _VKEY_FILE)
    storage = LmdbStorage(dest / _DB, readonly=True)
    try:
        with storage.read() as snap:
            report = fsck(snap, verifier, progress=False)
            note = snap.checkpoint()
    finally:
        storage.close()
    if not report.ok or note is None:
        shown = "; ".join(report.problems[:5]) or "no checkpoint"
        raise BackupError(f"the copy of {source} does not verify: {shown}")
    (dest / CHECKPOINT_FILE).write_bytes(note)
    _fsync(dest / CHECKPOINT_FILE)
    _fsync(dest)
    signed = open_checkpoint(note, verifier)
    return BackupResult(
        dest,
        signed.checkpoint.size,
        signed.checkpoint.root_hash,
        note,
        (dest / _DB / "data.mdb").stat().st_size,
    )


def _fsync(path: Path) -> None:
    """Make a file (or a folder's entries) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
