"""The log: opening storage safely, appending through the sequencer, serving proofs.

This is the domain layer the gRPC servicer calls. Every read runs in one
snapshot and is answered against a stated tree size; a size the log has not
reached is :class:`OutOfRangeError`, never a proof for another tree.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sealog.client.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.errors import SealogError
from sealog.client.hashing import EMPTY_ROOT
from sealog.client.leaf import Leaf
from sealog.client.note import NoteSigner, NoteVerifier
from sealog.client.proof import subtree_nodes
from sealog.server.config import Settings
from sealog.server.errors import NotFoundError, OutOfRangeError
from sealog.server.proofs import (
    build_consistency_proof,
    build_inclusion_proof,
    build_range_proof,
)
from sealog.server.sequencer import AppendItem, AppendOutcome, Sequencer
from sealog.server.storage import (
    FORMAT_VERSION,
    META_FORMAT,
    META_ORIGIN,
    ReadSnapshot,
    Storage,
)

__all__ = ["EntriesPage", "Log", "StartupCheckError"]


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
    ) -> None:
        """Open the log: create it if the storage is empty, else check it (see :meth:`_check`).

        Raises :class:`StartupCheckError` if the stored tree, the stored
        checkpoint and this key and origin do not all agree.
        """
        self.storage = storage
        self.origin = origin
        self.settings = settings or Settings()
        self._verifier = verifier
        self._checkpoint_lock = threading.Lock()
        tree, last_ms = self._open(signer)
        self._sequencer = Sequencer(
            storage,
            signer,
            origin,
            tree,
            self.settings,
            last_ms=last_ms,
            on_checkpoint=self._set_checkpoint,
        )
        self._sequencer.start()

    # --- opening ----------------------------------------------------------
    def _open(self, signer: NoteSigner) -> tuple[CompactRange, int]:
        with self.storage.read() as snap:
            note = snap.checkpoint()
        if note is None:
            return self._create(signer), 0
        return self._check(note)

    def _create(self, signer: NoteSigner) -> CompactRange:
        with self.storage.read() as snap:
            if snap.stored_size():
                raise StartupCheckError("storage holds leaves but no checkpoint")
        note = sign_checkpoint(Checkpoint(self.origin, 0, EMPTY_ROOT), signer)
        with self.storage.write() as w:
            w.set_meta(META_FORMAT, FORMAT_VERSION)
            w.set_meta(META_ORIGIN, self.origin.encode())
            w.set_checkpoint(note)
        self._checkpoint = note
        return CompactRange()

    def _check(self, note: bytes) -> tuple[CompactRange, int]:
        """The startup self-check: cheap (the frontier, not the whole tree), and strict."""
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
            tree = CompactRange(cp.size, snap.read_hashes(subtree_nodes(0, cp.size)))
            if tree.root() != cp.root_hash:
                raise StartupCheckError(
                    f"stored tree of size {cp.size} has root {tree.root().hex()}, "
                    f"the signed checkpoint says {cp.root_hash.hex()}"
                )
            last_ms = Leaf.parse(snap.leaf(cp.size - 1)).accepted_at_ms if cp.size else 0
        self._checkpoint = note
        return tree, last_ms

    def _set_checkpoint(self, note: bytes) -> None:
        with self._checkpoint_lock:
            self._checkpoint = note

    # --- writes -----------------------------------------------------------
    def append(self, items: Sequence[AppendItem], identity: str) -> AppendOutcome:
        """Append entries durably; blocks until they are committed."""
        future = self._sequencer.submit(items, identity)
        return future.result(timeout=self.settings.append_timeout_s)

    def close(self) -> None:
        """Commit and answer what is queued, then stop writing."""
        self._sequencer.stop()

    # --- reads ------------------------------------------------------------
    def latest_checkpoint(self) -> bytes:
        """The latest signed checkpoint note (of a tree that is stored)."""
        with self._checkpoint_lock:
            return self._checkpoint

    def _size(self, snap: ReadSnapshot) -> int:
        note = snap.checkpoint()
        assert note is not None
        return int(note.split(b"\n", 2)[1])

    def _need_size(self, snap: ReadSnapshot, field: str, tree_size: int) -> None:
        size = self._size(snap)
        if tree_size > size:
            raise OutOfRangeError(f"{field}: {tree_size}, but the log's size is {size}")

    def checkpoint(self, first_tree_size: int = 0) -> tuple[bytes, list[bytes]]:
        """The latest checkpoint, with the consistency proof from ``first_tree_size`` if > 0."""
        with self.storage.read() as snap:
            note = snap.checkpoint()
            assert note is not None
            size = self._size(snap)
            if first_tree_size > size:
                raise OutOfRangeError(
                    f"GetCheckpointRequest.first_tree_size: {first_tree_size}, "
                    f"but the log's size is {size}"
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
        """The smallest index below ``tree_size`` with this leaf hash, and its inclusion proof."""
        with self.storage.read() as snap:
            self._need_size(snap, "GetInclusionProofByHashRequest.tree_size", tree_size)
            index = snap.find_leaf_hash(leaf_hash, tree_size)
            if index is None:
                raise NotFoundError(
                    f"no leaf with hash {leaf_hash.hex()} in the tree of size {tree_size}"
                )
            return index, build_inclusion_proof(snap, index, tree_size)

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
        self, start: int, end: int, tree_size: int, page_size: int
    ) -> Iterator[EntriesPage]:
        """Leaves ``[start, end)`` in pages, each proven against the tree of ``tree_size``.

        Each page is read in its own snapshot, so a long stream never pins
        old pages in LMDB; the tree of ``tree_size`` never changes, so every
        page proves against the same root.
        """
        with self.storage.read() as snap:
            self._need_size(snap, "GetEntriesRequest.tree_size", tree_size)
        for page_start in range(start, end, page_size):
            page_end = min(end, page_start + page_size)
            with self.storage.read() as snap:
                leaves = tuple(snap.leaves(page_start, page_end))
                frontier, consistency = build_range_proof(snap, page_start, page_end, tree_size)
            yield EntriesPage(page_start, leaves, tuple(frontier), tuple(consistency))
