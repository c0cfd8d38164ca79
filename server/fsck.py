"""Offline verification of a log's storage: re-derive everything from the entries.

``fsck`` trusts nothing stored except the leaves and the key it is given. It
re-parses and re-hashes every leaf, recomputes every stored node hash and the
root, checks the three indexes against the entries, and verifies the stored
checkpoint's signature and root. The leaf-hash and idempotency indexes must
hold every leaf below ``indexed_upto`` (later ones may still be waiting in
the server's memory, docs/storage.md); whatever they hold must be right, and
no two leaves may carry the same idempotency key digest. Each problem is
reported with its place (table, index, level). There is no repair: a log that
fails fsck is evidence.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field

from sealog.client.checkpoint import open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.errors import SealogError
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import NoteVerifier
from sealog.client.proof import NodeID
from sealog.server.progress import Progress
from sealog.server.storage import (
    DIGEST_BYTES,
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    ReadSnapshot,
    StorageCorruptError,
    hash_count,
    identity_prefix,
)

__all__ = ["FsckReport", "fsck"]

_LEAF_PREFIX_BYTES = 8


@dataclass
class FsckReport:
    """What fsck found. ``ok`` when there are no problems."""

    size: int = 0
    """The size of the tree the stored checkpoint signs (0 if it could not be read)."""
    entries_checked: int = 0
    """How many entry records were read."""
    stored_size: int = 0
    """One past the highest stored entry index."""
    indexed_upto: int = 0
    """The leaf-hash and idempotency indexes must hold every leaf below this."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def add(self, problem: str) -> None:
        """Record one problem."""
        self.problems.append(problem)


def _hex(data: bytes) -> str:
    return data.hex()


def fsck(
    snapshot: ReadSnapshot,
    verifier: NoteVerifier,
    *,
    origin: str | None = None,
    progress: bool = True,
    max_problems: int = 1000,
) -> FsckReport:
    """Check one snapshot of a log completely; see the module docstring."""
    report = FsckReport()
    root = _check_meta(snapshot, verifier, origin, report)
    identities = _IdentityRecords(snapshot)
    _check_tree(snapshot, report, root, progress, max_problems, identities)
    if len(report.problems) < max_problems:  # else the tree check stopped half-way
        identities.report(report)
        _check_indexes(snapshot, report)
    return report


def _check_meta(
    snapshot: ReadSnapshot, verifier: NoteVerifier, origin: str | None, report: FsckReport
) -> bytes | None:
    fmt = snapshot.meta(META_FORMAT)
    if fmt != FORMAT_VERSION:
        report.add(f"meta[format]: {fmt!r}, want {FORMAT_VERSION!r}")
    stored_origin = snapshot.meta(META_ORIGIN)
    note = snapshot.checkpoint()
    if stored_origin is None:
        report.add("meta[origin]: missing")
    if note is None:
        report.add("meta[checkpoint]: missing")
        return None
    # The checkpoint is checked against the key (and the origin the caller
    # names), never against the stored origin: a damaged origin record must be
    # reported as itself, not as a bad checkpoint.
    try:
        signed = open_checkpoint(note, verifier, origin=origin)
    except SealogError as e:
        report.add(f"meta[checkpoint]: does not verify with the given key: {e}")
        return None
    report.size = signed.checkpoint.size
    if stored_origin is not None and stored_origin != signed.checkpoint.origin.encode():
        report.add(
            f"meta[origin]: {stored_origin!r}, but the signed checkpoint's origin is "
            f"{signed.checkpoint.origin!r}"
        )
    try:
        size = snapshot.size()
    except StorageCorruptError as e:
        report.add(str(e))
    else:
        if size != report.size:
            report.add(f"meta[size]: {size}, but the signed checkpoint is for {report.size}")
    try:
        report.indexed_upto = snapshot.indexed_upto()
    except StorageCorruptError as e:
        report.add(str(e))
    else:
        if report.indexed_upto > report.size:
            report.add(
                f"meta[indexed_upto]: {report.indexed_upto}, beyond the signed checkpoint's "
                f"{report.size} leaves"
            )
            report.indexed_upto = 0  # unknown: expect nothing of the indexes
    return signed.checkpoint.root_hash


class _HashRecords:
    """The ``hashes`` table in index order, looked up in step with the entries."""

    def __init__(self, records: Iterator[tuple[int, bytes]], report: FsckReport) -> None:
        self._records = records
        self._report = report
        self._head = next(records, None)

    def take(self, index: int) -> bytes | None:
        """The record of leaf ``index``, reporting records before it that no entry claimed."""
        while self._head is not None and self._head[0] < index:
            self._report.add(f"hashes[{self._head[0]}]: record with no entry")
            self._head = next(self._records, None)
        if self._head is None or self._head[0] != index:
            return None
        value = self._head[1]
        self._head = next(self._records, None)
        return value

    def rest(self) -> list[int]:
        """The indices of the records not taken."""
        out = [] if self._head is None else [self._head[0]]
        out.extend(i for i, _ in self._records)
        self._head = None
        return out


def _check_tree(
    snapshot: ReadSnapshot,
    report: FsckReport,
    root: bytes | None,
    progress: bool,
    max_problems: int,
    identities: _IdentityRecords,
) -> None:
    size = report.size
    bar = Progress("fsck", size, enabled=progress)
    tree = CompactRange()
    records = _HashRecords(snapshot.iter_hash_records(), report)
    expected = 0  # one past the highest entry index seen
    stored = 0
    broken = False  # the tree cannot be recomputed any further
    last_ms = 0
    for index, leaf in snapshot.iter_entries():
        if len(report.problems) >= max_problems:
            report.add(f"stopping after {max_problems} problems")
            return
        if index < expected:  # only a key that is not a big-endian uint64 sorts like this
            report.add(f"entries: a record with a malformed key after index {expected - 1}")
            continue
        if index > expected:
            report.add(f"entries[{expected}..{index - 1}]: missing")
            broken = broken or not _bridge(tree, records, min(index, size), report)
            if not broken and tree.size == size and root is not None:
                _check_root(tree, root, report)
            broken = broken or tree.size != index
        try:
            parsed = Leaf.parse(leaf)
        except SealogError as e:
            report.add(f"entries[{index}]: {e}")
        else:
            if parsed.accepted_at_ms < last_ms:
                report.add(
                    f"entries[{index}]: accepted_at_ms {parsed.accepted_at_ms} is before the "
                    f"previous entry's {last_ms}"
                )
            last_ms = max(last_ms, parsed.accepted_at_ms)
            if root is None or index < size:  # entries beyond the checkpoint are reported
                identities.check(parsed, index)
        if not broken:
            completed = tree.append(leaf_hash(leaf))
            _check_hash_record(records.take(index), index, completed, report)
            if index + 1 == size and root is not None:
                _check_root(tree, root, report)
        stored += 1
        expected = index + 1
        if stored % 4096 == 0:
            bar.update(min(expected, size) if size else stored)
    bar.update(min(expected, size) if size else stored)
    bar.finish()
    report.entries_checked = stored
    report.stored_size = expected
    if expected < size:
        report.add(
            f"entries: {stored} leaves stored, but the signed checkpoint is for {size} "
            f"(entries[{expected}..{size - 1}] missing)"
        )
    elif expected > size and root is not None:
        report.add(f"entries[{size}..{expected - 1}]: stored beyond the signed checkpoint")
    if size == 0 and root is not None:
        _check_root(tree, root, report)
    if not broken:
        extra = records.rest()
        if extra:
            report.add(f"hashes[{extra[0]}..{extra[-1]}]: records with no entry")


def _bridge(tree: CompactRange, records: _HashRecords, end: int, report: FsckReport) -> bool:
    """Carry the tree over missing entries ``[tree.size, end)`` with their stored leaf hashes.

    Return False (the tree cannot be recomputed further) when a hash record is
    missing too. Stored hashes are only trusted this far: the root check still
    compares the result with the signed checkpoint.
    """
    for index in range(tree.size, end):
        stored = records.take(index)
        if stored is None or len(stored) < 32:
            report.add(
                f"hashes[{index}]: missing too, so the tree cannot be recomputed past index {index}"
            )
            return False
        _check_hash_record(stored, index, tree.append(stored[:32]), report)
    return True


def _check_hash_record(
    stored: bytes | None, index: int, completed: list[bytes], report: FsckReport
) -> None:
    if stored is None:
        report.add(f"hashes[{index}]: missing")
        return
    n = 32 * len(completed)
    if len(stored) not in (n, n + DIGEST_BYTES):
        report.add(
            f"hashes[{index}]: {len(stored)} bytes, want {n} or {n + DIGEST_BYTES} "
            f"(levels 0..{len(completed) - 1}, then a {DIGEST_BYTES}-byte key digest or nothing)"
        )
    for level, h in enumerate(completed):
        got = stored[32 * level : 32 * level + 32]
        if got and not hmac.compare_digest(got, h):
            if level == 0:
                what = f"leaf hash of entries[{index}]"
            else:
                first = (index >> level) << level
                what = f"node level {level} index {index >> level}, over entries[{first}..{index}]"
            report.add(
                f"hashes[{index}] level {level} ({what}): stored {_hex(got)}, "
                f"recomputed from entries {_hex(h)}"
            )


def _check_root(tree: CompactRange, root: bytes, report: FsckReport) -> None:
    calculated = tree.root()
    if not hmac.compare_digest(calculated, root):
        report.add(
            f"tree: root recomputed from entries [0, {tree.size}) is {_hex(calculated)}, "
            f"the signed checkpoint says {_hex(root)}"
        )


class _IdentityRecords:
    """Checks, entry by entry, that the index by identity has the entry's record."""

    def __init__(self, snapshot: ReadSnapshot) -> None:
        self._snapshot = snapshot
        self._prefixes: dict[str, bytes] = {}
        self.missing = 0
        self.first = -1

    def check(self, leaf: Leaf, index: int) -> None:
        prefix = self._prefixes.get(leaf.identity)
        if prefix is None:
            if len(self._prefixes) > 4096:
                self._prefixes.clear()
            prefix = self._prefixes[leaf.identity] = identity_prefix(leaf.identity)
        try:
            found = next(self._snapshot.iter_by_identity(prefix, leaf.accepted_at_ms, index), None)
        except StorageCorruptError:
            found = None
        if found != (leaf.accepted_at_ms, index):
            self.missing += 1
            self.first = index if self.first < 0 else self.first

    def report(self, report: FsckReport) -> None:
        if self.missing:
            report.add(
                f"by_identity: no record for {self.missing} leaves (first: index {self.first})"
            )


def _check_indexes(snapshot: ReadSnapshot, report: FsckReport) -> None:
    n = report.stored_size
    upto = min(report.indexed_upto, n)
    for prefix, index in snapshot.iter_leaf_index():
        if index < 0:
            report.add(f"leaf_index[{_hex(prefix)}]: a malformed record")
            continue
        if not index < n:
            report.add(f"leaf_index[{_hex(prefix)}]: points to {index}, beyond the stored leaves")
            continue
        try:
            stored = snapshot.read_hashes([NodeID(0, index)])[0]
        except SealogError:
            continue  # the hash record is broken; the tree check reports it
        if stored[:_LEAF_PREFIX_BYTES] != prefix:
            report.add(f"leaf_index[{_hex(prefix)}]: points to {index}, whose leaf hash differs")
    for digest, index in snapshot.iter_idempotency():
        if index < 0:
            report.add(f"idempotency[{_hex(digest)}]: a malformed record")
            continue
        if not index < n:
            report.add(f"idempotency[{_hex(digest)}]: points to {index}, beyond the stored leaves")
            continue
        try:
            stored_digest = snapshot.key_digest(index)
        except SealogError:
            continue  # the hash record is broken; the tree check reports it
        if stored_digest is None or stored_digest[: len(digest)] != digest:
            report.add(
                f"idempotency[{_hex(digest)}]: points to {index}, "
                + (
                    "which has no key digest"
                    if stored_digest is None
                    else "whose key digest differs"
                )
            )
    _check_index_completeness(snapshot, report, n, upto)
    _check_identity_index(snapshot, report, n)


def _check_index_completeness(
    snapshot: ReadSnapshot, report: FsckReport, n: int, upto: int
) -> None:
    """Every leaf below ``upto`` is in both indexes; no key digest is stored twice."""
    missing = missing_digests = 0
    first = first_digest = -1
    tail_digests: dict[bytes, int] = {}
    for index, record in snapshot.iter_hash_records():
        if not 0 <= index < n or len(record) < 32:
            continue
        if index < upto and snapshot.find_leaf_hash(record[:32], below=index + 1) is None:
            missing += 1
            first = index if first < 0 else first
        digest = _record_digest(index, record)
        if digest is None:
            continue
        found = snapshot.find_idempotency(digest)
        if index >= upto:
            found = tail_digests.setdefault(digest, index) if found is None else found
        if found is None:
            missing_digests += 1
            first_digest = index if first_digest < 0 else first_digest
        elif found != index:
            report.add(
                f"hashes[{index}]: the same idempotency key digest as leaf {found} "
                f"({_hex(digest)}): the key was used twice"
            )
    if missing:
        report.add(f"leaf_index: no record for {missing} leaves (first: index {first})")
    if missing_digests:
        report.add(
            f"idempotency: no record for {missing_digests} key digests (first: leaf {first_digest})"
        )


def _record_digest(index: int, record: bytes) -> bytes | None:
    n = 32 * hash_count(index)
    return record[n:] if len(record) == n + DIGEST_BYTES else None


def _check_identity_index(snapshot: ReadSnapshot, report: FsckReport, n: int) -> None:
    """Every record of the index by identity names a leaf of that identity and time."""
    for prefix, ms, index in snapshot.iter_identity_index():
        if index < 0:
            report.add(f"by_identity[{_hex(prefix)}]: a malformed record")
            continue
        where = f"by_identity[{_hex(prefix)}] ({ms}, {index})"
        if not index < n:
            report.add(f"{where}: points to {index}, beyond the stored leaves")
            continue
        try:
            leaf = Leaf.parse(snapshot.leaf(index))
        except SealogError:
            continue  # a missing or malformed entry: the tree check reports it
        if identity_prefix(leaf.identity) != prefix or leaf.accepted_at_ms != ms:
            report.add(f"{where}: points to {index}, whose identity or time differs")
