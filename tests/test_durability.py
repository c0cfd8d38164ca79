"""Crashes and tampered storage, against the real `sealog serve` process.

- ``kill -9`` mid-load loses nothing that was acknowledged, rolls back no
  checkpoint anyone saw, and the log carries on.
- The server refuses to start on storage that does not match its own signed
  checkpoint, or with another key or origin, and leaves that storage untouched.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import lmdb
import pytest
from e2e_support import OpenLog, Serve, ServeProcess, recompute_root

from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.keyfile import write_private_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.proof import NodeID
from sealog.server.lmdb_layout import hash_location

pytestmark = pytest.mark.slow  # crashes and restarts sealog serve processes

CYCLES = 3
WRITERS = 6


@dataclass
class Ledger:
    """What the clients were told: every acknowledged (index, payload), every checkpoint."""

    acked: dict[int, bytes] = field(default_factory=dict)
    newest: SignedCheckpoint | None = None
    failures: list[BaseException] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    enough: threading.Event = field(default_factory=threading.Event)

    def record(self, indices: list[int], payloads: list[bytes], cp: SignedCheckpoint) -> None:
        with self.lock:
            for index, payload in zip(indices, payloads, strict=True):
                assert self.acked.setdefault(index, payload) == payload, f"index {index} reused"
            if self.newest is None or cp.checkpoint.size > self.newest.checkpoint.size:
                self.newest = cp


# gRPC codes a client may see when the server vanishes mid-call.
_CRASH_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def _writer(target: str, vkey: str, ledger: Ledger, tag: str, seed: int, start_at: int) -> None:
    rng = random.Random(seed)
    n = 0
    with LogClient(target, vkey, timeout=5, max_attempts=3) as client:
        while True:
            payloads = [f"{tag} n{n + i}".encode() for i in range(rng.choice([1, 1, 2, 5, 20]))]
            n += len(payloads)
            try:
                result = client.append_batch(payloads)
            except grpc.RpcError as e:
                if e.code() not in _CRASH_CODES:
                    ledger.failures.append(e)
                return  # the server is gone
            except BaseException as e:  # a verification failure is a test failure
                ledger.failures.append(e)
                return
            ledger.record([e.index for e in result.entries], payloads, result.checkpoint)
            if len(ledger.acked) >= start_at:
                ledger.enough.set()


def _check_restarted(proc: ServeProcess, vkey: str, ledger: Ledger) -> LogClient:
    """Everything acknowledged is there, no seen checkpoint was rolled back, roots agree."""
    assert proc.vkey == vkey, "the restarted log signs with another key"
    client = LogClient(proc.target, vkey, timeout=30)
    try:
        latest = client.checkpoint(trusted=ledger.newest)  # proves no rollback
        entries = list(client.entries(checkpoint=latest))
        assert recompute_root(entries) == (latest.checkpoint.size, latest.checkpoint.root_hash)
        assert f"size {latest.checkpoint.size}," in proc.stdout
        payloads = [e.parse().payload for e in entries]
        for index, payload in ledger.acked.items():
            assert index < len(payloads), f"acknowledged index {index} is gone"
            assert payloads[index] == payload, f"index {index} holds another payload"
        assert len(set(payloads)) == len(payloads), "an event was logged twice"
        times = [e.parse().accepted_at_ms for e in entries]
        assert times == sorted(times), "acceptance time went backwards across a restart"
    except BaseException:
        client.close()
        raise
    return client


def test_crash_mid_load_loses_nothing_acknowledged(serve: Serve, tmp_path: Path) -> None:
    """``kill -9`` at a random moment under load, CYCLES times, then SIGTERM under load."""
    data_dir = tmp_path / "data"
    rng = random.Random(6962)
    ledger = Ledger()
    proc = serve(data_dir)
    vkey = proc.vkey
    for cycle, how in enumerate(["kill"] * CYCLES + ["term"]):
        ledger.enough.clear()
        start_at = len(ledger.acked) + 200
        writers = [
            threading.Thread(
                target=_writer,
                args=(proc.target, vkey, ledger, f"c{cycle} w{w}", rng.random(), start_at),
            )
            for w in range(WRITERS)
        ]
        for w in writers:
            w.start()
        try:
            assert ledger.enough.wait(30), f"cycle {cycle}: the load never got going"
            # The moment of the crash is random; the load is known to be running.
            threading.Event().wait(rng.uniform(0.0, 0.3))
        finally:
            if how == "kill":
                proc.kill()
            else:
                rc = proc.terminate()
            for w in writers:
                w.join(60)
        assert not any(w.is_alive() for w in writers), "a writer hung after the stop"
        assert not ledger.failures, ledger.failures
        if how == "kill":
            assert proc.proc.returncode == -9
        else:
            assert rc == 0, proc.stderr
            assert "shutting down" in proc.stdout

        proc = serve(data_dir)
        client = _check_restarted(proc, vkey, ledger)
        with client:
            size = client.checkpoint().checkpoint.size
            receipt = client.append(f"after restart {cycle}".encode())
            assert receipt.index == size
            ledger.record([receipt.index], [f"after restart {cycle}".encode()], receipt.checkpoint)
    assert len(ledger.acked) >= (CYCLES + 1) * 200


# --- refusing storage that does not add up ------------------------------------------------
_U64 = struct.Struct(">Q")
LEAVES = 10  # frontier: the node of leaves [0, 8) and the node of [8, 10)


@dataclass
class Populated:
    data_dir: Path
    vkey: str


@pytest.fixture
def populated(open_log: OpenLog, tmp_path: Path) -> Populated:
    """A log of LEAVES entries, cleanly stopped."""
    running = open_log(data_dir=tmp_path / "pristine")
    running.client().append_batch([f"entry {i}".encode() for i in range(LEAVES)])
    vkey = running.verifier.vkey
    running.stop()
    return Populated(running.data_dir, vkey)


def _copy(populated: Populated, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(populated.data_dir, target)
    return target


def _digest(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "db" / "data.mdb").read_bytes()).hexdigest()


def _edit_lmdb(data_dir: Path, table: bytes, index: int, value: bytes | None) -> None:
    """Overwrite (or with None, delete) one record, as a disk fault or an intruder would."""
    env = lmdb.open(str(data_dir / "db"), max_dbs=8, subdir=True)
    try:
        db = env.open_db(table, create=False)
        with env.begin(write=True) as txn:
            key = _U64.pack(index)
            if value is None:
                assert txn.delete(key, db=db)
            else:
                assert txn.get(key, db=db) is not None
                txn.put(key, value, db=db)
    finally:
        env.close()


def _invert_hash(data_dir: Path, level: int, index: int) -> None:
    """Invert every bit of the stored hash of node ``(level, index)`` (docs/storage.md)."""
    group, slot = hash_location(NodeID(level, index))
    env = lmdb.open(str(data_dir / "db"), max_dbs=8, subdir=True)
    try:
        db = env.open_db(b"hashes", create=False, dupsort=True, dupfixed=True)
        with env.begin(write=True) as txn:
            cur = txn.cursor(db=db)
            assert cur.set_range_dup(_U64.pack(group), bytes([slot]))
            value = bytes(cur.value())
            assert value[0] == slot
            assert cur.delete()
            txn.put(_U64.pack(group), value[:1] + bytes(b ^ 0xFF for b in value[1:]), db=db)
    finally:
        env.close()


def _refused(serve: Serve, data_dir: Path, *args: str) -> str:
    """Start `sealog serve`, which must exit non-zero without serving; return its stderr."""
    before = _digest(data_dir)
    proc = serve(data_dir, *args, wait=False)
    rc = proc.wait_exit()
    assert rc != 0, f"sealog serve started on bad storage:\n{proc.stdout}"
    assert not proc.port, "it printed an address"
    assert _digest(data_dir) == before, "refusing to start changed the stored log"
    assert "do not modify it" in proc.stderr  # the operator is told what to do
    return proc.stderr


def test_pristine_copy_starts(serve: Serve, populated: Populated, tmp_path: Path) -> None:
    """The control for the tests below: an untouched copy of the data folder serves."""
    proc = serve(_copy(populated, tmp_path, "copy"))

    assert proc.vkey == populated.vkey
    with LogClient(proc.target, proc.vkey) as client:
        cp = client.checkpoint()
        assert cp.checkpoint.size == LEAVES
        assert recompute_root(client.entries()) == (LEAVES, cp.checkpoint.root_hash)
        assert client.append(b"one more").index == LEAVES


def test_refuses_storage_missing_its_last_entry(
    serve: Serve, populated: Populated, tmp_path: Path
) -> None:
    data_dir = _copy(populated, tmp_path, "truncated")
    _edit_lmdb(data_dir, b"entries", LEAVES - 1, None)

    stderr = _refused(serve, data_dir)

    assert f"storage holds {LEAVES - 1} leaves but the signed checkpoint is for {LEAVES}" in stderr


@pytest.mark.parametrize(
    "node",
    [(0, LEAVES - 1), (3, 0)],
    ids=["node-8-10", "node-0-8"],  # the leaf hash node(1, 4) is recomputed from; a stored node
)
def test_refuses_storage_whose_tree_does_not_match_its_checkpoint(
    serve: Serve, populated: Populated, tmp_path: Path, node: tuple[int, int]
) -> None:
    data_dir = _copy(populated, tmp_path, "corrupt")
    _invert_hash(data_dir, *node)

    stderr = _refused(serve, data_dir)

    assert f"stored tree of size {LEAVES} has root" in stderr
    assert "the signed checkpoint says" in stderr


@pytest.mark.parametrize("name", ["sealog.localhost/log", "other.example/log"])
def test_refuses_another_signing_key(
    serve: Serve, populated: Populated, tmp_path: Path, name: str
) -> None:
    data_dir = _copy(populated, tmp_path, "rekeyed")
    other = Ed25519Signer.generate(name)
    key_file = tmp_path / "other.key"
    write_private_key_file(key_file, other.skey)

    stderr = _refused(serve, data_dir, "--key-file", str(key_file))

    verifier = other.verifier()
    assert f"does not verify with key {name}+{verifier.key_hash:08x}" in stderr


def test_refuses_another_origin(serve: Serve, populated: Populated, tmp_path: Path) -> None:
    data_dir = _copy(populated, tmp_path, "renamed")

    stderr = _refused(serve, data_dir, "--origin", "other.example/log")

    assert "this log's origin is 'sealog.localhost/log', not 'other.example/log'" in stderr
