"""Deferred indexing, the index by identity and time, and fsck of the storage layout.

The sequencer commits leaves with their node hashes, the key digests of the
leaves not indexed yet, and the runs of the index by identity; the leaf-hash
and idempotency indexes follow in flushes, and leaves not flushed yet live in
the in-memory index tail (docs/storage.md, "Deferred indexing").
"""

from __future__ import annotations

import json
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import pytest

from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Signer
from sealog.client.verify import verify_inclusion
from sealog.server import sequencer as sequencer_module
from sealog.server import storage as storage_module
from sealog.server.config import Settings
from sealog.server.fsck import FsckReport, fsck
from sealog.server.index_tail import IndexTail, StaleSnapshotError, find_leaf_hash
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem, AppendOutcome, idempotency_digest
from sealog.server.storage import (
    DIGEST_BYTES,
    StorageUnavailableError,
    WriteBatch,
    identity_prefix,
)

ORIGIN = "sealog.localhost/log"
SIGNER = Ed25519Signer.generate(ORIGIN)
_U64 = struct.Struct(">Q")
NEVER = Settings(index_flush_entries=10**9, index_flush_idle_s=3600.0)
"""Settings under which the log never flushes the indexes until it stops."""


class Clock:
    """A settable clock for the sequencer (ms)."""

    def __init__(self, now: int = 1_700_000_000_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@contextmanager
def opened(
    path: Path, settings: Settings | None = None, clock: Clock | None = None
) -> Iterator[Log]:
    storage = LmdbStorage(path)
    log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, settings, clock_ms=clock)
    try:
        yield log
    finally:
        log.close()
        storage.close()


def check(path: Path) -> FsckReport:
    storage = LmdbStorage(path, readonly=True)
    try:
        with storage.read() as snap:
            return fsck(snap, SIGNER.verifier(), progress=False)
    finally:
        storage.close()


def meta_upto(path: Path) -> tuple[int, int]:
    """(size, indexed_upto) as stored."""
    storage = LmdbStorage(path, readonly=True)
    try:
        with storage.read() as snap:
            return snap.size(), snap.indexed_upto()
    finally:
        storage.close()


def stored_leaf_hash(log: Log, index: int) -> bytes:
    with log.storage.read() as snap:
        return snap.read_node_hashes([(0, index)])[0]


def root_of(log: Log, size: int) -> bytes:
    with log.storage.read() as snap:
        tree = CompactRange()
        tree.extend(leaf_hash(leaf) for leaf in snap.leaves(0, size))
        return tree.root()


def keyed(prefix: str, n: int, tag: str = "") -> list[AppendItem]:
    return [AppendItem(f"{tag}{prefix}{i}".encode(), f"{prefix}{i}") for i in range(n)]


# --- the tail, before and after flushes -----------------------------------------------------
def test_lookups_find_leaves_in_the_tail_and_in_the_indexes(tmp_path: Path) -> None:
    settings = Settings(
        index_flush_entries=40, index_flush_chunk_entries=7, index_flush_idle_s=3600.0
    )
    with opened(tmp_path / "db", settings) as log:
        first = log.append(keyed("a", 30), "svc")
        tail = log._sequencer.index_tail
        assert tail.low == 0, "flushed too early"
        second = log.append(keyed("b", 30), "svc")  # 60 waiting: a flush starts
        deadline = time.monotonic() + 10
        while tail.low == 0:
            assert time.monotonic() < deadline, "the flush never finished"
            time.sleep(0.01)
        assert tail.low == 60
        third = log.append(keyed("c", 5), "svc")  # in the tail
        size = third.end
        # Every leaf is found by hash, from the indexes or the tail, with a proof.
        root = root_of(log, size)
        for index in range(size):
            found, proof = log.inclusion_proof_by_hash(stored_leaf_hash(log, index), size)
            assert found == index
            verify_inclusion(index, size, stored_leaf_hash(log, index), proof, root)
        # Retries return the original leaves, from the indexes and from the tail.
        for outcome, prefix in ((first, "a"), (second, "b"), (third, "c")):
            again = log.append(keyed(prefix, len(outcome.entries)), "svc")
            assert again.end == again.start == size  # the log did not grow
            assert [e.index for e in again.entries] == [e.index for e in outcome.entries]
            assert [e.leaf for e in again.entries] == [e.leaf for e in outcome.entries]
            assert all(e.duplicate for e in again.entries)
        # The same key from another identity is another entry.
        other = log.append(keyed("a", 1), "other")
        assert not other.entries[0].duplicate
    assert check(tmp_path / "db").ok


def test_a_leaf_hash_seen_twice_resolves_to_the_smallest_index(tmp_path: Path) -> None:
    clock = Clock()
    settings = Settings(index_flush_entries=3, index_flush_chunk_entries=2)
    with opened(tmp_path / "db", settings, clock) as log:
        twice = [AppendItem(b"same"), AppendItem(b"same")]  # same time: the same leaf
        a = log.append(twice, "svc")
        log.append([AppendItem(b"x%d" % i) for i in range(5)], "svc")
        b = log.append(twice, "svc")  # in the tail, while 0 and 1 are indexed
        assert a.entries[0].leaf == b.entries[1].leaf
        deadline = time.monotonic() + 10
        while log._sequencer.index_tail.low < 7:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        h = leaf_hash(a.entries[0].leaf)
        assert log.inclusion_proof_by_hash(h, b.end)[0] == 0
        assert log.inclusion_proof_by_hash(h, 1)[0] == 0
    report = check(tmp_path / "db")
    assert report.ok, report.problems


def test_a_snapshot_older_than_a_flush_is_not_trusted_with_the_newer_tail(
    tmp_path: Path,
) -> None:
    """The view of the tail is taken after the snapshot; a flush in between is noticed."""
    storage = LmdbStorage(tmp_path / "db")
    try:
        tree = CompactRange()
        tail = IndexTail(0)
        hashes = []
        with storage.write() as w:
            for i in range(4):
                h = tree.append(leaf_hash(b"%d" % i))
                w.append_leaf(i, b"%d" % i, h)
                tail.active.add(i, h[0], None)
                hashes.append(h[0])
        with storage.read() as old:
            # A flush of leaves [0, 4) commits and the sequencer forgets them...
            frozen = tail.freeze(4)
            with storage.write() as w:
                w.index_leaves(list(frozen.leaf_hash_pairs()), [])
                w.set_indexed_upto(4)
            tail.flushed()
            # ... a reader of the old snapshot must not conclude "not found".
            with pytest.raises(StaleSnapshotError):
                find_leaf_hash(old, tail.view, hashes[2], 4)
        with storage.read() as new:
            assert find_leaf_hash(new, tail.view, hashes[2], 4) == 2
            assert find_leaf_hash(new, tail.view, hashes[2], 2) is None
    finally:
        storage.close()


@pytest.mark.slow
def test_by_hash_lookups_under_load_never_miss_a_committed_leaf(tmp_path: Path) -> None:
    """Readers race appends and small flushes: a leaf in the tree is always found."""
    settings = Settings(index_flush_entries=50, index_flush_chunk_entries=10)
    with opened(tmp_path / "db", settings) as log:
        log.append(keyed("seed", 10), "svc")
        stop = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            n = 0
            while not stop.is_set():
                log.append(keyed(f"w{n}-", 7), "svc")
                n += 1

        def reader() -> None:
            try:
                while not stop.is_set():
                    size = int(log.latest_checkpoint().split(b"\n")[1])
                    index = size - 1 - (size * 7919) % min(size, 97)
                    found, _ = log.inclusion_proof_by_hash(stored_leaf_hash(log, index), size)
                    assert found == index
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader) for _ in range(3)
        ]
        for t in threads:
            t.start()
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors
        assert log._sequencer.index_tail.low > 50, "no flush ran"
    assert check(tmp_path / "db").ok


# --- kill -9 between the acknowledgement and the flush -----------------------------------------
_CHILD = """
import json, os, signal, sys
from sealog.client.note import Ed25519Signer
from sealog.server.config import Settings
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem
signer = Ed25519Signer.from_skey(sys.argv[2])
storage = LmdbStorage(sys.argv[1])
settings = Settings(index_flush_entries=10**9, index_flush_idle_s=3600.0)
log = Log(storage, signer, signer.verifier(), sys.argv[3], settings)
acked = []
for b in range(3):
    items = [AppendItem(b"payload %d/%d" % (b, i), "key-%d-%d" % (b, i)) for i in range(50)]
    out = log.append(items, "spiffe://example.org/ns/ci/sa/deployer")
    acked += [[e.index, e.leaf.hex(), "key-%d-%d" % (b, i)] for i, e in enumerate(out.entries)]
print(json.dumps(acked), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_kill_9_between_ack_and_flush_loses_no_index(tmp_path: Path) -> None:
    db = tmp_path / "db"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(db), SIGNER.skey, ORIGIN],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    acked = json.loads(proc.stdout)
    assert len(acked) == 150
    size, upto = meta_upto(db)
    assert (size, upto) == (150, 0), "the acknowledged leaves were indexed before the kill"
    report = check(db)  # an unflushed tail is not a problem
    assert report.ok, report.problems
    identity = "spiffe://example.org/ns/ci/sa/deployer"
    with opened(db, NEVER) as log:
        # Right after the restart: retries return the original leaves ...
        retries = [
            AppendItem(Leaf.parse(bytes.fromhex(leaf)).payload, key) for _, leaf, key in acked
        ]
        again = log.append(retries, identity)
        assert again.end == 150
        assert [(e.index, e.leaf.hex()) for e in again.entries] == [
            (index, leaf) for index, leaf, _ in acked
        ]
        assert all(e.duplicate for e in again.entries)
        # ... and every leaf is found by its hash.
        for index, leaf, _ in acked:
            assert log.inclusion_proof_by_hash(leaf_hash(bytes.fromhex(leaf)), 150)[0] == index
        assert len(log.find_by_identity(identity, 0, 2**64 - 1, -1, 150, 1000)) == 150
    assert meta_upto(db) == (150, 150)  # a clean stop flushes
    assert check(db).ok


# --- back-pressure when flushes fail -------------------------------------------------------
class _FlakyIndexes:
    """A storage whose index flushes fail while ``fail`` is set."""

    def __init__(self, inner: LmdbStorage) -> None:
        self.inner = inner
        self.fail = True

    def read(self) -> Any:
        return self.inner.read()

    @contextmanager
    def write(self) -> Iterator[WriteBatch]:
        owner = self

        class Batch:
            def __init__(self, w: WriteBatch) -> None:
                self._w = w

            def __getattr__(self, name: str) -> Any:
                return getattr(self._w, name)

            def index_leaves(self, *args: Any) -> None:
                if owner.fail:
                    raise StorageUnavailableError("storage is full (test)")
                self._w.index_leaves(*args)

        with self.inner.write() as w:
            yield Batch(w)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_appends_wait_while_too_many_leaves_are_unindexed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sequencer_module, "_FLUSH_RETRY_S", 0.05)
    storage = _FlakyIndexes(LmdbStorage(tmp_path / "db"))
    settings = Settings(
        index_flush_entries=10, index_flush_chunk_entries=4, max_unindexed_entries=30
    )
    log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, settings)
    try:
        for b in range(3):
            log.append(keyed(f"k{b}-", 10), "svc")  # accepted while the flush fails
        result: list[AppendOutcome] = []
        late = threading.Thread(target=lambda: result.append(log.append(keyed("late", 1), "svc")))
        late.start()
        late.join(0.5)
        assert late.is_alive(), "an append went through with 30 leaves unindexed"
        assert log._sequencer.index_tail.low == 0
        storage.fail = False
        late.join(10)
        assert result and result[0].start == 30
        retry = log.append(keyed("k1-", 10), "svc")
        assert [e.index for e in retry.entries] == list(range(10, 20))
    finally:
        log.close()
        storage.close()
    assert meta_upto(tmp_path / "db") == (31, 31)
    assert check(tmp_path / "db").ok


# --- the index by identity and time --------------------------------------------------------------
def _populate(log: Log, clock: Clock) -> dict[str, list[tuple[int, int]]]:
    """Interleaved appends by three identities at known times: identity -> [(index, ms)]."""
    seen: dict[str, list[tuple[int, int]]] = {"alice": [], "bob": [], "carol": []}
    for step in range(12):
        clock.now += 1000 if step % 3 else 0  # some batches share a millisecond
        who = ("alice", "bob", "alice", "carol")[step % 4]
        out = log.append([AppendItem(b"%s %d %d" % (who.encode(), step, i)) for i in range(3)], who)
        seen[who] += [(e.index, clock.now) for e in out.entries]
    return seen


def test_find_by_identity_pages_and_time_bounds(tmp_path: Path) -> None:
    clock = Clock()
    with opened(tmp_path / "db", NEVER, clock) as log:
        seen = _populate(log, clock)
        size = int(log.latest_checkpoint().split(b"\n")[1])
        everything = 2**64 - 1
        for who, expected in seen.items():
            found = log.find_by_identity(who, 0, everything, -1, size, 1000)
            assert [i for i, _ in found] == [i for i, _ in expected]
            for index, leaf in found:
                parsed = Leaf.parse(leaf)
                assert parsed.identity == who
                assert (index, parsed.accepted_at_ms) in expected
        # Pages of 2, each continuing after the last index of the previous one.
        pages: list[list[int]] = []
        after = -1
        while True:
            page = log.find_by_identity("alice", 0, everything, after, size, 2)
            if not page:
                break
            pages.append([i for i, _ in page])
            after = page[-1][0]
        assert all(len(p) <= 2 for p in pages)
        assert [i for p in pages for i in p] == [i for i, _ in seen["alice"]]
        # Time bounds are inclusive, and pages still work inside them.
        times = sorted({ms for _, ms in seen["alice"]})
        lo, hi = times[1], times[-2]
        want = [i for i, ms in seen["alice"] if lo <= ms <= hi]
        assert [i for i, _ in log.find_by_identity("alice", lo, hi, -1, size, 1000)] == want
        page = log.find_by_identity("alice", lo, hi, want[1], size, 1000)
        assert [i for i, _ in page] == want[2:]
        assert log.find_by_identity("alice", hi + 1, hi, -1, size, 10) == []
        # Only leaves below tree_size; an unknown identity finds nothing.
        small = seen["alice"][4][0]
        assert [i for i, _ in log.find_by_identity("alice", 0, everything, -1, small, 100)] == [
            i for i, _ in seen["alice"] if i < small
        ]
        assert log.find_by_identity("mallory", 0, everything, -1, size, 10) == []
        assert log.find_by_identity("alice", 0, everything, size - 1, size, 10) == []


def test_find_by_identity_tells_colliding_prefixes_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every identity under one prefix, results are still exactly one identity's."""
    collide: Callable[[str], bytes] = lambda identity: b"\x00" * 8  # noqa: E731
    for module in (sequencer_module, storage_module):
        monkeypatch.setattr(module, "identity_prefix", collide)
    monkeypatch.setattr("sealog.server.log.identity_prefix", collide)
    clock = Clock()
    with opened(tmp_path / "db", NEVER, clock) as log:
        seen = _populate(log, clock)
        size = int(log.latest_checkpoint().split(b"\n")[1])
        for who, expected in seen.items():
            found = log.find_by_identity(who, 0, 2**64 - 1, -1, size, 1000)
            assert [i for i, _ in found] == [i for i, _ in expected]
            page = log.find_by_identity(who, 0, 2**64 - 1, expected[0][0], size, 2)
            assert [i for i, _ in page] == [i for i, _ in expected[1:3]]


def test_appended_leaves_are_the_leaf_format(tmp_path: Path) -> None:
    clock = Clock(1_234_567_890_123)
    with opened(tmp_path / "db", NEVER, clock) as log:
        out = log.append([AppendItem(b""), AppendItem(b"x" * 300)], "spiffe://a/b")
        for entry, payload in zip(out.entries, [b"", b"x" * 300], strict=True):
            assert entry.leaf == Leaf(clock.now, "spiffe://a/b", payload).to_bytes()


# --- fsck of the layout -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A log of 21 keyed leaves by two identities; 16 of them indexed, 5 in the tail."""
    db = tmp_path_factory.mktemp("layout") / "db"
    clock = Clock()
    facts: dict[str, Any] = {}
    settings = Settings(
        index_flush_entries=16, index_flush_chunk_entries=5, index_flush_idle_s=3600.0
    )
    with opened(db, settings, clock) as log:
        log.append(keyed("a", 8), "alice")
        clock.now += 5
        log.append(keyed("b", 8), "bob")
        deadline = time.monotonic() + 10
        while log._sequencer.index_tail.low < 16:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        clock.now += 5
        log.append(keyed("c", 5), "alice")
        # Stop without the final flush, as a crash would.
        log._sequencer._flush_everything = lambda: None  # type: ignore[method-assign]
    assert meta_upto(db) == (21, 16)
    facts["alice"] = identity_prefix("alice")
    return db, facts


Edit = Callable[[Any], None]


def _edited(src: Path, dst: Path, edit: Edit) -> Path:
    dst.mkdir()
    for name in ("data.mdb", "lock.mdb"):
        (dst / name).write_bytes((src / name).read_bytes())
    env = lmdb.open(str(dst), max_dbs=8)
    try:
        edit(env)
    finally:
        env.close()
    return dst


def _txn_edit(table: bytes, fn: Callable[[Any, Any], None]) -> Edit:
    def edit(env: Any) -> None:
        db = env.open_db(table, create=False)
        with env.begin(write=True) as txn:
            fn(txn, db)

    return edit


def _pending_record(change: Callable[[list[tuple[int, bytes]]], bytes]) -> Edit:
    """Replace the kept key digests of the tail's batch (leaves 16..20) by
    ``change(items)``, ``items`` their ``(leaf index, digest)`` pairs."""

    def fn(txn: Any, db: Any) -> None:
        key = _U64.pack(16)
        value = bytes(txn.get(key, db=db))
        step = 8 + DIGEST_BYTES
        items = [
            (_U64.unpack(value[i : i + 8])[0], value[i + 8 : i + step])
            for i in range(0, len(value), step)
        ]
        txn.put(key, change(items), db=db)

    return _txn_edit(b"pending_digests", fn)


def _items(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(_U64.pack(i) + d for i, d in items)


def _identity_record(fn: Callable[[Any, Any, bytes, bytes], object], index: int) -> Edit:
    """Call ``fn(txn, db, key, value)`` with the by_identity record of the run from ``index``."""

    def edit(txn: Any, db: Any) -> None:
        for key, value in txn.cursor(db=db):
            if _U64.unpack(value[8:])[0] == index:
                fn(txn, db, bytes(key), bytes(value))
                return
        raise AssertionError(f"no by_identity record for a run from {index}")

    return _txn_edit(b"by_identity", edit)


def _dup_edit(table: bytes, fn: Callable[[Any, Any], None]) -> Edit:
    def edit(env: Any) -> None:
        db = env.open_db(table, create=False, dupsort=True, dupfixed=True)
        with env.begin(write=True) as txn:
            fn(txn, db)

    return edit


def _index_record_of(digest: bytes, index: int) -> tuple[bytes, bytes]:
    """The idempotency index record of ``digest`` naming leaf ``index``."""
    return digest[:2], digest[2:] + _U64.pack(index)


def _meta(key: bytes, value: bytes) -> Edit:
    return _txn_edit(b"meta", lambda txn, db: txn.put(key, value, db=db))


A3, A4, C1 = (idempotency_digest("alice", k) for k in ("a3", "a4", "c1"))

LAYOUT_CASES: dict[str, tuple[Edit, tuple[str, ...], int | None]] = {
    "identity-record-deleted": (
        _identity_record(lambda txn, db, k, v: txn.delete(k, v, db=db), 16),
        ("by_identity: no record for 1 runs of leaves (first: the run from index 16)",),
        1,
    ),
    "identity-record-moved-to-another-time": (
        _identity_record(
            lambda txn, db, k, v: (
                txn.delete(k, v, db=db),
                txn.put(k, _U64.pack(_U64.unpack(v[:8])[0] + 1) + v[8:], db=db),
            ),
            16,
        ),
        ("whose identity or time differs", "by_identity: no record for 1 runs of leaves"),
        2,
    ),
    "identity-record-inside-a-run": (
        _identity_record(lambda txn, db, k, v: txn.put(k, v[:8] + _U64.pack(3), db=db), 0),
        ("(1700000000000, 3): entries[2] has the same identity and time, so no run starts at 3",),
        1,
    ),
    "identity-record-beyond-the-log": (
        _txn_edit(
            b"by_identity", lambda txn, db: txn.put(b"\x01" * 8, b"\x00" * 8 + _U64.pack(99), db=db)
        ),
        ("points to 99, beyond the stored leaves",),
        1,
    ),
    "identity-record-of-another-identity": (
        _txn_edit(
            b"by_identity",
            lambda txn, db: txn.put(b"\x02" * 8, b"\x00" * 8 + _U64.pack(2), db=db),
        ),
        ("points to 2, whose identity or time differs",),
        1,
    ),
    "key-digest-used-twice": (  # leaf 6 also named by leaf 4's key
        _dup_edit(b"idempotency", lambda txn, db: txn.put(*_index_record_of(A4, 6), db=db)),
        ("points to 4 and to 6: the key was used twice", "points to 6, which has another key"),
        2,
    ),
    "key-digest-beyond-the-log": (
        _dup_edit(b"idempotency", lambda txn, db: txn.put(*_index_record_of(A3, 21), db=db)),
        (f"idempotency[{A3.hex()}]: points to 21, beyond the stored leaves",),
        1,
    ),
    "key-digest-record-malformed": (
        _dup_edit(b"idempotency", lambda txn, db: txn.put(b"\xee\xee", b"short", db=db)),
        ("idempotency[eeee73686f7274]: a malformed record",),
        1,
    ),
    "key-digest-used-twice-in-the-tail": (
        _pending_record(
            lambda items: _items([(i, items[2][1] if i == 20 else d) for i, d in items])
        ),
        ("pending_digests: leaf 20 has the same idempotency key digest as leaf 18",),
        1,
    ),
    "key-digest-in-the-tail-and-indexed-for-another-leaf": (
        _pending_record(lambda items: _items([(i, A3 if i == 17 else d) for i, d in items])),
        ("pending_digests: leaf 17 has the same idempotency key digest as leaf 3",),
        1,
    ),
    "kept-key-digests-truncated": (
        _pending_record(lambda items: _items(items)[:-8]),
        (
            f"pending_digests[16]: {5 * (8 + DIGEST_BYTES) - 8} bytes, want a multiple of "
            f"{8 + DIGEST_BYTES}",
        ),
        1,
    ),
    "kept-key-digests-out-of-order": (
        _pending_record(lambda items: _items(items[:2] + items[3:] + items[2:3])),
        ("pending_digests[16]: leaf 18 after leaf 20: not in order",),
        1,
    ),
    "indexed-upto-beyond-the-log": (
        _meta(b"indexed_upto", _U64.pack(22)),
        ("meta[indexed_upto]: 22, beyond the signed checkpoint's 21 leaves",),
        1,
    ),
    "size-differs": (
        _meta(b"size", _U64.pack(20)),
        ("meta[size]: 20, but the signed checkpoint is for 21",),
        1,
    ),
    "indexed-upto-raised-over-the-tail": (
        _meta(b"indexed_upto", _U64.pack(21)),
        (
            "leaf_index: no record for 5 leaves (first: index 16)",
            "idempotency: no record for 5 key digests (first: leaf 16)",
        ),
        2,
    ),
}


def test_the_populated_layout_passes_fsck(populated: tuple[Path, dict[str, Any]]) -> None:
    report = check(populated[0])
    assert report.ok, report.problems
    assert (report.size, report.indexed_upto) == (21, 16)


@pytest.mark.parametrize("name", list(LAYOUT_CASES))
def test_fsck_names_layout_damage(
    populated: tuple[Path, dict[str, Any]], tmp_path: Path, name: str
) -> None:
    edit, fragments, count = LAYOUT_CASES[name]
    db = _edited(populated[0], tmp_path / "copy", edit)

    report = check(db)

    for fragment in fragments:
        assert any(fragment in p for p in report.problems), (fragment, report.problems)
    if count is not None:
        assert len(report.problems) == count, report.problems


@pytest.mark.parametrize("name", ["size-differs", "indexed-upto-beyond-the-log"])
def test_the_log_refuses_a_bad_size_or_indexed_upto(
    populated: tuple[Path, dict[str, Any]], tmp_path: Path, name: str
) -> None:
    from sealog.server.log import StartupCheckError

    db = _edited(populated[0], tmp_path / "copy", LAYOUT_CASES[name][0])
    storage = LmdbStorage(db)
    try:
        with pytest.raises(StartupCheckError, match="meta"):
            Log(storage, SIGNER, SIGNER.verifier(), ORIGIN)
    finally:
        storage.close()


def test_a_retry_after_the_tail_was_rebuilt_is_exact(
    populated: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Leaves 16..20 are only in the hash records; reopening rebuilds their index tail."""
    db = _edited(populated[0], tmp_path / "copy", lambda env: None)
    with opened(db, NEVER) as log:
        assert log._sequencer.index_tail.low == 16
        again = log.append(keyed("c", 5) + keyed("a", 8), "alice")
        assert [e.index for e in again.entries] == list(range(16, 21)) + list(range(8))
        assert all(e.duplicate for e in again.entries)
        fresh = log.append(keyed("c", 1), "bob")  # another identity's key of the same name
        assert not fresh.entries[0].duplicate
        found = log.find_by_identity("alice", 0, 2**64 - 1, -1, 22, 100)
        assert [i for i, _ in found] == list(range(8)) + list(range(16, 21))
    assert check(db).ok


def test_idempotency_digests_are_indexed_or_kept_with_their_batch(
    populated: tuple[Path, dict[str, Any]],
) -> None:
    storage = LmdbStorage(populated[0], readonly=True)
    try:
        with storage.read() as snap:
            assert snap.find_idempotency(A3) == 3
            last = DIGEST_BYTES - 1
            assert snap.find_idempotency(A3[:last] + bytes([A3[last] ^ 1])) is None  # every byte
            assert snap.find_idempotency(C1) is None  # in the tail: not indexed yet ...
            tail = [idempotency_digest("alice", f"c{i}") for i in range(5)]
            # ... but kept with its batch until a flush indexes it
            assert list(snap.iter_pending_digests()) == list(enumerate(tail, start=16))
            assert [(i, d) for i, _, d in snap.iter_pending_index(15, 21)] == [
                (15, None),  # indexed: nothing kept
                *enumerate(tail, start=16),
            ]
    finally:
        storage.close()


def test_a_flush_drops_the_key_digests_it_indexed(
    populated: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    db = _edited(populated[0], tmp_path / "copy", lambda env: None)
    with opened(db, NEVER) as log:
        log.append(keyed("d", 3), "alice")  # kept too, in a second record
        assert isinstance(log.storage, LmdbStorage)
        with log.storage.read() as snap:
            assert [i for i, _ in snap.iter_pending_digests()] == list(range(16, 24))
    # a clean stop flushes: everything is in the index, nothing kept
    storage = LmdbStorage(db, readonly=True)
    try:
        with storage.read() as snap:
            assert snap.indexed_upto() == 24
            assert list(snap.iter_pending_digests()) == []
            assert snap.find_idempotency(C1) == 17
    finally:
        storage.close()
    assert check(db).ok


def test_the_index_by_identity_records_runs(populated: tuple[Path, dict[str, Any]]) -> None:
    """One record per run of consecutive leaves of one identity and time."""
    storage = LmdbStorage(populated[0], readonly=True)
    try:
        with storage.read() as snap:
            runs = [(prefix, index) for prefix, _, index in snap.iter_identity_index()]
    finally:
        storage.close()
    alice, bob = identity_prefix("alice"), identity_prefix("bob")
    assert sorted(runs) == sorted([(alice, 0), (bob, 8), (alice, 16)])


def test_a_run_goes_on_across_requests_batches_and_restarts(tmp_path: Path) -> None:
    clock = Clock()
    with opened(tmp_path / "db", NEVER, clock) as log:
        log.append([AppendItem(b"a0"), AppendItem(b"a1")], "alice")
        log.append([AppendItem(b"a2")], "alice")  # another batch, the same millisecond
    with opened(tmp_path / "db", NEVER, clock) as log:  # the same millisecond, restarted
        log.append([AppendItem(b"a3")], "alice")
        clock.now += 1
        log.append([AppendItem(b"a4")], "alice")  # a new time: a new run
        log.append([AppendItem(b"b0")], "bob")
        log.append([AppendItem(b"a5")], "alice")  # after bob's: a new run
        assert isinstance(log.storage, LmdbStorage)
        with log.storage.read() as snap:
            runs = sorted((index, ms) for _, ms, index in snap.iter_identity_index())
        assert runs == [(0, clock.now - 1), (4, clock.now), (5, clock.now), (6, clock.now)]
        found = log.find_by_identity("alice", 0, 2**64 - 1, -1, 7, 100)
        assert [i for i, _ in found] == [0, 1, 2, 3, 4, 6]
        for after in range(-1, 6):  # pages may start inside a run
            page = log.find_by_identity("alice", 0, 2**64 - 1, after, 7, 2)
            assert [i for i, _ in page] == [i for i in (0, 1, 2, 3, 4, 6) if i > after][:2]
        upto_3 = log.find_by_identity("alice", 0, 2**64 - 1, -1, 3, 100)  # a run cut by the size
        assert [i for i, _ in upto_3] == [0, 1, 2]
    assert check(tmp_path / "db").ok


def test_search_is_not_misled_by_records_inside_runs(
    populated: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A record that does not start a run (fsck names it) adds no duplicate, no stranger."""
    alice = identity_prefix("alice")

    def extra_records(txn: Any, db: Any) -> None:
        for key, value in list(txn.cursor(db=db)):
            if key == alice:
                ms = value[:8]
                txn.put(alice, ms + _U64.pack(_U64.unpack(value[8:])[0] + 2), db=db)
        txn.put(alice, _U64.pack(1_700_000_000_005) + _U64.pack(9), db=db)  # bob's run

    db = _edited(populated[0], tmp_path / "copy", _txn_edit(b"by_identity", extra_records))
    with opened(db, NEVER) as log:
        found = log.find_by_identity("alice", 0, 2**64 - 1, -1, 21, 100)
        assert [i for i, _ in found] == list(range(8)) + list(range(16, 21))
        page = log.find_by_identity("alice", 0, 2**64 - 1, 2, 21, 3)
        assert [i for i, _ in page] == [3, 4, 5]


def test_a_log_of_the_previous_format_is_refused_and_left_untouched(tmp_path: Path) -> None:
    from sealog.server.log import StartupCheckError

    env = lmdb.open(str(tmp_path / "db"), max_dbs=8)  # the tables of sealog-lmdb-2
    try:
        meta, entries, hashes = (env.open_db(name) for name in (b"meta", b"entries", b"hashes"))
        for name in (b"leaf_index", b"idempotency", b"by_identity"):
            env.open_db(name, dupsort=True, dupfixed=True)
        with env.begin(write=True) as txn:
            txn.put(b"format", b"sealog-lmdb-2", db=meta)
            txn.put(b"checkpoint", b"a note", db=meta)
            txn.put(_U64.pack(0), b"leaf", db=entries)
            txn.put(_U64.pack(0), b"h" * 48, db=hashes)  # a hash and a key digest
    finally:
        env.close()
    before = (tmp_path / "db" / "data.mdb").read_bytes()
    storage = LmdbStorage(tmp_path / "db")
    try:
        with pytest.raises(
            StartupCheckError, match="storage format b'sealog-lmdb-2', want b'sealog-lmdb-3'"
        ):
            Log(storage, SIGNER, SIGNER.verifier(), ORIGIN)
    finally:
        storage.close()
    assert (tmp_path / "db" / "data.mdb").read_bytes() == before


# --- map growth while snapshots are open ----------------------------------------------------
def test_the_map_grows_only_once_no_snapshot_is_open(tmp_path: Path) -> None:
    storage = LmdbStorage(tmp_path / "db", map_size=1 << 20)
    try:
        holding = threading.Event()
        release = threading.Event()
        seen: list[int] = []

        def reader() -> None:
            with storage.read() as snap:
                holding.set()
                release.wait(10)
                seen.append(snap.stored_size())  # still valid: no resize under it

        t = threading.Thread(target=reader)
        t.start()
        assert holding.wait(10)
        grown = threading.Event()

        def writer() -> None:
            tree = CompactRange()
            leaves = [bytes([i % 256]) * 3000 for i in range(600)]  # ~2 MB: must grow
            for start in range(0, len(leaves), 50):
                while True:
                    attempt = tree.copy()
                    try:
                        with storage.write() as w:
                            for leaf in leaves[start : start + 50]:
                                w.append_leaf(attempt.size, leaf, attempt.append(leaf_hash(leaf)))
                        break
                    except storage_module.RetryBatchError:
                        continue
                tree = attempt
            grown.set()

        w = threading.Thread(target=writer)
        w.start()
        time.sleep(0.3)
        assert not grown.is_set(), "the map was resized under an open snapshot"
        release.set()
        t.join(10)
        w.join(30)
        assert grown.is_set()
        assert seen == [0]
        with storage.read() as snap:
            assert snap.stored_size() == 600
    finally:
        storage.close()
