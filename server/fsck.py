"""Offline verification of a log's storage: re-derive everything from the entries.

``fsck`` trusts nothing stored except the leaves and the key it is given. It
re-parses and re-hashes every leaf, recomputes every stored node hash and the
root, checks both indexes against the entries, and verifies the stored
checkpoint's signature and root. Each problem is reported with its place
(table, index, level). There is no repair: a log that fails fsck is evidence.
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
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    ReadSnapshot,
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
    _check_tree(snapshot, report, root, progress, max_problems)
    if len(report.problems) < max_problems:  # else the tree check stopped half-way
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
    if len(stored) != 32 * len(completed):
        report.add(
            f"hashes[{index}]: {len(stored)} bytes, want {32 * len(completed)} "
            f"(levels 0..{len(completed) - 1})"
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


def _check_indexes(snapshot: ReadSnapshot, report: FsckReport) -> None:
    n = report.stored_size
    for prefix, index in snapshot.iter_leaf_index():
        if not 0 <= index < n:
            report.add(f"leaf_index[{_hex(prefix)}]: points to {index}, beyond the stored leaves")
            continue
        try:
            stored = snapshot.read_hashes([NodeID(0, index)])[0]
        except SealogError:
            continue  # the hash record is broken; the tree check reports it
        if stored[:_LEAF_PREFIX_BYTES] != prefix:
            report.add(f"leaf_index[{_hex(prefix)}]: points to {index}, whose leaf hash differs")
    missing = 0
    first = -1
    for index, record in snapshot.iter_hash_records():
        if not 0 <= index < n or len(record) < 32:
            continue
        if snapshot.find_leaf_hash(record[:32], below=index + 1) is None:
            missing += 1
            first = index if first < 0 else first
    if missing:
        report.add(f"leaf_index: no record for {missing} leaves (first: index {first})")
    for digest, index in snapshot.iter_idempotency():
        if not 0 <= index < n:
            report.add(f"idempotency[{_hex(digest)}]: points to {index}, beyond the stored leaves")
    _check_identity_index(snapshot, report, n)


def _check_identity_index(snapshot: ReadSnapshot, report: FsckReport, n: int) -> None:
    """Every leaf has exactly one by_identity record, naming its identity and time."""
    indexed: set[int] = set()
    for prefix, ms, index in snapshot.iter_identity_index():
        where = f"by_identity[{_hex(prefix)} {ms} {index}]"
        if not 0 <= index < n:
            report.add(f"{where}: points beyond the stored leaves")
            continue
        try:
            leaf = Leaf.parse(snapshot.leaf(index))
        except SealogError:
            indexed.add(index)  # the record is there; the entry is reported by the tree check
            continue
        if identity_prefix(leaf.identity) != prefix or leaf.accepted_at_ms != ms:
            report.add(f"{where}: entries[{index}] has another identity or time")
        elif index in indexed:
            report.add(f"{where}: a second record for entries[{index}]")
        indexed.add(index)
    if len(indexed) < n:
        first = next(i for i in range(n) if i not in indexed)
        report.add(
            f"by_identity: no record for {n - len(indexed)} leaves (first: entries[{first}])"
        )
