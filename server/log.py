"""The log: opening storage safely, appending through the sequencer, serving proofs.

This is the domain layer the gRPC servicer calls. Every read runs in one
snapshot and is answered against a stated tree size; a size the log has not
reached is :class:`OutOfRangeError`, never a proof for another tree. The log
writes nothing itself: a new log's first commit, appends and witness
cosignatures are all written by its sequencer (:mod:`sealog.server.sequencer`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from sealog.client.checkpoint import open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.cosignature import CosignatureVerifier, verify_cosignatures
from sealog.client.errors import (
    FormatError,
    InvalidSignatureError,
    SealogError,
    VerificationError,
)
from sealog.client.hashing import EMPTY_ROOT, leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import NoteSigner, NoteVerifier, parse_note
from sealog.client.proof import subtree_nodes
from sealog.client.verify import verify_inclusion
from sealog.server.config import Settings
from sealog.server.cosignatures import (
    StoredCosignature,
    decode_cosignatures,
    witness_key,
    witnessed_note,
)
from sealog.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    UnavailableError,
)
from sealog.server.index_tail import IndexTail, StaleSnapshotError, find_leaf_hash
from sealog.server.proofs import (
    build_consistency_proof,
    build_inclusion_proof,
    build_range_proof,
)
from sealog.server.sequencer import AppendItem, AppendOutcome, BatchStats, Sequencer
from sealog.server.storage import (
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    ReadSnapshot,
    Storage,
    StorageCorruptError,
    identity_prefix,
)

__all__ = ["EntriesPage", "Log", "StartupCheckError"]

logger = logging.getLogger(__name__)


class StartupCheckError(SealogError):
    """The stored log does not match its own signed checkpoint: refuse to serve it."""

    def diagnostics(self) -> str:
        return (
            f"{self}\nThe data folder is evidence: do not modify it. Run `sealog fsck` "
            "on a copy, and restore from a backup whose checkpoint this log's monitors trust."
        )


@dataclass(frozen=True, slots=True)
class EntriesPage:
    """Leaves ``[start, start + len(leaves))`` and their range proof."""

    start: int
    leaves: tuple[bytes, ...]
    left_frontier: tuple[bytes, ...]
    consistency_proof: tuple[bytes, ...]


class Log:
    """One transparency log over one storage, signing with one key."""

    def __init__(
        self,
        storage: Storage,
        signer: NoteSigner,
        verifier: NoteVerifier,
        origin: str,
        settings: Settings | None = None,
        *,
        witnesses: Sequence[CosignatureVerifier] = (),
        extra_signers: Sequence[NoteSigner] = (),
        clock_ms: Callable[[], int] | None = None,
        create: bool = True,
    ) -> None:
        """Open the log: create it if the storage is empty, else check it (see :meth:`_check`).

        Without ``create``, storage with no signed checkpoint is refused
        (:class:`StartupCheckError`) instead: the caller knows a log was there.

        Checkpoints are signed by ``signer`` and every one of ``extra_signers``
        (a key rotation, docs/authentication.md); the stored checkpoint must
        verify with ``verifier`` (``signer``'s key).

        ``witnesses`` are the witness keys whose cosignatures
        :meth:`add_cosignature` accepts; ``clock_ms`` is the acceptance clock (for
        tests; default: the system clock). Raises :class:`StartupCheckError` if
        the stored tree, the stored checkpoint and this key and origin do not
        all agree.
        """
        self.storage = storage
        self.origin = origin
        self.settings = settings or Settings()
        self.witnesses = tuple(witnesses)
        self._verifier = verifier
        self._checkpoint_lock = threading.Lock()
        self._listeners: list[Callable[[bytes], None]] = []
        self._signers = (signer, *extra_signers)
        opened = self._open(create)
        tree, last_leaf, tail = (CompactRange(), None, IndexTail(0)) if opened is None else opened
        self._sequencer = Sequencer(
            storage,
            self._signers,
            origin,
            tree,
            self.settings,
            last_ms=0 if last_leaf is None else last_leaf[1],
            last_leaf=last_leaf,
            on_checkpoint=self._set_checkpoint,
            tail=tail,
            clock_ms=clock_ms,
        )
        self._sequencer.start()
        if opened is None:
            self._create()

    # --- opening ----------------------------------------------------------
    def _open(self, create: bool) -> tuple[CompactRange, tuple[str, int] | None, IndexTail] | None:
        """The tree, the identity and acceptance time of its last leaf (None if it has
        none), and the index tail; None for storage that holds no log yet (one to create)."""
        try:
            with self.storage.read() as snap:
                note = snap.checkpoint()
        except StorageCorruptError as e:
            raise StartupCheckError(f"storage is damaged: {e}") from e
        if note is None:
            if not create:
                raise StartupCheckError(
                    "storage holds no signed checkpoint: the log's storage was lost or never "
                    "finished; it is not started as a new log under this key (that would be "
                    "a fork). Restore it from a backup (`sealog backup`, docs/operations.md)"
                )
            with self.storage.read() as snap:
                if snap.stored_size():
                    raise StartupCheckError("storage holds leaves but no checkpoint")
            return None
        return self._check(note)

    def _create(self) -> None:
        """Have the sequencer write the new log's first commit; if it fails, stop the
        sequencer (nothing of a log that did not open may outlive it) and raise."""
        try:
            note = self._sequencer.create().result()
        except BaseException:
            self._sequencer.stop()
            raise
        self._checkpoint = note

    def _check(self, note: bytes) -> tuple[CompactRange, tuple[str, int] | None, IndexTail]:
        """The startup self-check: cheap (O(log n) reads, not the whole tree), and strict.

        Storage that cannot be read as it must is a failed check too, never a crash.
        It also rebuilds the index tail: the leaves from ``indexed_upto`` on, read
        in order from their stored leaf hashes and the key digests kept for them.
        """
        try:
            return self._check_stored(note)
        except (StorageCorruptError, FormatError) as e:
            raise StartupCheckError(f"storage is damaged: {e}") from e

    def _check_stored(self, note: bytes) -> tuple[CompactRange, tuple[str, int] | None, IndexTail]:
        with self.storage.read() as snap:
            fmt = snap.meta(META_FORMAT)
            if fmt != FORMAT_VERSION:
                raise StartupCheckError(f"storage format {fmt!r}, want {FORMAT_VERSION!r}")
            stored_origin = (snap.meta(META_ORIGIN) or b"").decode()
            if stored_origin != self.origin:
                raise StartupCheckError(
                    f"this log's origin is {stored_origin!r}, not {self.origin!r}"
                )
            try:
                signed = open_checkpoint(note, self._verifier, origin=self.origin)
            except SealogError as e:
                raise StartupCheckError(
                    f"stored checkpoint does not verify with key {self._verifier.name}"
                    f"+{self._verifier.key_hash:08x}: {e}"
                ) from e
            cp = signed.checkpoint
            stored = snap.stored_size()
            if stored != cp.size:
                raise StartupCheckError(
                    f"storage holds {stored} leaves but the signed checkpoint is for {cp.size}"
                )
            try:
                size, upto = snap.size(), snap.indexed_upto()
            except StorageCorruptError as e:
                raise StartupCheckError(str(e)) from e
            if size != cp.size:
                raise StartupCheckError(
                    f"meta[size] is {size} but the signed checkpoint is for {cp.size}"
                )
            if upto > cp.size:
                raise StartupCheckError(
                    f"meta[indexed_upto] is {upto}, beyond the signed checkpoint's {cp.size} leaves"
                )
            tree = CompactRange(cp.size, snap.read_hashes(subtree_nodes(0, cp.size)))
            if tree.root() != cp.root_hash:
                raise StartupCheckError(
                    f"stored tree of size {cp.size} has root {tree.root().hex()}, "
                    f"the signed checkpoint says {cp.root_hash.hex()}"
                )
            last_leaf = None
            if cp.size:
                # The frontier is made of stored hashes; tie the newest entry's own
                # bytes to the signed root too, since its time seeds the clock and
                # its identity and time the run the next leaf may continue.
                last = cp.size - 1
                leaf = snap.leaf(last)
                try:
                    verify_inclusion(
                        last,
                        cp.size,
                        leaf_hash(leaf),
                        build_inclusion_proof(snap, last, cp.size),
                        cp.root_hash,
                    )
                except VerificationError as e:
                    raise StartupCheckError(
                        f"entries[{last}] is not the leaf the signed checkpoint holds: {e}"
                    ) from e
                try:
                    parsed = Leaf.parse(leaf)
                except FormatError as e:
                    raise StartupCheckError(f"entries[{last}]: {e}") from e
                last_leaf = parsed.identity, parsed.accepted_at_ms
            tail = IndexTail(upto)
            segment = tail.active
            try:
                for index, hashed, digest in snap.iter_pending_index(upto, cp.size):
                    segment.add(index, hashed, digest)
            except StorageCorruptError as e:
                raise StartupCheckError(f"rebuilding the index tail: {e}") from e
        self._checkpoint = note
        return tree, last_leaf, tail

    def _set_checkpoint(self, note: bytes) -> None:
        with self._checkpoint_lock:
            self._checkpoint = note
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(note)
            except Exception:  # a listener must never stop the sequencer
                logger.exception("checkpoint listener failed")

    def add_checkpoint_listener(self, listener: Callable[[bytes], None]) -> None:
        """Call ``listener(note)`` on the sequencer's thread after each new checkpoint.

        It must return quickly (hand the note to another thread).
        """
        with self._checkpoint_lock:
            self._listeners.append(listener)

    def add_batch_listener(self, listener: Callable[[BatchStats], None]) -> None:
        """Call ``listener`` on the sequencer's thread after each committed batch (it must
        return quickly): what the batch held and how long its commit took."""
        self._sequencer.add_batch_listener(listener)

    # --- state, for metrics -----------------------------------------------
    def checkpoint_signed_at(self) -> float:
        """When this process last signed a checkpoint (``time.monotonic()``), or opened."""
        return self._sequencer.signed_at

    def unindexed_entries(self) -> int:
        """Committed leaves not yet in the hash-keyed indexes (the index tail's depth)."""
        return self._sequencer.unindexed_entries

    def queued_entries(self) -> int:
        """Entries waiting for the sequencer."""
        return self._sequencer.queued_entries

    def cosignature_times(self) -> dict[str, int]:
        """Each accepted witness's newest stored cosignature time (POSIX seconds), by
        ``<name>+<key ID>`` (:func:`~sealog.server.cosignatures.witness_key`)."""
        accepted = {witness_key(w.name, w.key_hash) for w in self.witnesses}
        with self.storage.read() as snap:
            stored = decode_cosignatures(snap.cosignatures())
        return {key: s.timestamp for key, s in stored.items() if key in accepted}

    # --- writes -----------------------------------------------------------
    def append(self, items: Sequence[AppendItem], identity: str) -> AppendOutcome:
        """Append entries durably; blocks until they are committed."""
        return self.submit(items, identity).result(timeout=self.settings.append_timeout_s)

    def submit(self, items: Sequence[AppendItem], identity: str) -> Future[AppendOutcome]:
        """Queue entries for appending; the future completes once they are committed."""
        return self._sequencer.submit(items, identity)

    def watch_clock(self, listener: Callable[[str | None], None]) -> None:
        """Tell ``listener`` now, and on each change, whether appends are refused because
        the clock is behind the last entry's time (a message) or not (None)."""
        self._sequencer.watch_clock(listener)

    def close(self) -> None:
        """Commit and answer what is queued, then stop writing."""
        self._sequencer.stop()

    # --- reads ------------------------------------------------------------
    def latest_checkpoint(self) -> bytes:
        """The latest signed checkpoint note (of a tree that is stored)."""
        with self._checkpoint_lock:
            return self._checkpoint

    @staticmethod
    def _need_size(snap: ReadSnapshot, field: str, tree_size: int) -> None:
        size = snap.size()
        if tree_size > size:
            raise OutOfRangeError(f"{field}: {tree_size}, but the log's size is {size}")

    def checkpoint(
        self, first_tree_size: int = 0, *, witnessed: bool = False
    ) -> tuple[bytes, list[bytes]]:
        """The latest checkpoint, with the consistency proof from ``first_tree_size`` if > 0.

        With ``witnessed``, the witnessed checkpoint instead
        (:mod:`sealog.server.cosignatures`); :class:`NotFoundError` if there is none yet.
        """
        with self.storage.read() as snap:
            note = snap.checkpoint()
            assert note is not None
            size = snap.size()
            what = "the log's size"
            if witnessed:
                stored = decode_cosignatures(snap.cosignatures())
                found = witnessed_note(stored, self.witnesses)
                if found is None:
                    raise NotFoundError(
                        "no witnessed checkpoint yet: no accepted witness has cosigned one"
                        if self.witnesses
                        else "no witnessed checkpoint: this log accepts no witnesses"
                    )
                note = found
                size = int(note.split(b"\n", 2)[1])
                what = "the witnessed checkpoint's size"
            if first_tree_size > size:
                raise OutOfRangeError(
                    f"GetCheckpointRequest.first_tree_size: {first_tree_size}, but {what} is {size}"
                )
            proof: list[bytes] = []
            if 0 < first_tree_size < size:
                proof = build_consistency_proof(snap, first_tree_size, size)
            return note, proof

    def inclusion_proof(self, index: int, tree_size: int, field: str) -> list[bytes]:
        """The inclusion proof of ``index`` in the tree of ``tree_size``."""
        with self.storage.read() as snap:
            self._need_size(snap, f"{field}.tree_size", tree_size)
            return build_inclusion_proof(snap, index, tree_size)

    def inclusion_proof_by_hash(self, leaf_hash: bytes, tree_size: int) -> tuple[int, list[bytes]]:
        """The smallest index below ``tree_size`` with this leaf hash, and its inclusion proof.

        Leaves not indexed yet are in the sequencer's index tail, whose view is
        taken after the snapshot opens (see :mod:`sealog.server.index_tail`).
        """
        for _attempt in range(100):
            with self.storage.read() as snap:
                self._need_size(snap, "GetInclusionProofByHashRequest.tree_size", tree_size)
                try:
                    index = find_leaf_hash(
                        snap, self._sequencer.index_tail.view, leaf_hash, tree_size
                    )
                except StaleSnapshotError:
                    continue  # a flush ended since the snapshot opened: take a newer one
                if index is None:
                    raise NotFoundError(
                        f"no leaf with hash {leaf_hash.hex()} in the tree of size {tree_size}"
                    )
                return index, build_inclusion_proof(snap, index, tree_size)
        raise UnavailableError("the leaf-hash index kept changing; retry", 0.1)

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        """The consistency proof from ``size1`` to ``size2``."""
        with self.storage.read() as snap:
            self._need_size(snap, "GetConsistencyProofRequest.second_tree_size", size2)
            return build_consistency_proof(snap, size1, size2)

    def entry_and_proof(self, index: int, tree_size: int) -> tuple[bytes, list[bytes]]:
        """Leaf ``index`` and its inclusion proof in the tree of ``tree_size``."""
        with self.storage.read() as snap:
            self._need_size(snap, "GetEntryAndProofRequest.tree_size", tree_size)
            return snap.leaf(index), build_inclusion_proof(snap, index, tree_size)

    def entries(
        self, start: int, end: int, tree_size: int, page_size: int, page_bytes: int | None = None
    ) -> Iterator[EntriesPage]:
        """Leaves ``[start, end)`` in pages, each proven against the tree of ``tree_size``.

        A page holds at most ``page_size`` leaves and, with ``page_bytes``, ends
        at the leaf that takes its leaves to ``page_bytes`` or more (so it holds
        at least one leaf, and less than ``page_bytes`` plus one leaf). Each
        page is read in its own snapshot, so a long stream never pins old pages
        in LMDB; the tree of ``tree_size`` never changes, so every page proves
        against the same root.
        """
        with self.storage.read() as snap:
            self._need_size(snap, "GetEntriesRequest.tree_size", tree_size)
        page_start = start
        while page_start < end:
            with self.storage.read() as snap:
                leaves: list[bytes] = []
                size = 0
                for leaf in snap.leaves(page_start, min(end, page_start + page_size)):
                    leaves.append(leaf)
                    size += len(leaf)
                    if page_bytes is not None and size >= page_bytes:
                        break
                page_end = page_start + len(leaves)
                frontier, consistency = build_range_proof(snap, page_start, page_end, tree_size)
            yield EntriesPage(page_start, tuple(leaves), tuple(frontier), tuple(consistency))
            page_start = page_end

    def find_by_identity(
        self,
        identity: str,
        since_ms: int,
        until_ms: int,
        after_index: int,
        tree_size: int,
        limit: int,
    ) -> list[tuple[int, bytes]]:
        """The leaves ``identity`` appended, accepted in ``[since_ms, until_ms]``, oldest first.

        Only leaves with ``after_index < index < tree_size`` count (``after_index``
        -1 starts at the beginning); at most ``limit`` ``(index, leaf)`` pairs.
        The index by identity records where each run of consecutive leaves of one
        identity and time starts; the leaves of a run are read from its first on
        (or from where the page starts, inside it) until the identity or the
        time changes. It only names candidates: each leaf's identity and time are
        read from the leaf itself. Because acceptance times never go backwards
        along the log, a page can start at the time of the leaf ``after_index``
        instead of scanning from ``since_ms``.
        """
        out: list[tuple[int, bytes]] = []
        with self.storage.read() as snap:
            self._need_size(snap, "SearchEntriesRequest.tree_size", tree_size)
            if limit <= 0 or since_ms > until_ms or after_index + 1 >= tree_size:
                return out
            start_ms, start_index = since_ms, 0
            if after_index >= 0:
                after_ms = _parse(snap, after_index).accepted_at_ms
                if after_ms >= since_ms:
                    start_ms, start_index = after_ms, after_index + 1
            next_index = after_index + 1  # every leaf below it was returned or passed over
            for ms, first in snap.iter_by_identity(
                identity_prefix(identity), start_ms, start_index
            ):
                if ms > until_ms or first >= tree_size:
                    break  # later records are later in time and in the log
                index = max(first, next_index)
                if ms < since_ms or index >= tree_size:
                    continue  # a record out of order (fsck says so)
                for leaf in snap.leaves(index, tree_size):
                    parsed = _parse(snap, index, leaf)
                    if parsed.identity != identity or parsed.accepted_at_ms != ms:
                        break  # the run ended (or it was another identity's, same prefix)
                    out.append((index, leaf))
                    if len(out) >= limit:
                        return out
                    index += 1
                next_index = max(next_index, index)
        return out

    # --- witness cosignatures -----------------------------------------------
    def add_cosignature(self, note: bytes) -> bytes:
        """Store the cosignatures on one of this log's checkpoints; return the witnessed note.

        The note must carry this log's valid signature over a checkpoint whose
        root is this tree's root at that size, and at least one valid
        cosignature by an accepted witness (:class:`PermissionDeniedError`
        otherwise; a bad line by an accepted witness is
        :class:`InvalidArgumentError`). Lines by other keys are dropped. The
        note is checked here; the sequencer stores what it carries, each witness
        keeping its newest cosignature (:meth:`Sequencer.store_cosignatures`).
        Raises :class:`UnavailableError` if storage cannot take it, or does not
        within ``append_timeout_s``.
        """
        field = "AddCosignatureRequest.checkpoint"
        if not self.witnesses:
            raise PermissionDeniedError(
                f"{field}: this log accepts no witness cosignatures "
                "(start it with --witness-vkey to name the witnesses it accepts)"
            )
        try:
            signed = open_checkpoint(note, self._verifier, origin=self.origin)
            cosignatures = verify_cosignatures(note, self.witnesses)
        except InvalidSignatureError as e:
            raise InvalidArgumentError(
                f"{field}: the signature by {e.name}+{e.key_hash:08x} does not verify"
            ) from e
        except (FormatError, VerificationError) as e:
            raise InvalidArgumentError(f"{field}: not a checkpoint signed by this log: {e}") from e
        if not cosignatures:
            names = ", ".join(f"{w.name}+{w.key_hash:08x}" for w in self.witnesses)
            raise PermissionDeniedError(
                f"{field}: no cosignature by a witness this log accepts (it accepts {names})"
            )
        cp = signed.checkpoint
        with self.storage.read() as snap:
            self._need_size(snap, f"{field} tree size", cp.size)
            root = (
                CompactRange(cp.size, snap.read_hashes(subtree_nodes(0, cp.size))).root()
                if cp.size
                else EMPTY_ROOT
            )
        if root != cp.root_hash:
            logger.error("a checkpoint signed by this log's key is not of its tree: %r", note)
            raise InvalidArgumentError(
                f"{field}: root of size {cp.size} is not this log's root at that size"
            )
        text, lines = parse_note(note)
        log_line = signed.verified[0]
        wanted = {(c.name, c.key_hash) for c in cosignatures}
        new: list[StoredCosignature] = []
        for line in lines:
            if (line.name, line.key_hash) in wanted:
                wanted.discard((line.name, line.key_hash))
                new.append(StoredCosignature(text, log_line, line))
        stored = self._sequencer.store_cosignatures(new, self.witnesses)
        try:
            return stored.result(timeout=self.settings.append_timeout_s)
        except concurrent.futures.TimeoutError:
            raise UnavailableError(
                f"{field}: the cosignature was not stored in time; retry", 1.0
            ) from None


def _parse(snap: ReadSnapshot, index: int, leaf: bytes | None = None) -> Leaf:
    """Leaf ``index``, parsed; a leaf that does not parse is storage corruption."""
    try:
        return Leaf.parse(snap.leaf(index) if leaf is None else leaf)
    except FormatError as e:
        raise StorageCorruptError(f"entries[{index}]: {e}") from e
