"""The sequencer is the only writer: every write transaction on a log's storage is opened
on its thread, whatever asks for the write (server/sequencer.py)."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sealog.client.cosignature import Cosigner, cosign_checkpoint
from sealog.client.note import Ed25519Signer
from sealog.server.config import Settings
from sealog.server.errors import UnavailableError
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem, _Job
from sealog.server.storage import WriteBatch

ORIGIN = "sealog.localhost/log"
SIGNER = Ed25519Signer.generate(ORIGIN)
WITNESS = Cosigner.generate("witness.example/w1")
FLUSH_OFTEN = Settings(index_flush_entries=8, index_flush_idle_s=0.01)
SERVER = Path(__file__).resolve().parent.parent / "server"
_WRITE_VERBS = {"append", "index", "put", "set"}


class RecordingStorage(LmdbStorage):
    """LMDB storage that records which thread opens each write transaction, and what the
    transaction writes (the names of the write methods it calls)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writes: list[tuple[threading.Thread, frozenset[str]]] = []

    @contextmanager
    def write(self) -> Iterator[WriteBatch]:  # type: ignore[override]
        thread = threading.current_thread()
        with super().write() as w:
            batch = _Recording(w)
            yield batch
        self.writes.append((thread, frozenset(batch.called)))


class _Recording:
    """A write batch that remembers which of its write methods were called."""

    _WRITES = frozenset(name for name in dir(WriteBatch) if name.split("_")[0] in _WRITE_VERBS)

    def __init__(self, inner: WriteBatch) -> None:
        self._inner = inner
        self.called: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        if name in self._WRITES:
            self.called.add(name)
        return getattr(self._inner, name)


def _writers(storage: RecordingStorage) -> set[threading.Thread]:
    return {thread for thread, _ in storage.writes}


def test_every_write_is_on_the_sequencers_thread(tmp_path: Path) -> None:
    """A new log's first commit, batches of appends, index flushes and a cosignature."""
    storage = RecordingStorage(tmp_path / "db")
    try:
        log = Log(
            storage,
            SIGNER,
            SIGNER.verifier(),
            ORIGIN,
            FLUSH_OFTEN,
            witnesses=[WITNESS.verifier()],
        )
        assert [called for _, called in storage.writes] == [
            {"set_meta", "set_checkpoint", "set_indexed_upto"}
        ]
        try:
            for b in range(4):
                log.append([AppendItem(b"b%d e%d" % (b, i), f"k{b}-{i}") for i in range(5)], "")
            log.add_cosignature(cosign_checkpoint(log.latest_checkpoint(), WITNESS))
        finally:
            log.close()
    finally:
        storage.close()
    written = set().union(*(called for _, called in storage.writes))
    assert {"append_leaf", "index_leaves", "set_cosignatures", "set_checkpoint"} <= written
    (writer,) = _writers(storage)
    assert writer.name == "sealog-sequencer"
    assert writer is not threading.main_thread()


def test_opening_an_existing_log_writes_nothing(tmp_path: Path) -> None:
    storage = RecordingStorage(tmp_path / "db")
    try:
        Log(storage, SIGNER, SIGNER.verifier(), ORIGIN).close()
        storage.writes.clear()
        log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, create=False)
        try:
            assert storage.writes == []
            log.append([AppendItem(b"after reopening")], "")
        finally:
            log.close()
    finally:
        storage.close()
    (writer,) = _writers(storage)
    assert writer.name == "sealog-sequencer"


def test_a_cosignature_after_close_is_refused_not_written(tmp_path: Path) -> None:
    storage = RecordingStorage(tmp_path / "db")
    try:
        log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, witnesses=[WITNESS.verifier()])
        note = cosign_checkpoint(log.latest_checkpoint(), WITNESS)
        log.close()
        storage.writes.clear()
        with pytest.raises(UnavailableError, match="shutting down"):
            log.add_cosignature(note)
        assert storage.writes == []
    finally:
        storage.close()


def _opens_a_write(node: ast.AST) -> bool:
    """``<...storage>.write()``: a call of the storage contract's write entry point."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr != "write" or node.args or node.keywords:
        return False
    owner = node.func.value
    name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
    return "storage" in name.lower()


def test_only_the_sequencer_calls_the_storages_write() -> None:
    callers = {
        path.name
        for path in sorted(SERVER.rglob("*.py"))
        if any(_opens_a_write(node) for node in ast.walk(ast.parse(path.read_text())))
    }
    assert callers == {"sequencer.py"}


def test_a_job_its_caller_cancelled_is_skipped_and_the_writer_goes_on() -> None:
    """A caller may give up on a queued write (its future is public); the writer thread
    must neither run the write nor die on the cancelled future."""
    ran: list[int] = []
    job = _Job(lambda: ran.append(1))
    assert job.future.cancel()
    job.run()  # set_result on a cancelled future would raise InvalidStateError
    assert ran == []
    failing = _Job(lambda: 1 // 0)
    failing.run()
    assert isinstance(failing.future.exception(), ZeroDivisionError)
