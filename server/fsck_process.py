"""fsck in a child process, so that damage LMDB cannot read safely is named, not fatal.

LMDB maps the data file and trusts its pages: a damaged page can make
liblmdb read outside the map, and the process dies by a signal (SIGSEGV,
SIGBUS) with no word of what it was reading. :func:`fsck_storage` therefore
runs :func:`sealog.server.fsck.fsck` in a child (``python -m
sealog.server.fsck_process``), which sends each problem as it is found, one
JSON line on its stdout. Whatever way the child ends, the parent has a
report: the problems it sent, plus one naming how it ended if it did not
finish (the signal, or the error).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from sealog.client.errors import SealogError
from sealog.client.note import Ed25519Verifier
from sealog.server.fsck import FsckReport, fsck
from sealog.server.lmdb_storage import LmdbStorage

__all__ = ["fsck_storage"]

_SIGNAL_WHAT: dict[int, str] = {
    signal.SIGBUS: "a page beyond the end of the file, or one the disk cannot read",
    signal.SIGSEGV: "a damaged page that made LMDB read outside the file",
    signal.SIGABRT: "LMDB stopped on a failed internal check: a damaged page",
}


def fsck_storage(
    db: Path, vkey: str, *, origin: str | None = None, progress: bool = True
) -> FsckReport:
    """fsck the LMDB environment in ``db`` with the log's verifier key ``vkey``, in a child.

    Every kind of damage ends as a problem in the report; nothing here raises
    for what is in the storage.
    """
    command = [sys.executable, "-m", "sealog.server.fsck_process", str(db), vkey]
    if origin is not None:
        command += ["--origin", origin]
    if progress:
        command.append("--progress")
    env = dict(os.environ)
    env.pop("PYTHONFAULTHANDLER", None)  # a fault is reported as a problem, not a traceback
    report = FsckReport()
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=env) as child:
        assert child.stdout is not None
        finished = _read(child.stdout, report)
    code = child.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = _SIGNAL_WHAT.get(-code, "damage LMDB cannot read safely")
        report.add(
            f"LMDB: reading the storage killed the checker with {name} ({what}); "
            "the problems above were found before it, the rest of the storage was not checked"
        )
    elif not finished:
        report.add(f"fsck stopped (exit status {code}) before it checked the whole storage")
    return report


def _read(lines: IO[bytes], report: FsckReport) -> bool:
    """Fill ``report`` from the child's messages; True if it sent its summary."""
    finished = False
    for line in lines:
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        if "problem" in message:
            report.add(str(message["problem"]))
        elif "summary" in message:
            summary = message["summary"]
            report.size = int(summary["size"])
            report.entries_checked = int(summary["entries_checked"])
            report.stored_size = int(summary["stored_size"])
            report.indexed_upto = int(summary["indexed_upto"])
            finished = True
    return finished


class _SendingReport(FsckReport):
    """A report that sends each problem to the parent as it is added."""

    def add(self, problem: str) -> None:
        super().add(problem)
        _send({"problem": problem})


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> int:
    """The child: ``DB VKEY [--origin ORIGIN] [--progress]``."""
    db, vkey = Path(argv[0]), argv[1]
    origin = argv[argv.index("--origin") + 1] if "--origin" in argv else None
    progress = "--progress" in argv
    report = _SendingReport()
    try:
        verifier = Ed25519Verifier.from_vkey(vkey)
        storage = LmdbStorage(db, readonly=True)
        try:
            with storage.read() as snapshot:
                fsck(snapshot, verifier, origin=origin, progress=progress, report=report)
        finally:
            storage.close()
    except SealogError as e:  # what the storage layer names (StorageCorruptError, ...)
        report.add(str(e))
    except Exception as e:  # anything else is a fault of the storage too: name it
        report.add(f"fsck could not read the storage: {type(e).__name__}: {e}")
    _send(
        {
            "summary": {
                "size": report.size,
                "entries_checked": report.entries_checked,
                "stored_size": report.stored_size,
                "indexed_upto": report.indexed_upto,
            }
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
