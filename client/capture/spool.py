"""The shipper's spool: events waiting for the log, in a local file, across restarts.

:class:`~sealog.client.capture.shipper.EventShipper` with the ``spool`` overflow policy
appends each event here (fsynced) and replays the file in order, with each
event's idempotency key, once the log is reachable again, also in the next
process that opens the same spool.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sealog.client.durable import fsync_path, write_durably
from sealog.client.errors import SealogError

__all__ = ["PendingEvent", "Spool", "SpoolError"]

log = logging.getLogger("sealog.client.capture.shipper")
"""The shipper's logger, which :class:`~sealog.client.capture.handler.SealogHandler` never ships:
warnings about the spool must not become events that go to the spool."""


class SpoolError(SealogError):
    """The spool file cannot be used: not a spool, in use by another process, or corrupt."""


@dataclass(frozen=True)
class PendingEvent:
    """An event on its way to the log, with the idempotency key it was given at submit."""

    payload: bytes
    key: str
    queued_at: float = field(default=0.0, compare=False)


_SPOOL_MAGIC = b"sealog-spool/v1\n"
_RECORD_HEADER = struct.Struct(">II")  # body length, CRC-32 of the body
_KEY_LEN = struct.Struct(">B")


def _record(item: PendingEvent) -> bytes:
    key = item.key.encode("ascii")
    body = _KEY_LEN.pack(len(key)) + key + item.payload
    return _RECORD_HEADER.pack(len(body), zlib.crc32(body)) + body


def _parse_body(body: bytes) -> PendingEvent | None:
    if not body:
        return None
    n = body[0]
    if len(body) < 1 + n:
        return None
    try:
        key = body[1 : 1 + n].decode("ascii")
    except UnicodeDecodeError:
        return None
    return PendingEvent(body[1 + n :], key)


class Spool:
    """An append-only file of events waiting for the log, and the offset of the first one.

    File ``PATH``: the line ``sealog-spool/v1``, then records ``u32 length ||
    u32 crc32(body) || body`` with ``body = u8 key length || key || payload``.
    File ``PATH.offset``: the byte offset of the first record the log has not
    confirmed, replaced atomically. ``PATH.lock`` is held (flock) while open.

    A record is fsynced before :meth:`append` returns; a torn record at the end
    (a crash during a write, so never acknowledged) is cut off on open. A bad
    record followed by more data is corruption: :class:`SpoolError`.
    """

    def __init__(self, path: Path, max_bytes: int | None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._offset_path = path.with_name(path.name + ".offset")
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(
            path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {path}: in use by another process") from None
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                self._open()
            except BaseException:
                os.close(self._fd)
                raise
        except BaseException:
            os.close(self._lock_fd)
            raise

    def _open(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            self._write_all(_SPOOL_MAGIC)
            os.fsync(self._fd)
            fsync_path(self.path.parent)
            size = len(_SPOOL_MAGIC)
        elif os.pread(self._fd, len(_SPOOL_MAGIC), 0) != _SPOOL_MAGIC:
            raise SpoolError(f"spool {self.path}: not a sealog spool (no sealog-spool/v1 line)")
        offset = self._read_offset()
        if not len(_SPOOL_MAGIC) <= offset <= size:
            # Past the end: a crash between emptying the spool and resetting the
            # offset. Everything before was confirmed; start over.
            offset = len(_SPOOL_MAGIC)
        self.offset = offset
        self.pending, end = self._scan(offset, size)
        if end < size:
            log.warning(
                "spool %s: cut off a torn record at the end (%d bytes), left by a crash "
                "during a write (it was never acknowledged)",
                self.path,
                size - end,
            )
            os.ftruncate(self._fd, end)
            os.fsync(self._fd)
        self.end = end

    def _read_offset(self) -> int:
        try:
            # Bytes that are not ASCII become U+FFFD: a SpoolError below, not a decode error.
            text = self._offset_path.read_bytes().decode("ascii", "replace").strip()
        except FileNotFoundError:
            return len(_SPOOL_MAGIC)
        if not (text.isascii() and text.isdigit()):
            raise SpoolError(f"spool offset {self._offset_path}: {text[:40]!r}, want a number")
        return int(text)

    def _scan(self, pos: int, size: int) -> tuple[int, int]:
        """Count the records in ``[pos, size)``; return (count, end of the last whole one)."""
        count = 0
        while pos < size:
            header = os.pread(self._fd, _RECORD_HEADER.size, pos)
            if len(header) < _RECORD_HEADER.size:
                break
            length, crc = _RECORD_HEADER.unpack(header)
            end = pos + _RECORD_HEADER.size + length
            if end > size:
                break
            body = os.pread(self._fd, length, pos + _RECORD_HEADER.size)
            if zlib.crc32(body) != crc or _parse_body(body) is None:
                if end == size:
                    break
                raise SpoolError(
                    f"spool {self.path}: record at byte {pos} is corrupt and followed by "
                    f"{size - end} more bytes; move the file aside and inspect it"
                )
            pos = end
            count += 1
        return count, pos

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def append(self, item: PendingEvent) -> bool:
        """Append and fsync one record; False when it would pass ``max_bytes``."""
        data = _record(item)
        if self.max_bytes is not None and self.end + len(data) > self.max_bytes:
            return False
        try:
            self._write_all(data)
            os.fdatasync(self._fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.end)
            raise
        self.end += len(data)
        self.pending += 1
        return True

    def read(self, limit: int) -> tuple[list[PendingEvent], int]:
        """Up to ``limit`` records from the offset, and the offset after them."""
        items: list[PendingEvent] = []
        pos = self.offset
        while pos < self.end and len(items) < limit:
            length, _ = _RECORD_HEADER.unpack(os.pread(self._fd, _RECORD_HEADER.size, pos))
            body = os.pread(self._fd, length, pos + _RECORD_HEADER.size)
            item = _parse_body(body)
            if item is None:  # checked by _scan; only a changed file gets here
                raise SpoolError(f"spool {self.path}: record at byte {pos} changed under us")
            items.append(item)
            pos += _RECORD_HEADER.size + length
        return items, pos

    def confirm(self, offset: int, count: int) -> None:
        """The log holds the records before ``offset``: persist that; empty the file if drained."""
        self.offset = offset
        self.pending -= count
        if self.offset == self.end:
            # Truncate first: a crash before the offset is rewritten leaves an
            # offset past the end, which _open reads as "all confirmed".
            os.ftruncate(self._fd, len(_SPOOL_MAGIC))
            os.fsync(self._fd)
            self.offset = self.end = len(_SPOOL_MAGIC)
        self._write_offset(self.offset)

    def _write_offset(self, offset: int) -> None:
        write_durably(self._offset_path, f"{offset}\n".encode("ascii"), mode=0o600)

    def prepend(self, head: Sequence[PendingEvent]) -> None:
        """Rewrite the file as ``head`` followed by the unconfirmed records (used at close).

        The offset is reset first (once the new file is durable, before it
        replaces the old): a crash in between replays records the log already
        holds, which their idempotency keys make harmless.
        """
        rest, _ = self.read(self.pending)
        data = _SPOOL_MAGIC + b"".join(_record(item) for item in (*head, *rest))
        write_durably(
            self.path,
            data,
            mode=0o600,
            before_replace=lambda: self._write_offset(len(_SPOOL_MAGIC)),
        )
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        self.offset = len(_SPOOL_MAGIC)
        self.end = len(data)
        self.pending += len(head)

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._lock_fd)  # releases the flock
