"""The data folder of a log: what it must hold before it is served, its lock, its modes.

A data folder (docs/storage.md) holds ``log.key``, ``log.vkey``, ``db/`` (the
LMDB environment) and ``serve.lock``. Start-up follows three rules
(docs/operations.md, "The data folder"):

- A new log is created only in a folder with no trace of an earlier one: a
  folder that is missing, or empty. Any other folder must already hold a log
  (``db/`` with a non-empty ``data.mdb``, whose signed checkpoint the log's
  self-check then verifies), else start-up refuses and names what is missing:
  creating a log there would sign a second history under the same key, a fork.
- Nothing that exists is overwritten or re-created. A missing ``log.key`` is
  never generated again (a restored backup holds none); new files are
  created with ``O_EXCL``.
- One process serves a folder: ``serve.lock`` is locked (``flock``) before
  anything else is opened, and holds the server's pid for the message a second
  server prints. Read-only tools (fsck, backup) take no lock.

The folder is created 0700 and its files 0600; an existing folder that others
can read is reported (a warning), never changed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from sealog.client.durable import fsync_path
from sealog.client.errors import SealogError
from sealog.client.keyfile import read_key_file, write_private_key_file
from sealog.client.note import Ed25519Signer

__all__ = [
    "CREATING_FILE",
    "DB_DIR",
    "KEY_FILE",
    "LOCK_FILE",
    "VKEY_FILE",
    "DataFolder",
    "DataFolderError",
    "DataFolderInUseError",
    "make_private_dir",
]

log = logging.getLogger(__name__)

KEY_FILE = "log.key"
VKEY_FILE = "log.vkey"
DB_DIR = "db"
LOCK_FILE = "serve.lock"
CREATING_FILE = "new-log.incomplete"
"""Present while a new log is being created: from before its first file until its
first checkpoint is committed."""
_NOT_TRACES = frozenset({LOCK_FILE, "lost+found"})
"""Names a folder may hold and still count as empty (a mount point's lost+found)."""
_RESTORE = (
    "To restore the log, copy a backup (made by `sealog backup`, docs/operations.md, "
    '"Restoring") into this folder and put the signing key back as log.key; '
    "to start a new log, use a new, empty folder."
)


class DataFolderError(SealogError):
    """The data folder cannot be served as it is; start-up changed nothing in it."""


class DataFolderInUseError(DataFolderError):
    """Another process serves the data folder."""


def _create_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` holding ``data``, durably; refuse if it exists (``O_EXCL``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> bool:
    """Create the folder ``path`` with mode 0700 (its parents as the umask says).

    Returns False, changing nothing, if it exists already.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
        return False
    os.chmod(path, 0o700)  # whatever the umask
    return True


def _others_can_read(path: Path) -> str | None:
    """``"PATH (mode 0755)"`` when group or others may read ``path``, else None."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} (mode {stat.S_IMODE(mode):04o})"
    return None


@dataclass
class DataFolder:
    """A data folder, locked for serving: use :meth:`lock`, then :meth:`release`.

    ``new`` says whether the folder held no trace of a log when it was locked
    (then the log is to be created in it).
    """

    path: Path
    new: bool
    _lock_fd: int = field(repr=False)

    @property
    def db(self) -> Path:
        """The LMDB environment's folder."""
        return self.path / DB_DIR

    @classmethod
    def lock(cls, path: str | Path) -> DataFolder:
        """Create the folder (0700) if it is missing and lock it for this process.

        Raises :class:`DataFolderInUseError` if another process (or another
        server in this one) holds the lock.
        """
        path = Path(path)
        created = make_private_dir(path)
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise DataFolderInUseError(
                    f"{path} is already served by pid {holder} (it holds {path / LOCK_FILE}); "
                    "one server per data folder: stop that one first"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            entries = sorted(set(os.listdir(path)) - _NOT_TRACES)
        except BaseException:
            os.close(fd)
            raise
        folder = cls(path, not entries, fd)
        if not created:
            folder._warn_if_readable()
        return folder

    def release(self) -> None:
        """Unlock the folder (idempotent)."""
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            try:
                os.ftruncate(fd, 0)  # no stale pid for the next reader
            finally:
                os.close(fd)  # closing the last descriptor releases the flock

    def _warn_if_readable(self) -> None:
        readable = [
            shown
            for p in (self.path, self.db, self.db / "data.mdb", self.db / "lock.mdb")
            if (shown := _others_can_read(p)) is not None
        ]
        if readable:
            log.warning(
                "the log's data can be read by other users: %s; if that is not intended, "
                "run `chmod 700 %s` (sealog creates data folders 0700, files 0600)",
                ", ".join(readable),
                self.path,
            )

    def _traces(self) -> str:
        return ", ".join(sorted(set(os.listdir(self.path)) - _NOT_TRACES))

    def check_holds_a_log(self) -> None:
        """An existing folder must hold the log's storage; else say what is missing.

        Decided before LMDB opens anything: LMDB would initialise a missing
        or empty ``data.mdb`` as a new, empty log.
        """
        if self.new:
            return
        if (self.path / CREATING_FILE).exists():
            raise DataFolderError(
                f"{self.path}: the first start of a new log in this folder was interrupted "
                f"({CREATING_FILE} is there: its first checkpoint may never have been "
                "committed, and nothing was served from it). Remove the folder and start "
                "again; or, if you restored a backup into it, remove it and restore into a "
                "new, empty folder."
            )
        data = self.db / "data.mdb"
        if not self.db.is_dir():
            raise DataFolderError(
                f"{self.path} holds {self._traces()} but no {DB_DIR}/: not an empty folder, "
                f"and the log's storage is missing. Starting would create a new, empty log "
                f"here (a fork, if this folder's key signed a log before). {_RESTORE}"
            )
        if not data.exists():
            raise DataFolderError(f"{data} is missing: the log's storage is gone. {_RESTORE}")
        if data.stat().st_size == 0:
            raise DataFolderError(
                f"{data} is empty (0 bytes): the log's storage is lost (LMDB would silently "
                f"start a new, empty log in it). {_RESTORE}"
            )

    def check_new_log(self, key_file: Path | None, *, new_log: bool) -> None:
        """A new log under a key of its own is made only when asked for; ``new_log`` only
        for a new log.

        A key kept outside the folder (``key_file``) may already sign a log whose
        folder is simply not there: a volume that did not mount leaves an empty
        mount point. Creating a log there would sign a second history under that
        key, from index 0: a fork. Without ``key_file`` a new folder gets a new
        key, so a new log there can fork nothing.
        """
        if new_log and not self.new:
            raise DataFolderError(
                f"--new-log: {self.path} already holds a log ({self._traces()}); serve it "
                "without --new-log (which only starts a log in a missing or empty folder)"
            )
        if self.new and key_file is not None and not new_log:
            raise DataFolderError(
                f"{self.path} is empty, but --key-file {key_file} is a key of its own. If it "
                "already signs a log (whose data folder is not mounted, or was lost), starting "
                "would sign a second history under it, from index 0: a fork. Mount the log's "
                f"folder, or restore it from a backup. To start a new log with this key, pass "
                "--new-log once."
            )

    def signer(self, key_file: Path | None, origin: str) -> Ed25519Signer:
        """The log's signing key: ``key_file``, else ``log.key`` in the folder.

        In a new folder, with no ``key_file``, a new key (written by
        :meth:`begin_create`). In an existing one, ``log.key`` must be there
        (it is never generated again); :meth:`check_vkey` compares it with
        ``log.vkey`` once the stored checkpoint has verified with it.
        """
        key_path = self.path / KEY_FILE
        if key_file is not None:
            signer = Ed25519Signer.from_skey(read_key_file(key_file, private=True))
        elif self.new:
            return Ed25519Signer.generate(origin)
        elif key_path.exists():
            signer = Ed25519Signer.from_skey(read_key_file(key_path, private=True))
        else:
            raise DataFolderError(
                f"{key_path} missing: put the log's signing key back (mode 0600) or pass "
                "--key-file. (A backup never holds the key; a new key would not verify the "
                "log's checkpoints, so none is generated.)"
            )
        return signer

    def check_vkey(self, signer: Ed25519Signer, key_file: Path | None) -> None:
        """``log.vkey``, if present, must be the signing key's verifier key.

        Start-up never rewrites it; one that names another key is the wrong
        key file, or a rotation whose new verifier key was not put in place.
        """
        source = key_file or self.path / KEY_FILE
        vkey_path = self.path / VKEY_FILE
        if not vkey_path.exists():
            return
        stored = read_key_file(vkey_path)
        vkey = signer.verifier().vkey
        if stored != vkey:
            named = "+".join(stored.split("+")[:2])
            raise DataFolderError(
                f"the signing key {source} is {signer.name}+{signer.key_hash:08x}, but "
                f"{vkey_path} is another key ({named}): the wrong key file? "
                f"After a key rotation (docs/authentication.md), put the new key's verifier key "
                f"in {vkey_path} first."
            )

    def begin_create(self, signer: Ed25519Signer, key_file: Path | None) -> None:
        """Write a new log's key files (``O_EXCL``), marked as a creation in progress
        until :meth:`end_create`; the storage is created next."""
        assert self.new
        _create_file(self.path / CREATING_FILE, b"")
        if key_file is None:
            write_private_key_file(self.path / KEY_FILE, signer.skey)
        _create_file(self.path / VKEY_FILE, signer.verifier().vkey.encode("ascii") + b"\n")
        make_private_dir(self.db)
        fsync_path(self.path)

    def end_create(self) -> None:
        """The new log's first checkpoint is committed: it is a log like any other now."""
        (self.path / CREATING_FILE).unlink()
        fsync_path(self.path)
        log.info("created a new log in %s", self.path)
