"""A full disk: appends fail with UNAVAILABLE, nothing acknowledged is lost, reads go on,
and once space is freed the log continues and passes fsck.

The log runs on a small filesystem the test mounts (tmpfs with a size limit,
else a loop-mounted ext4 image); without permission to mount, the tests skip
and say why. A filler file created beforehand on the same filesystem is
deleted to free space.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_support import Serve, run_sealog
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.server.errors import UnavailableError
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem
from sealog.server.servicer import SERVICE_NAME

FS_BYTES = 8 << 20
FILLER_BYTES = 2 << 20
PAYLOAD = 1024
BATCH = 100
MAX_BATCHES = 2 * FS_BYTES // (PAYLOAD * BATCH)  # bounded: twice what could ever fit


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem mounted under tmp_path, unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (tmpfs or a loop device)")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    tried = _run("mount", "-t", "tmpfs", "-o", f"size={FS_BYTES},mode=0755", "tmpfs", str(mnt))
    if tried.returncode != 0:
        image = tmp_path / "fs.img"
        with image.open("wb") as f:
            f.truncate(FS_BYTES)
        mkfs = shutil.which("mkfs.ext4")
        loop = (
            _run(mkfs, "-q", "-F", "-m", "0", str(image))
            if mkfs
            else subprocess.CompletedProcess([], 1, "", "mkfs.ext4 not found")
        )
        if loop.returncode == 0:
            loop = _run("mount", "-o", "loop", str(image), str(mnt))
        if loop.returncode != 0:
            pytest.skip(
                "cannot mount a small filesystem here: tmpfs: "
                f"{tried.stderr.strip()}; loop ext4: {loop.stderr.strip()}"
            )
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))


def _fill(client: LogClient, acked: dict[int, bytes]) -> grpc.RpcError:
    """Append batches until one fails; return that failure."""
    for b in range(MAX_BATCHES):
        payloads = [f"b{b} e{i} ".encode().ljust(PAYLOAD, b".") for i in range(BATCH)]
        try:
            result = client.append_batch(payloads)
        except grpc.RpcError as e:
            return e
        for entry, payload in zip(result.entries, payloads, strict=True):
            acked[entry.index] = payload
    pytest.fail(f"{MAX_BATCHES} batches of {BATCH} x {PAYLOAD} B fit on an {FS_BYTES} B fs")


@pytest.mark.slow
def test_full_disk_is_unavailable_loses_nothing_and_recovers(
    small_fs: Path, serve: Serve, tmp_path: Path
) -> None:
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    proc = serve(small_fs / "data")
    acked: dict[int, bytes] = {}
    with LogClient(proc.target, proc.vkey, timeout=30, max_attempts=2) as client:
        error = _fill(client, acked)

        assert error.code() == grpc.StatusCode.UNAVAILABLE, error.details()
        assert "storage is full" in (error.details() or "")
        assert len(acked) > 1000
        # Reads go on: the checkpoint, every entry (verified) and proofs.
        full = client.checkpoint()
        entries = list(client.entries(checkpoint=full))
        assert full.checkpoint.size == len(entries) >= len(acked)
        for index, payload in acked.items():
            assert entries[index].parse().payload == payload, f"acknowledged entry {index} lost"
        client.inclusion_proof(max(acked), full)
        with grpc.insecure_channel(proc.target) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

        filler.unlink()
        after = client.append_batch([b"after the disk was freed"] * BATCH)

        assert after.entries[0].index == full.checkpoint.size
        client.checkpoint(trusted=full)  # the log only grew
    assert proc.terminate() == 0, proc.stderr
    checked = run_sealog("fsck", str(small_fs / "data"), "--vkey", proc.vkey, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok: " in checked.stdout
    # And it starts again, passing its self-check.
    again = serve(small_fs / "data")
    assert f"size {after.checkpoint.checkpoint.size}," in again.stdout


def test_map_growth_against_a_full_disk_fails_cleanly(small_fs: Path) -> None:
    """A map that must grow on a disk that cannot: UNAVAILABLE, no half-written batch."""
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * FILLER_BYTES)
    initial_map = 256 << 10
    storage = LmdbStorage(small_fs / "db", map_size=initial_map)
    signer = Ed25519Signer.generate("sealog.localhost/log")
    log = Log(storage, signer, signer.verifier(), "sealog.localhost/log")
    try:
        appended = 0
        failure: UnavailableError | None = None
        for b in range(MAX_BATCHES):
            items = [AppendItem(f"b{b} e{i} ".encode().ljust(PAYLOAD, b".")) for i in range(BATCH)]
            try:
                outcome = log.append(items, "")
            except UnavailableError as e:
                failure = e
                break
            assert outcome.end - outcome.start == BATCH
            appended += BATCH

        assert failure is not None, "the disk never filled up"
        assert "storage is full" in str(failure)
        assert storage.disk_usage() > initial_map, "the map never had to grow"
        with storage.read() as snap:
            assert snap.stored_size() == appended  # all of every batch, or none of it

        filler.unlink()
        outcome = log.append([AppendItem(b"after the disk was freed")], "")

        assert outcome.start == appended
    finally:
        log.close()
    try:
        with storage.read() as snap:
            report = fsck(snap, signer.verifier(), progress=False)
        assert report.ok, report.problems
        assert report.size == appended + 1
    finally:
        storage.close()
