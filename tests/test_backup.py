"""Backups taken while the log serves are consistent, verified, restorable prefixes of the log."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import lmdb
import pytest
from e2e_support import Serve, recompute_root

from sealog.client.checkpoint import open_checkpoint
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Verifier
from sealog.client.proof import NodeID
from sealog.server.backup import CHECKPOINT_FILE, BackupError, backup
from sealog.server.storage import hash_location


@pytest.mark.slow
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


def test_a_backup_never_overwrites(serve: Serve, tmp_path: Path) -> None:
    live = serve(tmp_path / "live")
    with LogClient(live.target, live.vkey) as client:
        client.append(b"one")
    (tmp_path / "taken").mkdir()

    with pytest.raises(BackupError, match="exists; a backup goes to a new folder"):
        backup(tmp_path / "live", tmp_path / "taken")


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
