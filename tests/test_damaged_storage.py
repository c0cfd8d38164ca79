"""Damaged storage is named, never a crash: fsck reports it, serve refuses or answers DATA_LOSS.

Each case damages one copy of a 10,000-entry log below sealog's tables, at
LMDB's level (pages, meta pages, the file's length), as a failing disk or a
bad copy would. ``sealog fsck`` must exit 2 with a ``PROBLEM:`` line; ``sealog
serve`` must refuse to start with a message, or, when the damage is not on the
pages its start-up check reads, answer reads of it DATA_LOSS and stay up.
Nothing may die by a signal or print a traceback.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from e2e_support import RunningLog, Serve, run_sealog

from bench.lmdb_pages import Layout, layout
from bench.serve_process import ServeFailedError
from sealog.client.log_client import LogClient
from sealog.server import fsck_process
from sealog.server.sequencer import AppendItem
from sealog.v1 import log_pb2, log_pb2_grpc

pytestmark = pytest.mark.slow  # runs sealog fsck and sealog serve on damaged copies

ENTRIES = 10_000
PAGE_FLAGS_AT = 10  # in an LMDB page header: pgno (8 bytes), pad (2), flags (2), lower, upper


@dataclass(frozen=True)
class Pristine:
    data_dir: Path
    vkey: str
    layout: Layout


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """A log of ENTRIES entries with idempotency keys, cleanly stopped."""
    data_dir = tmp_path_factory.mktemp("damage") / "pristine"
    running = RunningLog(data_dir)
    try:
        for start in range(0, ENTRIES, 1000):
            items = [AppendItem(b"event %d" % i, f"key-{i}") for i in range(start, start + 1000)]
            running.server.log.append(items, "writer")
        vkey = running.verifier.vkey
    finally:
        running.stop()
    return Pristine(data_dir, vkey, layout(data_dir / "db" / "data.mdb"))


Damage = Callable[[Path, Layout], None]


def _flip(data: Path, offset: int, length: int) -> None:
    with data.open("r+b") as f:
        f.seek(offset)
        old = f.read(length)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in old))


def _middle(pages: list[int]) -> int:
    return sorted(pages)[len(pages) // 2]


def truncate_to_half(data: Path, lay: Layout) -> None:
    os.truncate(data, data.stat().st_size // 2)


def truncate_to_one_page(data: Path, lay: Layout) -> None:
    os.truncate(data, lay.page_size)


def zero_the_tail(data: Path, lay: Layout) -> None:
    size = data.stat().st_size
    with data.open("r+b") as f:
        f.seek(size - 16 * lay.page_size)
        f.write(bytes(16 * lay.page_size))


def flip_the_used_meta_page(data: Path, lay: Layout) -> None:
    _flip(data, lay.offset(lay.meta) + 16, 8)  # its magic and version


def flip_the_main_root_in_both_metas(data: Path, lay: Layout) -> None:
    for meta in (0, 1):
        _flip(data, lay.offset(meta) + 16 + 24 + 48 + 40, 4)  # mm_dbs[MAIN].md_root


def flip_an_entries_branch_page(data: Path, lay: Layout) -> None:
    _flip(data, lay.offset(_middle(lay.pages["entries"]["branch"])) + PAGE_FLAGS_AT, 2)


def flip_an_entries_leaf_page_header(data: Path, lay: Layout) -> None:
    _flip(data, lay.offset(_middle(lay.pages["entries"]["leaf"])) + PAGE_FLAGS_AT, 2)


def flip_an_entries_leaf_page_nodes(data: Path, lay: Layout) -> None:
    _flip(data, lay.offset(_middle(lay.pages["entries"]["leaf"])) + 16, 64)


def flip_a_hashes_page(data: Path, lay: Layout) -> None:
    _flip(data, lay.offset(_middle(lay.pages["hashes"]["leaf2"])) + PAGE_FLAGS_AT, 2)


DAMAGES: list[Damage] = [
    truncate_to_half,
    truncate_to_one_page,
    zero_the_tail,
    flip_the_used_meta_page,
    flip_the_main_root_in_both_metas,
    flip_an_entries_branch_page,
    flip_an_entries_leaf_page_header,
    flip_an_entries_leaf_page_nodes,
    flip_a_hashes_page,
]


def _damaged(pristine: Pristine, tmp_path: Path, damage: Damage) -> Path:
    data_dir = tmp_path / "damaged"
    shutil.copytree(pristine.data_dir, data_dir)
    damage(data_dir / "db" / "data.mdb", pristine.layout)
    return data_dir


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
def test_fsck_names_damaged_storage(pristine: Pristine, tmp_path: Path, damage: Damage) -> None:
    data_dir = _damaged(pristine, tmp_path, damage)

    result = run_sealog("fsck", str(data_dir), "--vkey", pristine.vkey, cwd=tmp_path)

    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stdout}{result.stderr}"
    assert "PROBLEM: " in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert "killed the checker" not in result.stdout  # LMDB's own checks name all of these


@pytest.mark.parametrize("damage", DAMAGES, ids=lambda d: d.__name__)
def test_serve_refuses_damaged_storage_or_answers_data_loss(
    pristine: Pristine, tmp_path: Path, serve: Serve, damage: Damage
) -> None:
    data_dir = _damaged(pristine, tmp_path, damage)
    data = data_dir / "db" / "data.mdb"
    before = data.read_bytes()

    proc = serve(data_dir, wait=False)
    try:
        proc.wait_ready()
    except ServeFailedError as refused:
        assert refused.returncode == 1, refused
        assert "sealog: error: storage is damaged: " in refused.stderr
        assert "do not modify it" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert data.read_bytes() == before, "refusing to start changed the storage"
        return
    # The start-up check reads O(log n) pages; damage elsewhere is met by the reads.
    assert damage not in (truncate_to_half, truncate_to_one_page, zero_the_tail)
    assert _failed_reads(proc.target) == {grpc.StatusCode.DATA_LOSS}
    with LogClient(proc.target, pristine.vkey, timeout=30) as client:
        assert client.checkpoint().checkpoint.size == ENTRIES  # and it is still up
    assert proc.terminate() == 0
    assert "Traceback" not in proc.stderr


def _failed_reads(target: str) -> set[grpc.StatusCode]:
    """The codes of failed reads over the whole log: every entry (one stream) and the
    entry and inclusion proof of every 8th leaf (every stored leaf-hash page)."""
    codes = set()
    with grpc.insecure_channel(target) as channel:
        stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            for _ in stub.GetEntries(
                log_pb2.GetEntriesRequest(start=0, end=ENTRIES, tree_size=ENTRIES), timeout=60
            ):
                pass
        except grpc.RpcError as e:
            codes.add(e.code())
        for index in range(0, ENTRIES, 8):
            try:
                stub.GetEntryAndProof(
                    log_pb2.GetEntryAndProofRequest(leaf_index=index, tree_size=ENTRIES),
                    timeout=30,
                )
            except grpc.RpcError as e:
                codes.add(e.code())
    return codes


def test_fsck_names_a_signal_that_kills_its_reader(
    pristine: Pristine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever LMDB does on a damaged page, even dying by a signal, fsck reports it."""
    child = tmp_path / "dies"
    child.write_text(
        '#!/bin/sh\necho \'{"problem": "entries[5]: found before the fault"}\'\nkill -SEGV $$\n'
    )
    child.chmod(child.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(sys, "executable", str(child))
    try:
        report = fsck_process.fsck_storage(pristine.data_dir / "db", pristine.vkey)
    finally:
        monkeypatch.setattr(sys, "executable", sys.executable)

    assert report.problems[0] == "entries[5]: found before the fault"
    assert "killed the checker with SIGSEGV" in report.problems[1]
    assert not report.ok


def test_a_damaged_entry_read_answers_data_loss_not_internal(
    pristine: Pristine, tmp_path: Path
) -> None:
    """The servicer maps StorageCorruptError to DATA_LOSS: every LMDB error on a read is one."""
    data_dir = _damaged(pristine, tmp_path, flip_an_entries_leaf_page_header)
    log = RunningLog(data_dir)
    try:
        stub = log.stub()
        codes = set()
        for index in range(0, ENTRIES, 97):
            try:
                stub.GetEntryAndProof(
                    log_pb2.GetEntryAndProofRequest(leaf_index=index, tree_size=ENTRIES)
                )
            except grpc.RpcError as e:
                codes.add(e.code())
        assert codes == {grpc.StatusCode.DATA_LOSS}
    finally:
        log.stop()
