"""Tampering with a copy of a data folder is caught, and the place is named.

Each case copies a populated, cleanly stopped log and changes one thing in
its LMDB tables (layout: docs/storage.md) as a disk fault or an intruder with
root would. ``sealog fsck`` must exit 2 and name the table and index; where the
cheap start-up self-check applies (the frontier hashes, the checkpoint, the
number of leaves, the origin and format) ``sealog serve`` must refuse to start,
name the mismatch, and leave the folder untouched. Corruption the self-check
does not read is still never accepted by a verifying client.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import lmdb
import pytest
from e2e_support import RunningLog, Serve, run_sealog

from sealog.client.errors import VerificationError
from sealog.client.log_client import LogClient
from sealog.client.proof import NodeID
from sealog.server.lmdb_layout import GROUP_NODES, hash_location, stored_before
from sealog.server.storage import DIGEST_BYTES, FORMAT_VERSION

_U64 = struct.Struct(">Q")
BATCHES = (5, 8, 8)
SIZE = sum(BATCHES)  # 21 = 0b10101: the frontier is node(4, 0), node(2, 4), leaf 20
# node(2, 4) is not stored (docs/storage.md): it is recomputed from leaf hashes 16..19.
LAST = SIZE - 1


@dataclass(frozen=True)
class Pristine:
    data_dir: Path
    vkey: str


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    """A log of SIZE entries (with idempotency keys) appended in BATCHES, cleanly stopped."""
    data_dir = tmp_path_factory.mktemp("tamper") / "pristine"
    running = RunningLog(data_dir)
    try:
        client = running.client()
        n = 0
        for batch in BATCHES:
            client.append_batch([f"event {n + i}".encode() for i in range(batch)])
            n += batch
        vkey = running.verifier.vkey
    finally:
        running.stop()
    return Pristine(data_dir, vkey)


# --- editing a copy with the lmdb module -----------------------------------------------------
Edit = Callable[[Any], object]
"""Changes one thing in an open ``lmdb.Environment`` of a copy."""


def _db(env: Any, table: bytes) -> Any:
    if table in (b"hashes", b"leaf_index", b"idempotency", b"by_identity"):
        return env.open_db(table, create=False, dupsort=True, dupfixed=True)
    return env.open_db(table, create=False)


def where(level: int, index: int) -> str:
    """How fsck names the stored hash of node ``(level, index)``: its group and slot."""
    group, slot = hash_location(NodeID(level, index))
    return f"hashes[{group}][{slot}]"


def _hash_value(txn: Any, db: Any, level: int, index: int) -> tuple[Any, bytes]:
    """A cursor on the stored hash of node ``(level, index)`` (slot, then hash), and the value."""
    group, slot = hash_location(NodeID(level, index))
    cur = txn.cursor(db=db)
    assert cur.set_range_dup(_U64.pack(group), bytes([slot])), (level, index)
    value = bytes(cur.value())
    assert value[0] == slot, (level, index)
    return cur, value


def flip_hash(level: int, index: int, pos: int) -> Edit:
    """Flip the low bit of byte ``pos`` of the stored hash of node ``(level, index)``."""

    def edit(env: Any) -> None:
        db = _db(env, b"hashes")
        with env.begin(write=True) as txn:
            cur, value = _hash_value(txn, db, level, index)
            key = bytes(cur.key())
            changed = bytearray(value)
            changed[1 + pos] ^= 0x01
            assert cur.delete()
            assert txn.put(key, bytes(changed), db=db, dupdata=True)

    return edit


def delete_hash(level: int, index: int) -> Edit:
    def edit(env: Any) -> None:
        db = _db(env, b"hashes")
        with env.begin(write=True) as txn:
            cur, _ = _hash_value(txn, db, level, index)
            assert cur.delete()

    return edit


def put_hash(position: int, hash_: bytes) -> Edit:
    """Store ``hash_`` at stored-node ``position`` (docs/storage.md)."""
    group, slot = divmod(position, GROUP_NODES)
    return put(b"hashes", group, bytes([slot]) + hash_)


def _key(key: int | bytes) -> bytes:
    return _U64.pack(key) if isinstance(key, int) else key


def flip(table: bytes, key: int | bytes, pos: int) -> Edit:
    """Flip the low bit of byte ``pos`` of one record's value."""

    def edit(env: Any) -> None:
        db = _db(env, table)
        with env.begin(write=True) as txn:
            value = txn.get(_key(key), db=db)
            assert value is not None, (table, key)
            changed = bytearray(value)
            changed[pos] ^= 0x01
            txn.put(_key(key), bytes(changed), db=db)

    return edit


def delete(table: bytes, key: int | bytes) -> Edit:
    def edit(env: Any) -> None:
        db = _db(env, table)  # before the write txn: opening a table takes one too
        with env.begin(write=True) as txn:
            assert txn.delete(_key(key), db=db), (table, key)

    return edit


def put(table: bytes, key: int | bytes, value: bytes) -> Edit:
    def edit(env: Any) -> None:
        db = _db(env, table)
        with env.begin(write=True) as txn:
            txn.put(_key(key), value, db=db, dupdata=True)

    return edit


def copy_entry(src: int, dst: int) -> Edit:
    """Store a copy of entry ``src`` (a well-formed leaf) at index ``dst``."""

    def edit(env: Any) -> None:
        db = _db(env, b"entries")
        with env.begin(write=True) as txn:
            txn.put(_U64.pack(dst), bytes(txn.get(_U64.pack(src), db=db)), db=db)

    return edit


def forge_signature(env: Any) -> None:
    """Change one byte of the checkpoint's Ed25519 signature, keeping the note well-formed."""
    db = _db(env, b"meta")
    with env.begin(write=True) as txn:
        note = bytes(txn.get(b"checkpoint", db=db))
        text, _, sig_line = note.rstrip(b"\n").rpartition(b"\n")
        prefix, _, b64 = sig_line.rpartition(b" ")
        raw = bytearray(base64.b64decode(b64))
        raw[10] ^= 0x01  # past the 4-byte key ID: the signature itself
        forged = text + b"\n" + prefix + b" " + base64.b64encode(bytes(raw)) + b"\n"
        txn.put(b"checkpoint", forged, db=db)


def delete_first_leaf_index_record(env: Any) -> None:
    db = _db(env, b"leaf_index")
    with env.begin(write=True) as txn:
        cur = txn.cursor(db=db)
        assert cur.first()
        assert cur.delete()


def delete_first_identity_record(env: Any) -> None:
    db = _db(env, b"by_identity")
    with env.begin(write=True) as txn:
        cur = txn.cursor(db=db)
        assert cur.first()
        assert cur.delete()


def tampered_copy(pristine: Pristine, tmp_path: Path, edit: Edit) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(pristine.data_dir, target)
    env = lmdb.open(str(target / "db"), max_dbs=8)
    try:
        edit(env)
    finally:
        env.close()
    return target


def _digest(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / "db" / "data.mdb").read_bytes()).hexdigest()


def fsck_problems(data_dir: Path, vkey: str) -> list[str]:
    """Run ``sealog fsck``, which must exit 2; return its PROBLEM lines."""
    before = _digest(data_dir)
    proc = run_sealog("fsck", str(data_dir), "--vkey", vkey, cwd=data_dir.parent)
    assert proc.returncode == 2, f"fsck exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    assert _digest(data_dir) == before, "fsck changed the folder it checked"
    problems = [line for line in proc.stdout.splitlines() if line.startswith("PROBLEM: ")]
    assert problems, proc.stdout
    return problems


def refused(serve: Serve, data_dir: Path) -> str:
    """Start ``sealog serve``, which must exit non-zero without serving; return its stderr."""
    before = _digest(data_dir)
    proc = serve(data_dir, wait=False)
    try:
        proc.wait_ready()
    except RuntimeError:  # it exited before serving, as it must
        pass
    else:
        pytest.fail(f"sealog serve started on tampered storage:\n{proc.stdout}")
    assert proc.wait_exit() != 0
    assert not proc.port, "it printed an address"
    assert _digest(data_dir) == before, "refusing to start changed the stored log"
    return proc.stderr


# --- the cases ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    edit: Edit
    fsck: tuple[str, ...]
    """Fragments that must appear in fsck's PROBLEM lines (each in some line)."""
    serve: str | None = None
    """A fragment of serve's refusal, where the start-up self-check applies."""
    problems: int | None = None
    """The exact number of problems, where noise would hide the place."""


SEAMOG = b"seamog" + FORMAT_VERSION[6:]
ROOT_MISMATCH = f"tree: root recomputed from entries [0, {SIZE}) is"
SELF_CHECK_ROOT = f"stored tree of size {SIZE} has root"
BAD_SIGNATURE = "meta[checkpoint]: does not verify with the given key: invalid signature for key"

CASES: dict[str, Case] = {
    "identity-index-record-deleted": Case(
        delete_first_identity_record,
        ("by_identity: no record for 1 runs of leaves (first: the run from index 0)",),
        problems=1,
    ),
    "entry-version-byte": Case(
        flip(b"entries", 5, 0), ("entries[5]: leaf: version 0, want 1", ROOT_MISMATCH)
    ),
    "entry-timestamp": Case(
        flip(b"entries", 5, 1),
        (f"{where(0, 5)} level 0 (leaf hash of entries[5])", "entries[6]: accepted_at_ms"),
    ),
    "entry-identity-length": Case(flip(b"entries", 5, 10), ("entries[5]: leaf: ", ROOT_MISMATCH)),
    "entry-payload-length": Case(
        flip(b"entries", 5, 11), ("entries[5]: leaf: payload_length", ROOT_MISMATCH)
    ),
    "entry-payload": Case(
        flip(b"entries", 5, -1),
        (
            f"{where(0, 5)} level 0 (leaf hash of entries[5]): stored",
            f"{where(3, 0)} level 3 (node level 3 index 0, over entries[0..7])",
            ROOT_MISMATCH,
        ),
    ),
    "leaf-hash": Case(
        flip_hash(0, 5, 3),
        (
            f"{where(0, 5)} level 0 (leaf hash of entries[5]): stored",
            "points to 5, whose leaf hash differs",
        ),
    ),
    "leaf-hash-on-the-frontier": Case(
        flip_hash(0, LAST, 3), (f"{where(0, LAST)} level 0",), serve=SELF_CHECK_ROOT
    ),
    # Levels 1 and 2 are not stored: they are recomputed from these leaf hashes.
    "leaf-hash-under-a-recomputed-node": Case(
        flip_hash(0, 1, 7),
        (f"{where(0, 1)} level 0 (leaf hash of entries[1]): stored",),
    ),
    "leaf-hash-under-a-recomputed-node-on-the-frontier": Case(  # node(2, 4) is leaves 16..19
        flip_hash(0, 17, 7),
        (f"{where(0, 17)} level 0 (leaf hash of entries[17]): stored",),
        serve=SELF_CHECK_ROOT,
    ),
    "interior-level-3": Case(
        flip_hash(3, 0, 7),
        (f"{where(3, 0)} level 3 (node level 3 index 0, over entries[0..7])",),
        problems=1,
    ),
    "interior-level-3-second-block": Case(
        flip_hash(3, 1, 31),
        (f"{where(3, 1)} level 3 (node level 3 index 1, over entries[8..15])",),
        problems=1,
    ),
    "interior-level-4-on-the-frontier": Case(
        flip_hash(4, 0, 7),
        (f"{where(4, 0)} level 4 (node level 4 index 0, over entries[0..15])",),
        serve=SELF_CHECK_ROOT,
        problems=1,
    ),
    "checkpoint-root-line": Case(
        flip(b"meta", b"checkpoint", len("sealog.localhost/log\n21\n") + 3),
        (BAD_SIGNATURE,),
        serve="stored checkpoint does not verify with key sealog.localhost/log+",
        problems=1,
    ),
    "checkpoint-size-line": Case(
        flip(b"meta", b"checkpoint", len("sealog.localhost/log\n2")),  # 21 -> 20
        (BAD_SIGNATURE,),
        serve="stored checkpoint does not verify with key sealog.localhost/log+",
        problems=1,
    ),
    "checkpoint-signature": Case(
        forge_signature,
        (BAD_SIGNATURE,),
        serve="stored checkpoint does not verify with key sealog.localhost/log+",
        problems=1,
    ),
    "origin": Case(
        flip(b"meta", b"origin", 3),
        ("meta[origin]: b'seamog.localhost/log', but the signed checkpoint's origin is",),
        serve="this log's origin is 'seamog.localhost/log', not 'sealog.localhost/log'",
        problems=1,
    ),
    "origin-deleted": Case(
        delete(b"meta", b"origin"),
        ("meta[origin]: missing",),
        serve="this log's origin is '', not 'sealog.localhost/log'",
        problems=1,
    ),
    "format": Case(
        flip(b"meta", b"format", 3),
        (f"meta[format]: {SEAMOG!r}, want {FORMAT_VERSION!r}",),
        serve=f"storage format {SEAMOG!r}, want {FORMAT_VERSION!r}",
        problems=1,
    ),
    "format-of-an-older-layout": Case(
        put(b"meta", b"format", b"sealog-lmdb-2"),
        (f"meta[format]: b'sealog-lmdb-2', want {FORMAT_VERSION!r} (another storage format",),
        serve=f"storage format b'sealog-lmdb-2', want {FORMAT_VERSION!r}",
        problems=1,
    ),
    "trailing-entry-deleted": Case(
        delete(b"entries", LAST),
        (f"entries: {LAST} leaves stored, but the signed checkpoint is for {SIZE}",),
        serve=f"storage holds {LAST} leaves but the signed checkpoint is for {SIZE}",
    ),
    "middle-entry-deleted": Case(delete(b"entries", 7), ("entries[7..7]: missing",), problems=1),
    "middle-entry-and-its-hashes-deleted": Case(
        lambda env: (
            delete(b"entries", 7)(env),
            delete_hash(0, 7)(env),
            delete_hash(3, 0)(env),
        ),
        (
            "entries[7..7]: missing",
            f"{where(0, 7)} (leaf hash of the missing entries[7]): missing too",
        ),
        problems=2,
    ),
    "stored-hash-deleted": Case(
        delete_hash(3, 0),
        (f"{where(3, 0)} level 3 (node level 3 index 0, over entries[0..7]): missing",),
        problems=1,
    ),
    "leaf-hash-deleted": Case(
        delete_hash(0, 9),
        (f"{where(0, 9)} level 0 (leaf hash of entries[9]): missing",),
    ),
    "hash-stored-twice": Case(
        put_hash(stored_before(9), b"\x00" * 32),
        (f"{where(0, 9)}: a second value in the same slot",),
    ),
    "entry-beyond-the-checkpoint": Case(
        lambda env: (copy_entry(LAST, SIZE)(env), put_hash(stored_before(SIZE), b"\x00" * 32)(env)),
        (f"entries[{SIZE}..{SIZE}]: stored beyond the signed checkpoint",),
        serve=f"storage holds {SIZE + 1} leaves but the signed checkpoint is for {SIZE}",
    ),
    "entry-with-a-malformed-key": Case(
        put(b"entries", b"\x00\x00\x05", b"junk"),
        ("entries: a record with a malformed key",),
        serve="entries: the last record's key: 000005 is not an 8-byte index",
        problems=1,
    ),
    "leaf-index-beyond-the-log": Case(
        # key: 2 bytes of the leaf hash; value: its next 4 bytes, then the index
        put(b"leaf_index", b"\xab" * 2, b"\xab" * 4 + _U64.pack(50)),
        ("leaf_index[abababababab]: points to 50, beyond the stored leaves",),
        problems=1,
    ),
    "leaf-index-record-deleted": Case(
        delete_first_leaf_index_record, ("leaf_index: no record for 1 leaves",), problems=1
    ),
    "idempotency-beyond-the-log": Case(
        # key: 2 bytes of the key digest; value: its other bytes, then the index
        put(b"idempotency", b"\xcd" * 2, b"\xcd" * (DIGEST_BYTES - 2) + _U64.pack(50)),
        (f"idempotency[{'cd' * DIGEST_BYTES}]: points to 50, beyond the stored leaves",),
        problems=1,
    ),
}


@pytest.mark.slow
def test_the_untouched_copy_passes_fsck_and_serves(
    pristine: Pristine, serve: Serve, tmp_path: Path
) -> None:
    data_dir = tampered_copy(pristine, tmp_path, lambda env: None)

    proc = run_sealog("fsck", str(data_dir), "--vkey", pristine.vkey, cwd=tmp_path)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok: {SIZE} entries" in proc.stdout
    server = serve(data_dir)
    assert server.vkey == pristine.vkey
    assert f"checkpoint:   size {SIZE}," in server.stdout


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_fsck_names_the_place(pristine: Pristine, tmp_path: Path, name: str) -> None:
    case = CASES[name]
    data_dir = tampered_copy(pristine, tmp_path, case.edit)

    problems = fsck_problems(data_dir, pristine.vkey)

    for fragment in case.fsck:
        assert any(fragment in p for p in problems), f"{fragment!r} not in {problems}"
    if case.problems is not None:
        assert len(problems) == case.problems, problems


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.serve is not None])
def test_serve_refuses_and_names_the_mismatch(
    pristine: Pristine, serve: Serve, tmp_path: Path, name: str
) -> None:
    case = CASES[name]
    assert case.serve is not None
    data_dir = tampered_copy(pristine, tmp_path, case.edit)

    stderr = refused(serve, data_dir)

    assert case.serve in stderr, stderr


def test_clients_never_accept_what_the_self_check_does_not_read(
    pristine: Pristine, serve: Serve, tmp_path: Path
) -> None:
    """The self-check reads the frontier only; an altered old entry still fails verification."""
    data_dir = tampered_copy(pristine, tmp_path, flip(b"entries", 5, -1))
    server = serve(data_dir)

    with LogClient(server.target, pristine.vkey, timeout=10) as client:
        checkpoint = client.checkpoint()
        with pytest.raises(VerificationError):
            client.entry_and_proof(5, checkpoint)
        with pytest.raises(VerificationError):
            list(client.entries(checkpoint=checkpoint))
        client.entry_and_proof(4, checkpoint)  # its neighbours still prove


def test_clients_never_accept_a_node_recomputed_from_a_damaged_leaf_hash(
    pristine: Pristine, serve: Serve, tmp_path: Path
) -> None:
    """Nodes of levels 1 and 2 are not stored: a proof that needs one recomputes it from
    the stored leaf hashes, so a damaged leaf hash is caught by every proof it feeds."""
    data_dir = tampered_copy(pristine, tmp_path, flip_hash(0, 1, 7))
    server = serve(data_dir)  # leaf 1 is not on the frontier the self-check reads

    with LogClient(server.target, pristine.vkey, timeout=10) as client:
        checkpoint = client.checkpoint()
        with pytest.raises(VerificationError):
            client.entry_and_proof(2, checkpoint)  # holds node(1, 0), from leaves 0 and 1
        with pytest.raises(VerificationError):
            client.entry_and_proof(5, checkpoint)  # holds node(2, 0), from leaves 0..3
        client.entry_and_proof(9, checkpoint)  # holds node(3, 0), stored and intact


def test_a_missing_entry_is_data_loss_not_a_wrong_answer(
    pristine: Pristine, serve: Serve, tmp_path: Path
) -> None:
    data_dir = tampered_copy(pristine, tmp_path, delete(b"entries", 7))
    server = serve(data_dir)

    with LogClient(server.target, pristine.vkey, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as info:
            client.entry_and_proof(7)
        assert info.value.code() == grpc.StatusCode.DATA_LOSS
        assert "entries: no leaf at index 7" in (info.value.details() or "")
        with pytest.raises(grpc.RpcError) as info:
            list(client.entries())
        assert info.value.code() == grpc.StatusCode.DATA_LOSS


# --- the start-up self-check ties the newest entry and its records to the signed tree -----
@pytest.mark.slow
@pytest.mark.parametrize(
    ("edit", "place"),
    [
        (flip(b"entries", LAST, -1), f"entries[{LAST}]"),
        (flip(b"entries", LAST, 1), f"entries[{LAST}]"),
        (flip(b"entries", LAST, 0), f"entries[{LAST}]"),
        (delete_hash(4, 0), "hashes: no stored hash for node level 4 index 0"),
        (put(b"entries", b"\x00\x00\x05", b"junk"), "entries"),
    ],
    ids=[
        "last-payload",
        "last-timestamp",
        "last-version-byte",
        "frontier-hash-record-deleted",
        "malformed-key",
    ],
)
def test_self_check_refuses_a_damaged_last_entry_or_frontier_record_as_evidence(
    pristine: Pristine, serve: Serve, tmp_path: Path, edit: Edit, place: str
) -> None:
    data_dir = tampered_copy(pristine, tmp_path, edit)

    stderr = refused(serve, data_dir)

    assert place in stderr
    assert "do not modify it" in stderr  # StartupCheckError's guidance for the operator
