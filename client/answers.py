"""Verifying the log's composite answers: pure functions over plain values.

An Append answer, a GetEntries page or a search result is several things that
must be checked together: leaves, the indices they claim, duplicates, and
the proof that ties them to a signed checkpoint. Each function here takes
what the log sent, as plain values (ints, bytes, leaf bytes, the hashes of a
proof) together with a checkpoint whose signature the caller has already
verified, and either returns the verified result (a frozen dataclass) or
raises a :class:`~sealog.client.errors.VerificationError` saying what does
not hold. Nothing here does I/O: :class:`~sealog.client.log_client.LogClient`
turns the gRPC messages into these values and calls these functions, and the
monitor's evidence re-check calls them offline.

Hashes are RFC 9162 §2.1.1 (leaf hash ``SHA-256(0x00 || leaf)``); inclusion
proofs are verified per §2.1.3.2 and consistency proofs per §2.1.4.2; a
range proof is a left frontier plus a consistency proof
(:mod:`sealog.client.range_proof`); leaves are the v1 format of
:mod:`sealog.client.leaf` (docs/leaf-format.md).
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from sealog.client.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.errors import EntriesMismatchError, FormatError, VerificationError
from sealog.client.hashing import leaf_hash as rfc6962_leaf_hash
from sealog.client.leaf import Leaf, leaf_problem
from sealog.client.note import NoteVerifier
from sealog.client.range_proof import VerifiedRange, verify_range
from sealog.client.verify import verify_consistency, verify_inclusion

__all__ = [
    "DUPLICATE_CLOCK_SKEW_S",
    "AnsweredEntry",
    "AppendResult",
    "Entry",
    "InclusionProof",
    "Receipt",
    "malformed_leaf",
    "verify_append_answer",
    "verify_audit_page",
    "verify_audited_tree",
    "verify_entries_complete",
    "verify_entries_page",
    "verify_entry",
    "verify_search_result",
]

DUPLICATE_CLOCK_SKEW_S = 300.0
"""Default bound on how far a log's clock may be behind the client's (docs/api.md)."""


# --- verified answers -----------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """A leaf of the log, verified to be at ``index`` in some checkpoint's tree."""

    index: int
    leaf: bytes

    @property
    def leaf_hash(self) -> bytes:
        """The RFC 6962 leaf hash."""
        return rfc6962_leaf_hash(self.leaf)

    def parse(self) -> Leaf:
        """The leaf's fields (acceptance time, identity, payload)."""
        return Leaf.parse(self.leaf)


@dataclass(frozen=True)
class InclusionProof:
    """A verified inclusion proof: leaf ``index`` with ``leaf_hash`` is in ``checkpoint``'s tree."""

    index: int
    leaf_hash: bytes
    proof: tuple[bytes, ...]
    checkpoint: SignedCheckpoint

    def verify(self) -> None:
        """Re-check the proof against the checkpoint (offline, RFC 9162 §2.1.3.2)."""
        cp = self.checkpoint.checkpoint
        verify_inclusion(self.index, cp.size, self.leaf_hash, self.proof, cp.root_hash)


@dataclass(frozen=True)
class Receipt:
    """Proof that an appended event is in the log: its leaf, index, checkpoint and path."""

    index: int
    leaf: bytes
    checkpoint: SignedCheckpoint
    inclusion_proof: tuple[bytes, ...]
    duplicate: bool = False
    """True when this answers a retry: the event was already in the log at ``index``."""

    def verify(self, verifier: NoteVerifier) -> None:
        """Re-check everything offline: the checkpoint signature and the inclusion proof."""
        signed = open_checkpoint(self.checkpoint.note, verifier)
        verify_entry(signed, self.index, self.leaf, self.inclusion_proof)


@dataclass(frozen=True)
class AppendResult:
    """The verified answer to a batch append. Receipts are derived on demand."""

    checkpoint: SignedCheckpoint
    entries: tuple[Entry, ...]
    duplicates: tuple[bool, ...]
    _proofs: dict[int, tuple[bytes, ...]]
    _range: VerifiedRange | None

    def receipt(self, i: int) -> Receipt:
        """The receipt of the ``i``-th entry of the request, with its inclusion proof."""
        entry = self.entries[i]
        proof = self._proofs.get(entry.index)
        if proof is None:
            assert self._range is not None
            proof = tuple(self._range.inclusion_proof(entry.index))
        return Receipt(entry.index, entry.leaf, self.checkpoint, proof, self.duplicates[i])

    def receipts(self) -> list[Receipt]:
        """Every entry's receipt, in request order."""
        return [self.receipt(i) for i in range(len(self.entries))]


# --- single leaves --------------------------------------------------------------------
def _parse_leaf(data: bytes) -> Leaf:
    """Parse a leaf the log sent; a malformed one is the log's failure to verify."""
    try:
        return Leaf.parse(data)
    except FormatError as e:
        raise VerificationError(f"the log answered a malformed leaf: {e}") from e


def verify_entry(
    checkpoint: SignedCheckpoint, index: int, leaf: bytes, inclusion_proof: Sequence[bytes]
) -> tuple[Entry, InclusionProof]:
    """Check that ``leaf`` is a valid leaf at ``index`` of ``checkpoint``'s tree.

    Preconditions: ``checkpoint``'s signature has been verified. The leaf must
    parse (docs/leaf-format.md) and ``inclusion_proof`` must lead from its
    leaf hash to the checkpoint's root (RFC 9162 §2.1.3.2). Raises
    :class:`VerificationError` (``InvalidProofError``, ``RootMismatchError``).
    """
    cp = checkpoint.checkpoint
    _parse_leaf(leaf)
    lh = rfc6962_leaf_hash(leaf)
    verify_inclusion(index, cp.size, lh, inclusion_proof, cp.root_hash)
    return Entry(index, leaf), InclusionProof(index, lh, tuple(inclusion_proof), checkpoint)


def verify_search_result(
    checkpoint: Checkpoint,
    index: int,
    leaf: bytes,
    inclusion_proof: Sequence[bytes],
    *,
    identity: str,
    since_ms: int,
    until_ms: int,
    next_index: int,
) -> Entry:
    """Check one SearchEntries result: a leaf of ``identity`` in the time window, in order.

    Preconditions: ``checkpoint``'s signature has been verified; ``next_index``
    is one past the previous result of the same search (0 for the first), so
    results must come in index order. The leaf must parse, carry
    ``identity`` and an acceptance time in ``[since_ms, until_ms]``
    (``until_ms = 0``: no upper bound), and be at ``index`` of the
    checkpoint's tree (RFC 9162 §2.1.3.2). Raises :class:`VerificationError`.
    This cannot show that a search left entries out.
    """
    parsed = _parse_leaf(leaf)
    if index < next_index:
        raise VerificationError(
            f"SearchEntries answered index {index}, want >= {next_index} (in order)"
        )
    if parsed.identity != identity or not (
        since_ms <= parsed.accepted_at_ms and (not until_ms or parsed.accepted_at_ms <= until_ms)
    ):
        raise VerificationError(
            f"SearchEntries answered leaf {index} of identity {parsed.identity!r} "
            f"at {parsed.accepted_at_ms} ms, which does not match the search"
        )
    verify_inclusion(
        index, checkpoint.size, rfc6962_leaf_hash(leaf), inclusion_proof, checkpoint.root_hash
    )
    return Entry(index, leaf)


# --- Append answers -------------------------------------------------------------------
@dataclass(frozen=True)
class AnsweredEntry:
    """One entry of an Append answer, as the log sent it (``AppendedEntry``, docs/api.md).

    ``inclusion_proof`` is sent for a duplicate only: a new entry is proven by
    the answer's range proof.
    """

    index: int
    leaf: bytes
    duplicate: bool = False
    inclusion_proof: tuple[bytes, ...] = ()


def verify_append_answer(
    checkpoint: SignedCheckpoint,
    payloads: Sequence[bytes],
    entries: Sequence[AnsweredEntry],
    *,
    start: int,
    end: int,
    left_frontier: Sequence[bytes],
    consistency_proof: Sequence[bytes],
    generated: Sequence[bool] = (),
    sent_ms: int = 0,
    identity: str | None = None,
    clock_skew_s: float = DUPLICATE_CLOCK_SKEW_S,
) -> AppendResult:
    """Check an Append answer for ``payloads``; return the verified :class:`AppendResult`.

    Preconditions: ``checkpoint`` is the answer's checkpoint, its signature
    and origin verified; ``entries`` are the answer's entries, ``[start,
    end)`` the range it claims for the new ones and ``left_frontier`` /
    ``consistency_proof`` its range proof. ``generated`` is empty or has one
    flag per payload: ``generated[i]`` says the caller made entry ``i``'s
    idempotency key up for this call, first sent at ``sent_ms`` (the
    caller's clock, ms since the epoch). ``identity``, if given, is the
    identity the log must have stamped into every leaf; ``clock_skew_s``
    bounds how far the log's clock may be behind the caller's.

    Checks, in order: one entry per payload; each leaf parses and holds its
    payload; a duplicate's inclusion proof (RFC 9162 §2.1.3.2); new entries
    take consecutive indices from ``start``; the duplicates are possible
    (:func:`_check_duplicates`, docs/api.md "Duplicate answers"); the new
    entries fill ``[start, end)`` and the range proof leads from their leaf
    hashes to the checkpoint's root (RFC 9162 §2.1.4.2). Raises
    :class:`VerificationError`.
    """
    cp = checkpoint.checkpoint
    if len(entries) != len(payloads):
        raise VerificationError(f"append answered {len(entries)} entries for {len(payloads)} sent")
    verified_entries: list[Entry] = []
    duplicates: list[bool] = []
    proofs: dict[int, tuple[bytes, ...]] = {}
    new_hashes: list[bytes] = []
    parsed: list[Leaf] = []
    for i, (e, payload) in enumerate(zip(entries, payloads, strict=True)):
        leaf = _parse_leaf(e.leaf)
        parsed.append(leaf)
        if leaf.payload != payload:
            raise VerificationError(
                f"entry {i}: the log answered a leaf with another payload"
                + (" (idempotency key reused for a different event?)" if e.duplicate else "")
            )
        verified_entries.append(Entry(e.index, e.leaf))
        duplicates.append(e.duplicate)
        lh = rfc6962_leaf_hash(e.leaf)
        if e.duplicate:
            verify_inclusion(e.index, cp.size, lh, e.inclusion_proof, cp.root_hash)
            proofs[e.index] = tuple(e.inclusion_proof)
        else:
            if e.index != start + len(new_hashes):
                raise VerificationError(
                    f"entry {i}: index {e.index}, want {start + len(new_hashes)} "
                    "(new entries take consecutive indices)"
                )
            new_hashes.append(lh)
    _check_duplicates(entries, parsed, generated, sent_ms, identity, clock_skew_s)
    verified = None
    if new_hashes:
        if start + len(new_hashes) != end:
            raise VerificationError(
                f"append answered range [{start}, {end}) for {len(new_hashes)} new entries"
            )
        verified = verify_range(
            start, new_hashes, cp.size, cp.root_hash, left_frontier, consistency_proof
        )
    return AppendResult(checkpoint, tuple(verified_entries), tuple(duplicates), proofs, verified)


def _check_duplicates(
    entries: Sequence[AnsweredEntry],
    leaves: Sequence[Leaf],
    generated: Sequence[bool],
    sent_ms: int,
    identity: str | None,
    clock_skew_s: float,
) -> None:
    """Reject an answer that calls an entry a duplicate when no retry of ours can
    have made it one (docs/api.md, "Duplicate answers"): the receipt would vouch
    for an event the log may never have recorded.

    - Every leaf of one answer carries one identity, the one the log
      established for this call (``identity`` if set): keys are scoped to the
      identity, so a duplicate's leaf carries the caller's identity.
    - For a key the caller generated, only an earlier attempt of this very
      call can have used it: all such entries are duplicates or none is, and
      the duplicates were accepted together (one time, indices in request
      order), no earlier than ``sent_ms`` less ``clock_skew_s``.
    """
    identities = {leaf.identity for leaf in leaves}
    if identity is not None and identities != {identity}:
        wrong = next(i for i, leaf in enumerate(leaves) if leaf.identity != identity)
        raise VerificationError(
            f"entry {wrong}: the log stamped identity {leaves[wrong].identity!r}, "
            f"this client authenticates as {identity!r}"
            + (" (a duplicate of someone else's event?)" if entries[wrong].duplicate else "")
        )
    if len(identities) > 1:
        other = next(i for i, leaf in enumerate(leaves) if leaf.identity != leaves[0].identity)
        raise VerificationError(
            f"entries 0 and {other}: the log stamped identities {leaves[0].identity!r} "
            f"and {leaves[other].identity!r} into one answer: every leaf of an append, "
            "a duplicate too (keys belong to one identity), carries the caller's identity"
        )
    mine = [i for i, g in enumerate(generated) if g]
    dups = [i for i in mine if entries[i].duplicate]
    if not dups:
        return
    if len(dups) != len(mine):
        fresh = next(i for i in mine if not entries[i].duplicate)
        raise VerificationError(
            f"entry {dups[0]}: the log answered duplicate=true for a key this client "
            f"generated for this call, but entry {fresh} (also a generated key) as new: "
            "an earlier attempt of the call would have logged both"
        )
    not_before = sent_ms - int(clock_skew_s * 1000)
    for i in dups:
        accepted = leaves[i].accepted_at_ms
        if accepted < not_before:
            raise VerificationError(
                f"entry {i}: the log answered duplicate=true with a leaf accepted at "
                f"{accepted} ms, {sent_ms - accepted} ms before this append was first "
                f"sent (clock skew tolerance {clock_skew_s:g} s), for an "
                "idempotency key this client generated for it: no attempt of this "
                "call can have logged that leaf, so this event may not be in the log"
            )
    first = dups[0]
    for before, i in itertools.pairwise(dups):
        if (
            leaves[i].accepted_at_ms != leaves[first].accepted_at_ms
            or entries[i].index <= entries[before].index
        ):
            raise VerificationError(
                f"entries {before} and {i}: duplicates of keys this client generated "
                "for this call, but not of one earlier attempt (another acceptance "
                "time, or out of order)"
            )


# --- GetEntries pages -----------------------------------------------------------------
def _check_window(page_start: int, count: int, next_index: int, end: int) -> None:
    if page_start != next_index or not count or next_index + count > end:
        raise VerificationError(
            f"GetEntries page starts at {page_start} with {count} leaves, "
            f"want a page at {next_index} ending by {end}"
        )


def verify_entries_page(
    checkpoint: Checkpoint,
    page_start: int,
    leaves: Sequence[bytes],
    left_frontier: Sequence[bytes],
    consistency_proof: Sequence[bytes],
    *,
    next_index: int,
    end: int,
) -> tuple[Entry, ...]:
    """Check one GetEntries page of a read of ``[.., end)``; return its entries.

    Preconditions: ``checkpoint``'s signature has been verified and
    ``end <= checkpoint.size``; ``next_index`` is where this page must start
    (the read's start, or one past the previous page). The page must start
    there, hold at least one leaf and end by ``end``; every leaf must parse
    (docs/leaf-format.md); and the range proof (``left_frontier``,
    ``consistency_proof``) must lead from the leaves' hashes to the
    checkpoint's root (RFC 9162 §2.1.4.2, :func:`verify_range`). The whole
    page is checked before any entry is returned. Raises
    :class:`VerificationError`.
    """
    _check_window(page_start, len(leaves), next_index, end)
    for leaf in leaves:
        _parse_leaf(leaf)
    verify_range(
        page_start,
        [rfc6962_leaf_hash(leaf) for leaf in leaves],
        checkpoint.size,
        checkpoint.root_hash,
        left_frontier,
        consistency_proof,
    )
    return tuple(Entry(i, leaf) for i, leaf in enumerate(leaves, page_start))


def verify_entries_complete(next_index: int, end: int) -> None:
    """Check that a read of entries up to ``end`` reached it (the log did not stop early).

    ``next_index`` is one past the last leaf verified. Raises
    :class:`VerificationError`.
    """
    if next_index != end:
        raise VerificationError(f"GetEntries stopped at {next_index}, want {end}")


def malformed_leaf(start: int, leaves: Sequence[bytes]) -> tuple[int, str] | None:
    """The index and problem of the first of ``leaves`` (at ``start``...) that is not a
    valid v1 leaf (docs/leaf-format.md), or ``None`` if they all are."""
    for i, leaf in enumerate(leaves, start):
        problem = leaf_problem(leaf)
        if problem:
            return i, problem
    return None


def verify_audited_tree(tree: CompactRange, checkpoint: SignedCheckpoint) -> None:
    """Check a tree audited up to ``checkpoint``'s size against its root.

    ``tree`` is the compact range of the leaves ``[0, tree.size)`` the auditor
    re-hashed itself. At the checkpoint's size its root must be the
    checkpoint's (RFC 9162 §2.1.1); at another size there is nothing to
    compare. Raises :class:`EntriesMismatchError` (no page: no leaves, no proof).
    """
    cp = checkpoint.checkpoint
    if tree.size == cp.size and tree.root() != cp.root_hash:
        raise EntriesMismatchError(
            checkpoint.note,
            tree.size,
            tree.hashes,
            (),
            (),
            tree.root(),
            f"the audited tree of size {tree.size} has another root than the checkpoint",
        )


def verify_audit_page(
    tree: CompactRange,
    checkpoint: SignedCheckpoint,
    page_start: int,
    leaves: Sequence[bytes],
    consistency_proof: Sequence[bytes],
    *,
    end: int | None = None,
) -> CompactRange:
    """Re-hash a page of a full audit onto ``tree``; return the tree after the page.

    The auditor does not use the log's left frontier: ``tree`` is the compact
    range of the leaves ``[0, tree.size)`` it verified itself (not changed).
    Preconditions: ``checkpoint``'s signature has been verified and
    ``tree.size < end <= checkpoint.size`` (``end`` defaults to the
    checkpoint's size).

    The page must start at ``tree.size``, hold at least one leaf and end by
    ``end`` (else :class:`VerificationError`). Then every leaf must be a
    valid v1 leaf (docs/leaf-format.md), and the root of the leaves
    ``[0, page end)`` must be the checkpoint's root at its size, or lead to
    it with ``consistency_proof`` (RFC 9162 §2.1.4.2); otherwise
    :class:`EntriesMismatchError`, which carries the checkpoint note, the tree
    before the page, the page's leaves, the proof and the root computed.
    """
    cp = checkpoint.checkpoint
    end = cp.size if end is None else end
    _check_window(page_start, len(leaves), tree.size, end)
    current = tree.copy()
    bad: tuple[int, str] | None = None
    sha256 = hashlib.sha256
    append = current.append
    # One pass, checking and hashing each leaf (the inner loop of a full audit):
    # the rules of malformed_leaf, stopping at the first malformed leaf.
    for i, leaf in enumerate(leaves, tree.size):
        problem = leaf_problem(leaf)
        if problem:
            bad = (i, problem)
            break
        append(sha256(b"\x00" + leaf).digest())
    root = current.root()
    reason = ""
    if bad is not None:
        reason = f"leaf {bad[0]} is malformed: {bad[1]}"
    else:
        try:
            if current.size == cp.size:
                if consistency_proof:
                    raise VerificationError(
                        f"page ends at the checkpoint's size but has {len(consistency_proof)} "
                        "consistency hashes, want 0"
                    )
                if root != cp.root_hash:
                    raise VerificationError(
                        f"the root of the first {current.size} leaves is not the checkpoint's root"
                    )
            else:
                verify_consistency(current.size, cp.size, root, cp.root_hash, consistency_proof)
        except VerificationError as e:
            reason = str(e)
    if reason:
        raise EntriesMismatchError(
            checkpoint.note, tree.size, tree.hashes, leaves, consistency_proof, root, reason
        )
    return current
