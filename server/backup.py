"""Consistent backups of a log's data folder, taken while the log may be serving.

The copy is *logical*: inside one LMDB read transaction, every table of the
source is read in key order and written, with ``MDB_APPEND``, into a fresh
environment. The read transaction makes the copy exactly some committed state
(a tree and the checkpoint signed for it, never half a batch); appending in
order makes it compact. The server keeps writing meanwhile; it only cannot
reuse the pages that read transaction pins until the copy ends.

LMDB's own copy (``Environment.copy`` / ``mdb_env_copy2``) is deliberately not
used: with ``compact=True`` it segfaults in lmdb 3.0.0 on a DUPSORT|DUPFIXED
table with more than ~60 values under one key, which ``hashes`` always has past
~50 entries, and without compaction it copies every free page too
(docs/operations.md, "Backups", says which versions were tried).

A backup is built in a sibling folder named ``DEST.incomplete-XXXXXXXX``,
fsynced, verified with :func:`sealog.server.fsck.fsck`, and only then renamed
to ``DEST`` in one step. So ``DEST`` either does not exist or is a verified
backup: a copy that fails, is interrupted or whose process is killed leaves at
most an ``.incomplete-`` folder, which the next backup to ``DEST`` removes.

A backup folder has the layout of a data folder (``db/``, ``log.vkey``) plus
``checkpoint.note``, the signed checkpoint it holds, so that you can check
with your monitors that they trust it before you ever restore it. The signing
key (``log.key``) is never copied: back it up separately, as the secret it is.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lmdb

from sealog.client.checkpoint import open_checkpoint
from sealog.client.durable import fsync_path
from sealog.client.errors import SealogError
from sealog.client.keyfile import read_key_file
from sealog.client.note import Ed25519Verifier, NoteVerifier
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage

__all__ = ["CHECKPOINT_FILE", "INCOMPLETE_MARK", "BackupError", "BackupResult", "backup"]

CHECKPOINT_FILE = "checkpoint.note"
INCOMPLETE_MARK = ".incomplete-"
"""Part of the name of a backup being built: ``DEST.incomplete-XXXXXXXX``."""
_VKEY_FILE = "log.vkey"
_DB = "db"
_MAX_TABLES = 64
_BATCH_RECORDS = 1 << 15
"""Records written per write transaction of the copy."""


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
    does not pass fsck. ``dest`` appears only once the copy is verified and
    durable; nothing is ever written to the source.
    """
    data_dir, dest = Path(data_dir), Path(dest)
    source = _db_dir(data_dir)
    vkey_file = data_dir / _VKEY_FILE
    if verifier is None:
        if not vkey_file.exists():
            raise BackupError(f"no verifier key: {vkey_file} is missing; pass the log's key")
        verifier = Ed25519Verifier.from_vkey(read_key_file(vkey_file))
    _refuse_existing(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(dest)
        with _incomplete(dest) as work:
            result = _copy_and_check(source, vkey_file, work, verifier)
            _refuse_existing(dest)
            try:
                # Atomic; fails rather than replace a folder that is not empty.
                os.rename(work, dest)
            except OSError as e:
                raise BackupError(f"cannot move the verified copy {work} to {dest}: {e}") from e
            fsync_path(dest.parent)
    except OSError as e:
        raise BackupError(f"backup to {dest} failed: {e}") from e
    return replace(result, path=dest)


def _refuse_existing(dest: Path) -> None:
    if not (dest.exists() or dest.is_symlink()):
        return
    if not (dest / CHECKPOINT_FILE).exists():
        raise BackupError(
            f"{dest} exists; a backup goes to a new folder ({dest} holds no {CHECKPOINT_FILE}, "
            "so it is not a complete backup: remove it, or choose another folder)"
        )
    raise BackupError(f"{dest} exists; a backup goes to a new folder")


def _remove_abandoned(dest: Path) -> None:
    """Remove what backups to ``dest`` that were killed left behind.

    A backup in progress holds an exclusive lock on its folder; a folder whose
    lock can be taken was left by a process that is gone.
    """
    pattern = glob.escape(str(dest)) + INCOMPLETE_MARK + "*"
    for name in glob.glob(pattern):
        path = Path(name)
        if path.is_symlink() or not path.is_dir():
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another backup to the same folder is running
            shutil.rmtree(path)
        finally:
            os.close(fd)


@contextmanager
def _incomplete(dest: Path) -> Iterator[Path]:
    """A new, locked ``DEST.incomplete-XXXXXXXX`` folder, removed unless renamed away."""
    work = Path(tempfile.mkdtemp(prefix=dest.name + INCOMPLETE_MARK, dir=dest.parent))
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # kept until the copy is renamed or removed
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.close(fd)


def _copy_and_check(
    source: Path, vkey_file: Path, work: Path, verifier: NoteVerifier
) -> BackupResult:
    (work / _DB).mkdir(mode=0o700)
    _copy_tables(source, work / _DB)
    fsync_path(work / _DB / "data.mdb")
    fsync_path(work / _DB)
    if vkey_file.exists():
        shutil.copy2(vkey_file, work / _VKEY_FILE)
    storage = LmdbStorage(work / _DB, readonly=True)
    try:
        with storage.read() as snap:
            report = fsck(snap, verifier, progress=False)
            note = snap.checkpoint()
    finally:
        storage.close()
    (work / _DB / "lock.mdb").unlink(missing_ok=True)  # fsck's readers; a restore makes its own
    if not report.ok or note is None:
        shown = "; ".join(report.problems[:5]) or "no checkpoint"
        raise BackupError(f"the copy of {source} does not verify: {shown}")
    (work / CHECKPOINT_FILE).write_bytes(note)
    fsync_path(work / CHECKPOINT_FILE)
    fsync_path(work)
    signed = open_checkpoint(note, verifier)
    return BackupResult(
        work,
        signed.checkpoint.size,
        signed.checkpoint.root_hash,
        note,
        (work / _DB / "data.mdb").stat().st_size,
    )


def _copy_tables(source: Path, target: Path) -> None:
    """Copy every table of the environment at ``source`` into a new one at ``target``.

    One read transaction covers the whole copy. Each table is created with the
    source's flags (so with its sort order) and filled in key order with
    ``append``; the record count of each is checked against the source.
    """
    try:
        env = lmdb.open(str(source), readonly=True, lock=True, max_dbs=_MAX_TABLES, readahead=False)
    except lmdb.Error as e:
        raise BackupError(f"cannot open {source}: {e}") from e
    try:
        txn = _begin_read(env)
        try:
            names = [bytes(key) for key in txn.cursor().iternext(values=False)]
            out = lmdb.open(
                str(target),
                map_size=max(1 << 30, 2 * os.path.getsize(source / "data.mdb")),
                max_dbs=len(names) + 1,
                subdir=True,
                lock=False,  # nobody else knows of this folder yet
                sync=False,  # one sync at the end instead of one per batch
                metasync=False,
                readahead=False,
                mode=0o600,
            )
            try:
                for name in names:
                    _copy_table(env, txn, out, name)
                out.sync(True)
            finally:
                out.close()
        finally:
            txn.abort()
    except lmdb.Error as e:
        raise BackupError(f"copying {source} failed: {e}") from e
    finally:
        env.close()


def _begin_read(env: Any) -> Any:
    try:
        return env.begin()
    except lmdb.MapResizedError:  # the serving log grew the map since we opened it
        env.set_mapsize(0)
        return env.begin()


def _copy_table(env: Any, txn: Any, out: Any, name: bytes) -> None:
    shown = name.decode("ascii", "replace")
    try:
        table = env.open_db(name, txn=txn, create=False)
    except lmdb.IncompatibleError as e:
        raise BackupError(f"the main table holds {shown!r}, which is not a table: {e}") from e
    flags = table.flags(txn)
    copy = out.open_db(name, create=True, **flags)
    want = int(txn.stat(table)["entries"])
    written = 0
    batch: list[tuple[bytes, bytes]] = []
    for record in txn.cursor(db=table).iternext(keys=True, values=True):
        batch.append(record)
        if len(batch) == _BATCH_RECORDS:
            written += _write(out, copy, batch, flags["dupsort"], shown)
            batch = []
    written += _write(out, copy, batch, flags["dupsort"], shown)
    if written != want:
        raise BackupError(f"table {shown}: copied {written} records of {want}")


def _write(out: Any, table: Any, batch: list[tuple[bytes, bytes]], dup: bool, shown: str) -> int:
    """Append ``batch`` (in key order) in one write transaction; grow the map if needed."""
    while True:
        try:
            # The transaction's own table too: before lmdb 3.0 that chose APPEND or APPENDDUP.
            with out.begin(write=True, db=table) as txn:
                _, added = txn.cursor(db=table).putmulti(batch, dupdata=dup, append=True)
        except lmdb.MapFullError:
            out.set_mapsize(2 * int(out.info()["map_size"]))
        else:
            break
    if added != len(batch):
        raise BackupError(f"table {shown}: wrote {added} of {len(batch)} records (out of order?)")
    return int(added)
