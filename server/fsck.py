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
from sealog.server.storage import FORMAT_VERSION, META_FORMAT, META_ORIGIN, ReadSnapshot

__all__ = ["FsckReport", "fsck"]

_LEAF_PREFIX_BYTES = 8


@dataclass
class FsckReport:
    """What fsck found. ``ok`` when there are no problems."""

    size: int = 0
    """The size of the tree the stored checkpoint signs (0 if it could not be read)."""
    entries_checked: int = 0
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
    if note is None:
        report.add("meta[checkpoint]: missing")
        return None
    want_origin = origin if origin is not None else (stored_origin or b"").decode(errors="replace")
    try:
        signed = open_checkpoint(note, verifier, origin=want_origin or None)
    except SealogError as e:
        report.add(f"meta[checkpoint]: does not verify with the given key: {e}")
        return None
    report.size = signed.checkpoint.size
    if (
        stored_origin is not None
        and stored_origin.decode(errors="replace") != signed.checkpoint.origin
    ):
        report.add(
            f"meta[origin]: {stored_origin!r}, but the checkpoint's origin is "
            f"{signed.checkpoint.origin!r}"
        )
    return signed.checkpoint.root_hash


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
    hash_records = snapshot.iter_hash_records()
    expected = 0
    last_ms = 0
    for index, leaf in snapshot.iter_entries():
        if len(report.problems) >= max_problems:
            report.add(f"stopping after {max_problems} problems")
            return
        if index != expected:
            if index < 0 or index < expected:
                report.add(f"entries: a record with a malformed key after index {expected - 1}")
                continue
            report.add(f"entries[{expected}..{index - 1}]: missing")
            return
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
        completed = tree.append(leaf_hash(leaf))
        _check_hash_record(hash_records, index, completed, report)
        expected += 1
        if index + 1 == size and root is not None:
            _check_root(tree, root, report)
        if expected % 4096 == 0:
            bar.update(expected)
    bar.update(expected)
    bar.finish()
    report.entries_checked = expected
    if expected < size:
        report.add(
            f"entries: {expected} leaves stored, but the signed checkpoint is for {size} "
            f"(entries[{expected}..{size - 1}] missing)"
        )
    elif expected > size and root is not None:
        report.add(f"entries[{size}..{expected - 1}]: stored beyond the signed checkpoint")
    if size == 0 and root is not None:
        _check_root(tree, root, report)
    extra = [i for i, _ in hash_records]
    if extra:
        report.add(f"hashes[{extra[0]}..{extra[-1]}]: records with no entry")


def _check_hash_record(
    records: Iterator[tuple[int, bytes]], index: int, completed: list[bytes], report: FsckReport
) -> None:
    record = next(records, None)
    while record is not None and record[0] < index:
        report.add(f"hashes[{record[0]}]: record with no entry")
        record = next(records, None)
    if record is None or record[0] != index:
        report.add(f"hashes[{index}]: missing")
        return
    stored = record[1]
    if len(stored) != 32 * len(completed):
        report.add(
            f"hashes[{index}]: {len(stored)} bytes, want {32 * len(completed)} "
            f"(levels 0..{len(completed) - 1})"
        )
    for level, h in enumerate(completed):
        got = stored[32 * level : 32 * level + 32]
        if got and not hmac.compare_digest(got, h):
            what = "leaf hash" if level == 0 else f"node level {level} index {index >> level}"
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
    n = report.entries_checked
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
