"""Backups taken while the log serves are consistent, verified, restorable prefixes of the log."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import lmdb
import pytest
from e2e_support import OpenLog, RunningLog, Serve, recompute_root, run_sealog

from bench.serve_process import child_env
from sealog.client.checkpoint import open_checkpoint
from sealog.client.log_client import LogClient, Receipt
from sealog.client.note import Ed25519Verifier
from sealog.client.proof import NodeID
from sealog.server.backup import CHECKPOINT_FILE, INCOMPLETE_MARK, BackupError, backup
from sealog.server.lmdb_layout import hash_location
from sealog.server.sequencer import AppendItem

pytestmark = pytest.mark.slow  # backs up logs while they take appends


def fill(log: RunningLog, count: int, tag: str = "bulk") -> None:
    """Append ``count`` keyed entries in-process, in batches of 1,000."""
    for start in range(0, count, 1000):
        n = min(1000, count - start)
        items = [
            AppendItem(b"%s %d" % (tag.encode(), i), f"{tag}-{i}") for i in range(start, start + n)
        ]
        log.server.log.append(items, "spiffe://example.org/ns/ci/sa/deployer")


def run_backup(data_dir: Path, dest: Path) -> dict[str, object]:
    """``sealog backup --json`` as a subprocess: a crash shows as a negative return code."""
    done = run_sealog("backup", str(data_dir), str(dest), "--json", cwd=dest.parent, timeout=300)
    assert done.returncode == 0, (
        f"sealog backup exited {done.returncode}"
        + (f" (killed by signal {-done.returncode})" if done.returncode < 0 else "")
        + f": {done.stderr.strip()[-2000:]}"
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def leftovers(dest: Path) -> list[Path]:
    """What unfinished backups to ``dest`` left beside it."""
    return sorted(dest.parent.glob(dest.name + INCOMPLETE_MARK + "*"))


@pytest.mark.parametrize("entries", [100, 10_000])
def test_backup_of_log_over_50_entries_does_not_crash(
    open_log: OpenLog, tmp_path: Path, entries: int
) -> None:
    # lmdb 3.0.0's compacting copy died with SIGSEGV on the hashes table past ~50 entries.
    live = open_log(tmp_path / "live")
    fill(live, entries)

    result = run_backup(tmp_path / "live", tmp_path / "backup")

    assert result["tree_size"] == entries
    assert result["fsck"] == "ok"
    saved = open_checkpoint((tmp_path / "backup" / CHECKPOINT_FILE).read_bytes(), live.verifier)
    assert saved.checkpoint.size == entries
    assert leftovers(tmp_path / "backup") == []


def test_backup_and_restore_of_10000_entries_while_appends_continue(
    open_log: OpenLog, tmp_path: Path
) -> None:
    live = open_log(tmp_path / "live")
    fill(live, 10_000)
    client = live.client()
    receipts: list[Receipt] = []
    for batch in range(5):
        result = client.append_batch(
            [b"receipted %d-%d" % (batch, i) for i in range(100)],
            idempotency_keys=[f"r{batch}-{i}" for i in range(100)],
        )
        receipts.extend(result.receipts())
    receipts.append(client.append(b"the last one before the backup"))

    stop = threading.Event()
    during: list[int] = []

    def write() -> None:
        n = 0
        while not stop.is_set():
            during.append(
                client.append_batch([b"during %d" % (n + i) for i in range(20)]).entries[-1].index
            )
            n += 20

    writer = threading.Thread(target=write)
    writer.start()
    try:
        result_json = run_backup(tmp_path / "live", tmp_path / "backup")  # while appends go on
    finally:
        stop.set()
        writer.join(60)
    assert during, "no append went through while the backup ran"
    taken = int(str(result_json["tree_size"]))
    assert taken >= 10_501

    # Restore: the backup folder plus the signing key, kept elsewhere.
    restored_dir = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored_dir)
    shutil.copy2(tmp_path / "live" / "log.key", restored_dir / "log.key")
    restored = open_log(restored_dir)
    assert restored.verifier.vkey == live.verifier.vkey
    back_client = restored.client()
    back = back_client.checkpoint()
    assert back.note == (tmp_path / "backup" / CHECKPOINT_FILE).read_bytes()
    assert back.checkpoint.size == taken

    # Every receipt taken before the backup still holds against the restored log.
    checked: set[bytes] = set()
    for receipt in receipts:
        receipt.verify(restored.verifier)
        if receipt.checkpoint.note not in checked:
            back_client.consistency_proof(receipt.checkpoint, back)
            checked.add(receipt.checkpoint.note)
        entry, _ = back_client.entry_and_proof(receipt.index, back)
        assert entry.leaf == receipt.leaf
    # And the restored log is a prefix of the live one, entry for entry.
    latest = client.checkpoint()
    assert latest.checkpoint.size > taken
    client.consistency_proof(back, latest)
    restored_entries = list(back_client.entries(checkpoint=back))
    assert recompute_root(restored_entries) == (taken, back.checkpoint.root_hash)
    assert [e.leaf for e in restored_entries] == [e.leaf for e in client.entries(0, taken, latest)]
    # The restored log carries on from there.
    assert back_client.append(b"after the restore").index == taken


_KILLED_BACKUP = """
import os, signal, sys
from sealog.server import backup as b
point = sys.argv[3]
real = getattr(b, point)
def die(*args, **kwargs):
    if point == "_write":
        real(*args, **kwargs)  # some of the copy is written
    os.kill(os.getpid(), signal.SIGKILL)
setattr(b, point, die)
b.backup(sys.argv[1], sys.argv[2])
"""


@pytest.mark.parametrize("point", ["_write", "fsck"])
def test_a_backup_killed_midway_leaves_nothing_that_looks_like_a_backup(
    open_log: OpenLog, tmp_path: Path, point: str
) -> None:
    live = open_log(tmp_path / "live")
    fill(live, 2000)
    dest = tmp_path / "backup"

    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_BACKUP, str(tmp_path / "live"), str(dest), point],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    assert not dest.exists(), "a killed backup left something at the destination"
    (left,) = leftovers(dest)  # named as what it is
    assert not (left / CHECKPOINT_FILE).exists()
    result = run_backup(tmp_path / "live", dest)  # the next try to the same folder works
    assert result["tree_size"] == 2000
    assert (dest / CHECKPOINT_FILE).exists()
    assert leftovers(dest) == [], "the next backup did not clear what the killed one left"


def test_a_backup_leaves_a_folder_being_written_by_another_alone(
    open_log: OpenLog, tmp_path: Path
) -> None:
    live = open_log(tmp_path / "live")
    fill(live, 10)
    live.stop()
    dest = tmp_path / "backup"
    busy = tmp_path / f"backup{INCOMPLETE_MARK}busy"
    busy.mkdir()
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as a backup in progress holds it
        backup(tmp_path / "live", dest)
    finally:
        os.close(fd)
    assert busy.exists()
    assert (dest / CHECKPOINT_FILE).exists()


def test_a_backup_under_load_restores_to_a_prefix_of_the_live_log(
    serve: Serve, tmp_path: Path
) -> None:
    live = serve(tmp_path / "live")
    stop = threading.Event()
    appended = threading.Event()

    def write() -> None:
        with LogClient(live.target, live.vkey) as client:
            n = 0
            while not stop.is_set():
                client.append_batch([f"event {n + i}".encode() for i in range(20)])
                n += 20
                appended.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert appended.wait(30)
        taken = backup(tmp_path / "live", tmp_path / "backup")  # while appends go on
        appended.clear()
        assert appended.wait(30), "the log stopped taking appends during the backup"
    finally:
        stop.set()
        writer.join(60)

    assert taken.size > 0
    verifier = Ed25519Verifier.from_vkey(live.vkey)
    saved = open_checkpoint((tmp_path / "backup" / CHECKPOINT_FILE).read_bytes(), verifier)
    assert saved.checkpoint.size == taken.size
    assert not (tmp_path / "backup" / "log.key").exists(), "a backup must not copy the secret key"
    # Restore: the backup folder plus the signing key, kept elsewhere.
    restored_dir = tmp_path / "restored"
    shutil.copytree(tmp_path / "backup", restored_dir)
    shutil.copy2(tmp_path / "live" / "log.key", restored_dir / "log.key")
    restored = serve(restored_dir)
    assert restored.vkey == live.vkey
    with (
        LogClient(live.target, live.vkey) as live_client,
        LogClient(restored.target, restored.vkey) as restored_client,
    ):
        latest = live_client.checkpoint()
        assert latest.checkpoint.size > taken.size
        live_client.consistency_proof(saved, latest)  # the backup is a prefix of the live log
        back = restored_client.checkpoint()
        assert back.note == saved.note
        entries = list(restored_client.entries(checkpoint=back))
        assert recompute_root(entries) == (taken.size, taken.root_hash)
        assert [e.leaf for e in entries] == [
            e.leaf for e in live_client.entries(0, taken.size, latest)
        ]
        # The restored log carries on from there.
        assert restored_client.append(b"after the restore").index == taken.size


def test_a_backup_never_overwrites(open_log: OpenLog, tmp_path: Path) -> None:
    live = open_log(tmp_path / "live")
    fill(live, 3)
    live.stop()  # LMDB opens an environment once per process
    first = backup(tmp_path / "live", tmp_path / "taken")

    with pytest.raises(BackupError, match=r"taken exists; a backup goes to a new folder$"):
        backup(tmp_path / "live", tmp_path / "taken")
    assert (tmp_path / "taken" / CHECKPOINT_FILE).read_bytes() == first.checkpoint
    (tmp_path / "partial" / "db").mkdir(parents=True)  # as an interrupted copy of old left it
    with pytest.raises(BackupError, match=r"holds no checkpoint.note.*not a complete backup"):
        backup(tmp_path / "live", tmp_path / "partial")


def test_a_copy_that_fails_fsck_is_reported_and_removed(serve: Serve, tmp_path: Path) -> None:
    live = serve(tmp_path / "live")
    with LogClient(live.target, live.vkey) as client:
        client.append_batch([b"a", b"b", b"c"])
    assert live.terminate() == 0
    group, slot = hash_location(NodeID(0, 1))  # the leaf hash of entry 1
    env = lmdb.open(str(tmp_path / "live" / "db"), max_dbs=8)
    try:
        db = env.open_db(b"hashes", create=False, dupsort=True, dupfixed=True)
        with env.begin(write=True) as txn:
            cur = txn.cursor(db=db)
            assert cur.set_range_dup(group.to_bytes(8, "big"), bytes([slot]))
            value = bytearray(cur.value())
            assert value[0] == slot
            value[1] ^= 1
            assert cur.delete()
            txn.put(group.to_bytes(8, "big"), bytes(value), db=db)
    finally:
        env.close()

    where = rf"hashes\[{group}\]\[{slot}\]"
    with pytest.raises(BackupError, match=rf"does not verify: {where} level 0"):
        backup(tmp_path / "live", tmp_path / "backup")

    assert not (tmp_path / "backup").exists()
    assert leftovers(tmp_path / "backup") == []
