"""Offline verification of a log's storage: re-derive everything from the entries.

``fsck`` trusts nothing stored except the leaves and the key it is given. It
re-parses and re-hashes every leaf, recomputes every stored node hash and the
root, checks the three indexes against the entries, and verifies the stored
checkpoint's signature and root. The leaf-hash index must hold every leaf
below ``indexed_upto`` (later ones may still be waiting in the server's
memory, docs/storage.md), and so must the idempotency index every key digest
kept for a leaf below it; whatever they hold must be right, and no two leaves
may carry the same idempotency key digest. The index by identity must record
exactly the start of every run of consecutive leaves of one identity and
time. Each problem is reported with its place (table, group and slot or
index, level). There is no repair: a log that fails fsck is evidence.

A key digest is stored nowhere but in the idempotency index (or, until a
flush, with its batch), so fsck cannot tell a deleted or altered idempotency
record from a leaf appended with another key or none; such damage only lets a
retry append its entry again, and never touches the signed tree.
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
from sealog.client.progress import Progress
from sealog.client.proof import NodeID
from sealog.server.lmdb_layout import GROUP_NODES, is_stored, node_at, stored_before
from sealog.server.storage import (
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    FsckSnapshot,
    ReadSnapshot,
    StorageCorruptError,
    TableScan,
    identity_prefix,
)

__all__ = ["FsckReport", "fsck"]

_OTHER_FORMATS = b"sealog-lmdb-"
_UNKNOWN = ("", -1)
"""The identity and time of a leaf fsck could not read."""


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
    snapshot: FsckSnapshot,
    verifier: NoteVerifier,
    *,
    origin: str | None = None,
    progress: bool = True,
    max_problems: int = 1000,
    report: FsckReport | None = None,
) -> FsckReport:
    """Check one snapshot of a log completely; see the module docstring.

    Problems are added to ``report`` (default: a new one) as they are found.
    """
    report = FsckReport() if report is None else report
    root = _check_meta(snapshot, verifier, origin, report)
    fmt = snapshot.meta(META_FORMAT)
    if fmt != FORMAT_VERSION and fmt is not None and fmt.startswith(_OTHER_FORMATS):
        return report  # another layout: reading it as this one would only be noise
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
        other = fmt is not None and fmt.startswith(_OTHER_FORMATS)
        report.add(
            f"meta[format]: {fmt!r}, want {FORMAT_VERSION!r}"
            + (" (another storage format: nothing else is checked)" if other else "")
        )
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


def _where(position: int) -> str:
    group, slot = divmod(position, GROUP_NODES)
    return f"hashes[{group}][{slot}]"


def _what(level: int, index: int) -> str:
    """The node of ``level`` completed by leaf ``index``, in words."""
    if level == 0:
        return f"leaf hash of entries[{index}]"
    first = (index >> level) << level
    return f"node level {level} index {index >> level}, over entries[{first}..{index}]"


class _StoredHashes:
    """The ``hashes`` table in position order, taken in step with the entries."""

    def __init__(self, records: Iterator[tuple[int, bytes]], report: FsckReport) -> None:
        self._records = records
        self._report = report
        self._taken = -1
        self._head = self._next()

    def _next(self) -> tuple[int, bytes] | None:
        for group, value in self._records:
            if group < 0:
                self._report.add(f"hashes: a record with a malformed key ({_hex(value)})")
            elif len(value) != 33 or value[0] >= GROUP_NODES:
                self._report.add(
                    f"hashes[{group}]: a malformed value of {len(value)} bytes ({_hex(value)}), "
                    f"want a slot below {GROUP_NODES} and a 32-byte hash"
                )
            else:
                return group * GROUP_NODES + value[0], value[1:]
        return None

    def _extra(self, position: int) -> None:
        if position == self._taken:
            self._report.add(f"{_where(position)}: a second value in the same slot")
            return
        level, index = node_at(position)
        last = ((index + 1) << level) - 1
        self._report.add(f"{_where(position)}: stored with no entry ({_what(level, last)})")

    def take(self, position: int) -> bytes | None:
        """The hash at ``position``, reporting stored ones before it that no entry claimed."""
        while self._head is not None and self._head[0] < position:
            self._extra(self._head[0])
            self._head = self._next()
        if self._head is None or self._head[0] != position:
            return None
        value = self._head[1]
        self._taken = position
        self._head = self._next()
        return value

    def rest(self) -> list[int]:
        """The positions of the hashes not taken."""
        out = []
        while self._head is not None:
            out.append(self._head[0])
            self._head = self._next()
        return out


def _check_tree(
    snapshot: TableScan,
    report: FsckReport,
    root: bytes | None,
    progress: bool,
    max_problems: int,
    identities: _IdentityRecords,
) -> None:
    size = report.size
    bar = Progress("fsck", size, enabled=progress)
    tree = CompactRange()
    stored_hashes = _StoredHashes(snapshot.iter_hash_records(), report)
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
            identities.gap()
            broken = broken or not _bridge(tree, stored_hashes, min(index, size), report)
            if not broken and tree.size == size and root is not None:
                _check_root(tree, root, report)
            broken = broken or tree.size != index
        try:
            parsed = Leaf.parse(leaf)
        except SealogError as e:
            report.add(f"entries[{index}]: {e}")
            identities.gap()
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
            _check_completed(stored_hashes, index, completed, report)
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
        extra = stored_hashes.rest()
        if extra:
            report.add(
                f"hashes: {len(extra)} stored hashes with no entry, "
                f"{_where(extra[0])} to {_where(extra[-1])}"
            )


def _bridge(tree: CompactRange, stored: _StoredHashes, end: int, report: FsckReport) -> bool:
    """Carry the tree over missing entries ``[tree.size, end)`` with their stored leaf hashes.

    Return False (the tree cannot be recomputed further) when a leaf hash is
    missing too. Stored hashes are only trusted this far: the root check still
    compares the result with the signed checkpoint.
    """
    for index in range(tree.size, end):
        position = stored_before(index)
        h = stored.take(position)
        if h is None:
            report.add(
                f"{_where(position)} (leaf hash of the missing entries[{index}]): missing too, "
                f"so the tree cannot be recomputed past index {index}"
            )
            return False
        _check_completed(stored, index, tree.append(h), report, leaf_taken=True)
    return True


def _check_completed(
    stored: _StoredHashes,
    index: int,
    completed: list[bytes],
    report: FsckReport,
    *,
    leaf_taken: bool = False,
) -> None:
    """Compare the stored hashes of the nodes leaf ``index`` completes with ``completed``,
    recomputed from the entries (levels that are not stored have nothing to compare)."""
    position = stored_before(index)
    for level, h in enumerate(completed):
        if not is_stored(level):
            continue
        if level == 0 and leaf_taken:
            position += 1
            continue
        got = stored.take(position)
        where = f"{_where(position)} level {level} ({_what(level, index)})"
        if got is None:
            report.add(f"{where}: missing")
        elif not hmac.compare_digest(got, h):
            report.add(f"{where}: stored {_hex(got)}, recomputed from entries {_hex(h)}")
        position += 1


def _check_root(tree: CompactRange, root: bytes, report: FsckReport) -> None:
    calculated = tree.root()
    if not hmac.compare_digest(calculated, root):
        report.add(
            f"tree: root recomputed from entries [0, {tree.size}) is {_hex(calculated)}, "
            f"the signed checkpoint says {_hex(root)}"
        )


class _IdentityRecords:
    """Checks, entry by entry, that the index by identity records the start of every run
    of consecutive leaves of one identity and time."""

    def __init__(self, snapshot: ReadSnapshot) -> None:
        self._snapshot = snapshot
        self._prefixes: dict[str, bytes] = {}
        self._previous: tuple[str, int] | None = None
        """The identity and time of the leaf before; None before the first one."""
        self.missing = 0
        self.first = -1

    def gap(self) -> None:
        """The leaf before the next one is missing or unreadable: whether a run starts at
        the next leaf cannot be told."""
        self._previous = _UNKNOWN

    def check(self, leaf: Leaf, index: int) -> None:
        run = (leaf.identity, leaf.accepted_at_ms)
        previous, self._previous = self._previous, run
        if previous in (run, _UNKNOWN):
            return  # the run goes on (or cannot be told): no record of its own
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
                f"by_identity: no record for {self.missing} runs of leaves "
                f"(first: the run from index {self.first})"
            )


def _check_indexes(snapshot: FsckSnapshot, report: FsckReport) -> None:
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
            continue  # the leaf hash is missing; the tree check reports it
        if stored[: len(prefix)] != prefix:  # the part of the hash the record holds
            report.add(f"leaf_index[{_hex(prefix)}]: points to {index}, whose leaf hash differs")
    _check_idempotency(snapshot, report, n)
    _check_pending_digests(snapshot, report, n, upto)
    _check_leaf_index_completeness(snapshot, report, upto)
    _check_identity_index(snapshot, report, n)


def _check_idempotency(snapshot: TableScan, report: FsckReport, n: int) -> None:
    """Every record names a stored leaf; no digest names two leaves, no leaf has two digests."""
    named = bytearray((n + 7) // 8)
    previous: tuple[bytes, int] | None = None
    for digest, index in snapshot.iter_idempotency():
        if index < 0:
            report.add(f"idempotency[{_hex(digest)}]: a malformed record")
            continue
        if not index < n:
            report.add(f"idempotency[{_hex(digest)}]: points to {index}, beyond the stored leaves")
            continue
        if previous is not None and previous[0] == digest:
            report.add(
                f"idempotency[{_hex(digest)}]: points to {previous[1]} and to {index}: "
                "the key was used twice"
            )
        bit = 1 << (index & 7)
        if named[index >> 3] & bit:
            report.add(f"idempotency[{_hex(digest)}]: points to {index}, which has another key")
        named[index >> 3] |= bit
        previous = digest, index


def _check_pending_digests(snapshot: FsckSnapshot, report: FsckReport, n: int, upto: int) -> None:
    """The key digests kept for leaves not indexed yet: each names a stored leaf, no two
    leaves share one, and those below ``indexed_upto`` are in the index."""
    missing = 0
    first = -1
    seen: dict[bytes, int] = {}
    pending = snapshot.iter_pending_digests()
    while True:
        try:
            item = next(pending, None)
        except StorageCorruptError as e:
            report.add(str(e))
            break
        if item is None:
            break
        index, digest = item
        if not index < n:
            report.add(f"pending_digests: a key digest for leaf {index}, beyond the stored leaves")
            continue
        found = snapshot.find_idempotency(digest)
        earlier = seen.setdefault(digest, index)
        other = earlier if earlier != index else found
        if other is not None and other != index:
            report.add(
                f"pending_digests: leaf {index} has the same idempotency key digest as leaf "
                f"{other} ({_hex(digest)}): the key was used twice"
            )
        elif found is None and index < upto:
            missing += 1
            first = index if first < 0 else first
    if missing:
        report.add(f"idempotency: no record for {missing} key digests (first: leaf {first})")


def _check_leaf_index_completeness(snapshot: FsckSnapshot, report: FsckReport, upto: int) -> None:
    """Every leaf below ``upto`` is in the leaf-hash index."""
    missing = 0
    first = -1
    for index, stored in snapshot.iter_leaf_hashes(0, upto):
        if stored is None:
            continue  # the tree check reports it
        try:
            found = snapshot.find_leaf_hash(stored, below=index + 1)
        except StorageCorruptError:
            found = None
        if found is None:
            missing += 1
            first = index if first < 0 else first
    if missing:
        report.add(f"leaf_index: no record for {missing} leaves (first: index {first})")


def _check_identity_index(snapshot: FsckSnapshot, report: FsckReport, n: int) -> None:
    """Every record of the index by identity names the first leaf of a run of that
    identity and time."""
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
            continue
        if index == 0:
            continue
        try:
            before = Leaf.parse(snapshot.leaf(index - 1))
        except SealogError:
            continue
        if (before.identity, before.accepted_at_ms) == (leaf.identity, leaf.accepted_at_ms):
            report.add(
                f"{where}: entries[{index - 1}] has the same identity and time, "
                f"so no run starts at {index}"
            )
