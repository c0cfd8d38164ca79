"""The data folder never forks the log, never loses its key, and has one server at a time.

A new log is created only in a missing or empty folder; a folder with any
trace of a log must hold all of it (docs/operations.md, "The data folder").
Start-up overwrites nothing; a second server on a folder refuses; the folder
is private to its owner.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest
from e2e_support import RunningLog, Serve, run_sealog

from sealog.client.keyfile import write_private_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.server.app import LogServer
from sealog.server.data_folder import (
    CREATING_FILE,
    LOCK_FILE,
    DataFolderError,
    DataFolderInUseError,
)
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import StartupCheckError

pytestmark = pytest.mark.slow  # starts sealog serve processes


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` but the lock: mode and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def _refused(serve: Serve, data_dir: Path, *args: str) -> str:
    """``sealog serve`` must exit 1 before serving, changing nothing; return its stderr."""
    before = _snapshot(data_dir)
    proc = serve(data_dir, *args, wait=False)
    rc = proc.wait_exit()
    assert rc == 1, f"sealog serve did not refuse (exit {rc}):\n{proc.stdout}\n{proc.stderr}"
    assert not proc.port, "it printed an address"
    assert "Traceback" not in proc.stderr
    assert _snapshot(data_dir) == before, "refusing to start changed the data folder"
    return proc.stderr


@pytest.fixture
def served(serve: Serve, tmp_path: Path) -> tuple[Path, str]:
    """A data folder in which `sealog serve` appended 100 entries, then stopped."""
    data_dir = tmp_path / "data"
    proc = serve(data_dir)
    with LogClient(proc.target, proc.vkey) as client:
        client.append_batch([f"event {i}".encode() for i in range(100)])
    assert proc.terminate() == 0
    return data_dir, proc.vkey


# --- item 1: a folder with a trace of a log is never made a new log ---------------------------
def test_serve_refuses_folder_with_key_but_no_db(serve: Serve, served: tuple[Path, str]) -> None:
    data_dir, _ = served
    shutil.rmtree(data_dir / "db")

    stderr = _refused(serve, data_dir)

    assert "holds log.key, log.vkey but no db/" in stderr
    assert "sealog backup" in stderr
    assert not (data_dir / "db").exists()


def test_serve_refuses_an_empty_data_mdb(serve: Serve, served: tuple[Path, str]) -> None:
    data_dir, _ = served
    os.truncate(data_dir / "db" / "data.mdb", 0)

    stderr = _refused(serve, data_dir)

    assert "data.mdb is empty (0 bytes)" in stderr
    assert "sealog backup" in stderr
    assert (data_dir / "db" / "data.mdb").stat().st_size == 0, "LMDB initialised it"


def test_serve_refuses_a_db_without_data_mdb(serve: Serve, served: tuple[Path, str]) -> None:
    data_dir, _ = served
    (data_dir / "db" / "data.mdb").unlink()

    stderr = _refused(serve, data_dir)

    assert "data.mdb is missing" in stderr
    assert not (data_dir / "db" / "data.mdb").exists()


def test_serve_refuses_a_db_without_a_checkpoint(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    RunningLog(data_dir).stop()
    shutil.rmtree(data_dir / "db")
    LmdbStorage(data_dir / "db").close()  # an LMDB environment, with no log in it
    before = _snapshot(data_dir)

    with pytest.raises(StartupCheckError, match="storage holds no signed checkpoint"):
        LogServer.open(data_dir)

    assert _snapshot(data_dir) == before


def test_a_refused_start_writes_no_table_into_a_foreign_environment(tmp_path: Path) -> None:
    import lmdb

    data_dir = tmp_path / "data"
    RunningLog(data_dir).stop()
    shutil.rmtree(data_dir / "db")
    env = lmdb.open(str(data_dir / "db"), max_dbs=2)  # an LMDB environment of something else
    with env.begin(write=True, db=env.open_db(b"other")) as txn:
        txn.put(b"key", b"value")
    env.close()
    before = (data_dir / "db" / "data.mdb").read_bytes()

    with pytest.raises(StartupCheckError, match="no table meta: not a sealog log"):
        LogServer.open(data_dir)

    # (lock.mdb is LMDB's table of readers, written by every open, read-only ones too.)
    assert (data_dir / "db" / "data.mdb").read_bytes() == before, "it created the log's tables"


def test_serve_refuses_a_folder_of_other_files(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "checkpoint.note").write_text("a trace of a log\n")

    with pytest.raises(DataFolderError, match=r"holds checkpoint.note but no db/"):
        LogServer.open(data_dir)

    assert sorted(p.name for p in data_dir.iterdir()) == ["checkpoint.note", LOCK_FILE]


def test_interrupted_first_start_is_refused_not_recreated(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    write_private_key_file(data_dir / "log.key", Ed25519Signer.generate("x.example/log").skey)
    (data_dir / CREATING_FILE).touch()

    with pytest.raises(DataFolderError, match=r"first start of a new log .* was interrupted"):
        LogServer.open(data_dir)

    assert not (data_dir / "db").exists()


@pytest.mark.parametrize("how", ["missing", "empty"])
def test_a_new_log_is_created_in_a_missing_or_empty_folder(tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "data"
    if how == "empty":
        data_dir.mkdir()
    log = RunningLog(data_dir)
    try:
        assert log.client().append(b"first").index == 0
    finally:
        log.stop()
    assert not (data_dir / CREATING_FILE).exists()
    assert (data_dir / "log.vkey").read_text().strip() == log.verifier.vkey
    again = RunningLog(data_dir)  # and it is a log now: it opens as one
    try:
        assert again.client().checkpoint().checkpoint.size == 1
    finally:
        again.stop()


# --- item 2: start-up never generates a key for, or rewrites, an existing log -------------
def test_an_empty_folder_with_a_key_of_its_own_is_refused_without_new_log(
    serve: Serve, served: tuple[Path, str], tmp_path: Path
) -> None:
    # The log's key lives outside its data folder, and the folder's volume did not
    # mount: an empty mount point. Starting there would fork the log.
    data_dir, vkey = served
    key_file = tmp_path / "secrets" / "log.key"
    key_file.parent.mkdir()
    shutil.copy2(data_dir / "log.key", key_file)
    mount_point = tmp_path / "unmounted"
    mount_point.mkdir()

    stderr = _refused(serve, mount_point, "--key-file", str(key_file))
    assert "a fork" in stderr and "--new-log" in stderr
    assert sorted(p.name for p in mount_point.iterdir()) == [LOCK_FILE]

    # Asked for explicitly, a new log is made there; asked again, it is refused.
    proc = serve(mount_point, "--key-file", str(key_file), "--new-log")
    assert proc.vkey == vkey
    assert proc.terminate() == 0
    assert "already holds a log" in _refused(
        serve, mount_point, "--key-file", str(key_file), "--new-log"
    )


def test_serve_refuses_a_restored_backup_without_log_key(
    serve: Serve, served: tuple[Path, str], tmp_path: Path
) -> None:
    data_dir, vkey = served
    restored = tmp_path / "restored"  # what a backup holds: db/, log.vkey, checkpoint.note
    restored.mkdir()
    shutil.copytree(data_dir / "db", restored / "db")
    shutil.copy2(data_dir / "log.vkey", restored / "log.vkey")
    vkey_stat = (restored / "log.vkey").stat()

    stderr = _refused(serve, restored)

    assert "log.key missing: put the log's signing key back" in stderr
    assert "--key-file" in stderr
    assert not (restored / "log.key").exists(), "a new key was generated"
    assert (restored / "log.vkey").read_text().strip() == vkey
    assert (restored / "log.vkey").stat().st_mtime_ns == vkey_stat.st_mtime_ns

    proc = serve(restored, "--key-file", str(data_dir / "log.key"))  # the key put back
    assert proc.size_at_start == 100
    assert not (restored / "log.key").exists()


def test_serve_refuses_a_log_vkey_of_another_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    RunningLog(data_dir).stop()
    other = Ed25519Signer.generate("sealog.localhost/log").verifier().vkey
    (data_dir / "log.vkey").write_text(other + "\n")

    with pytest.raises(DataFolderError, match=r"log\.vkey is another key"):
        LogServer.open(data_dir)

    assert (data_dir / "log.vkey").read_text().strip() == other, "log.vkey was rewritten"


# --- item 3: one server per data folder -----------------------------------------------
def test_second_serve_on_one_folder_refuses(serve: Serve, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = serve(data_dir)

    second = serve(data_dir, wait=False)
    assert second.wait_exit() == 1
    assert f"{data_dir} is already served by pid {first.pid}" in second.stderr
    assert not second.port

    with LogClient(first.target, first.vkey) as client:  # the first one is unharmed
        assert client.append_batch([b"a", b"b"]).entries[1].index == 1
    fsck = run_sealog("fsck", str(data_dir), "--vkey", first.vkey, cwd=tmp_path)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr  # read-only tools need no lock


def test_the_lock_is_held_while_serving_and_released_on_stop(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    log = RunningLog(data_dir)
    try:
        with pytest.raises(DataFolderInUseError, match=f"already served by pid {os.getpid()}"):
            LogServer.open(data_dir)
    finally:
        log.stop()
    RunningLog(data_dir).stop()  # released: it opens again


def test_a_refused_start_releases_the_lock(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    RunningLog(data_dir).stop()
    with pytest.raises(StartupCheckError):
        LogServer.open(data_dir, origin="other.example/log")
    RunningLog(data_dir).stop()


def test_a_start_that_fails_late_leaves_no_writer_behind_its_released_lock(
    tmp_path: Path,
) -> None:
    import threading

    from sealog.client.cosignature import Cosigner

    data_dir = tmp_path / "data"
    witness = Cosigner.generate("witness.example/w1").verifier()
    with pytest.raises(ValueError, match="interval_s"):  # the pusher starts last, and refuses
        LogServer.open(
            data_dir,
            witnesses=[witness],
            push_witnesses=["http://127.0.0.1:9/add-checkpoint"],
            push_witness_interval_s=0,
        )

    alive = {t.name for t in threading.enumerate()}
    assert not alive & {"sealog-sequencer", "sealog-grpc"}, alive
    RunningLog(data_dir).stop()  # the folder is free, and its storage closed


# --- item 17: the folder is its owner's -------------------------------------------------
def test_new_data_folder_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        data_dir = tmp_path / "data"
        RunningLog(data_dir).stop()
    finally:
        os.umask(old)
    modes = {
        str(p.relative_to(tmp_path)): stat.S_IMODE(p.stat().st_mode)
        for p in [data_dir, *data_dir.rglob("*")]
    }
    assert modes == {
        "data": 0o700,
        "data/db": 0o700,
        "data/db/data.mdb": 0o600,
        "data/db/lock.mdb": 0o600,
        "data/log.key": 0o600,
        "data/log.vkey": 0o600,
        f"data/{LOCK_FILE}": 0o600,
    }


def test_serve_warns_about_a_folder_others_can_read(serve: Serve, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve(data_dir).terminate()
    data_dir.chmod(0o755)

    proc = serve(data_dir)
    assert proc.terminate() == 0

    assert f"{data_dir} (mode 0755)" in proc.stderr
    assert f"chmod 700 {data_dir}" in proc.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o755, "the mode was changed silently"
