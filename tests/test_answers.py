"""The verifiers of composite answers, called with plain values: no server, no channel.

Every answer below is built from the RFC 6962 reference tree
(tests/rfc6962_reference.py), signed with a test key, and handed to
:mod:`sealog.client.answers` as ints, bytes and tuples of hashes. The honest
answer verifies; each tampered field is rejected with the error saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pytest
from merkle_support import flip_bit
from rfc6962_reference import ReferenceTree

from sealog.client.answers import (
    AnsweredEntry,
    AppendResult,
    malformed_leaf,
    verify_append_answer,
    verify_audit_page,
    verify_audited_tree,
    verify_entries_complete,
    verify_entries_page,
    verify_entry,
    verify_search_result,
)
from sealog.client.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint, sign_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.errors import (
    EntriesMismatchError,
    InvalidProofError,
    LeafFormatError,
    RootMismatchError,
    VerificationError,
)
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.monitor.evidence import Evidence, check_evidence
from sealog.client.note import Ed25519Signer
from sealog.client.proof import subtree_nodes

SIGNER = Ed25519Signer.generate("answers.example/log")
VERIFIER = SIGNER.verifier()
T0 = 1_767_225_600_000
IDENTITY = "spiffe://example.org/ci"


def leaf(
    i: int, payload: bytes | None = None, *, ms: int | None = None, who: str = IDENTITY
) -> bytes:
    return Leaf(T0 + i if ms is None else ms, who, payload or f"event {i}".encode()).to_bytes()


def signed(leaves: Sequence[bytes], size: int | None = None) -> SignedCheckpoint:
    size = len(leaves) if size is None else size
    cp = Checkpoint(SIGNER.name, size, ReferenceTree(leaves).root(size))
    return open_checkpoint(sign_checkpoint(cp, SIGNER), VERIFIER)


def frontier(tree: ReferenceTree, start: int) -> tuple[bytes, ...]:
    return tuple(tree.mth(n.begin, n.end) for n in subtree_nodes(0, start))


def consistency(tree: ReferenceTree, end: int, size: int) -> tuple[bytes, ...]:
    return tuple(tree.proof(end, size)) if end < size else ()


def flipped(hashes: Sequence[bytes], i: int) -> tuple[bytes, ...]:
    return tuple(flip_bit(h, 3) if j == i else h for j, h in enumerate(hashes))


# --- Append answers -----------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """An Append answer as plain values, and the request it answers."""

    checkpoint: SignedCheckpoint
    payloads: tuple[bytes, ...]
    entries: tuple[AnsweredEntry, ...]
    start: int
    end: int
    left_frontier: tuple[bytes, ...]
    consistency_proof: tuple[bytes, ...]
    generated: tuple[bool, ...] = ()
    sent_ms: int = 0
    identity: str | None = None
    clock_skew_s: float = 300.0

    def verify(self) -> AppendResult:
        return verify_append_answer(
            self.checkpoint,
            self.payloads,
            self.entries,
            start=self.start,
            end=self.end,
            left_frontier=self.left_frontier,
            consistency_proof=self.consistency_proof,
            generated=self.generated,
            sent_ms=self.sent_ms,
            identity=self.identity,
            clock_skew_s=self.clock_skew_s,
        )

    def with_entry(self, i: int, **changes: Any) -> Answer:
        entries = list(self.entries)
        entries[i] = replace(entries[i], **changes)
        return replace(self, entries=tuple(entries))


OLD = 5
"""Leaves in the log before the append (index OLD - 2 is an earlier event of IDENTITY)."""


def log_before() -> list[bytes]:
    return [leaf(i) for i in range(OLD)]


def append_answer(new: int = 3, later: int = 2, *, dup_of: int | None = None) -> Answer:
    """``new`` fresh entries at [OLD, OLD + new), ``later`` leaves appended after them;
    with ``dup_of``, one more entry (last) answered as a duplicate of that index."""
    leaves = log_before()
    new_leaves = [leaf(OLD + j, ms=T0 + 100) for j in range(new)]
    leaves += new_leaves + [leaf(OLD + new + j) for j in range(later)]
    tree = ReferenceTree(leaves)
    size = len(leaves)
    entries = [AnsweredEntry(OLD + j, lf) for j, lf in enumerate(new_leaves)]
    payloads = [Leaf.parse(lf).payload for lf in new_leaves]
    if dup_of is not None:
        entries.append(AnsweredEntry(dup_of, leaves[dup_of], True, tuple(tree.path(dup_of, size))))
        payloads.append(Leaf.parse(leaves[dup_of]).payload)
    return Answer(
        signed(leaves),
        tuple(payloads),
        tuple(entries),
        OLD,
        OLD + new,
        frontier(tree, OLD),
        consistency(tree, OLD + new, size),
    )


@pytest.mark.parametrize("later", [0, 2])
def test_an_honest_append_answer_verifies_and_its_receipts_verify(later: int) -> None:
    answer = append_answer(later=later, dup_of=OLD - 2)
    result = answer.verify()
    assert result.checkpoint == answer.checkpoint
    assert [e.index for e in result.entries] == [OLD, OLD + 1, OLD + 2, OLD - 2]
    assert result.duplicates == (False, False, False, True)
    receipts = result.receipts()
    for receipt, sent in zip(receipts, answer.entries, strict=True):
        assert (receipt.index, receipt.leaf, receipt.duplicate) == (
            sent.index,
            sent.leaf,
            sent.duplicate,
        )
        receipt.verify(VERIFIER)
    assert receipts[-1].inclusion_proof == answer.entries[-1].inclusion_proof
    # A new entry's proof is derived from the range proof: the RFC 6962 audit path.
    everything = [*log_before(), *(e.leaf for e in answer.entries[:3])]
    everything += [leaf(OLD + 3 + j) for j in range(later)]
    size = len(everything)
    for receipt in receipts[:3]:
        assert receipt.inclusion_proof == tuple(ReferenceTree(everything).path(receipt.index, size))


def test_an_answer_of_duplicates_only_needs_no_range_proof() -> None:
    sent = T0  # the leaves below were accepted 50 ms after the call was first sent
    same_time = [leaf(i, ms=T0 + 50) for i in range(OLD)]
    tree = ReferenceTree(same_time)
    answer = Answer(
        signed(same_time),
        (b"event 3", b"event 4"),
        (
            AnsweredEntry(3, same_time[3], True, tuple(tree.path(3, OLD))),
            AnsweredEntry(4, same_time[4], True, tuple(tree.path(4, OLD))),
        ),
        OLD,
        OLD,
        (),
        (),
        generated=(True, True),
        sent_ms=sent,
    )
    result = answer.verify()
    assert result.duplicates == (True, True)
    assert [r.index for r in result.receipts()] == [3, 4]


def test_entries_missing_or_extra_are_rejected() -> None:
    answer = append_answer()
    with pytest.raises(VerificationError, match="append answered 2 entries for 3 sent"):
        replace(answer, entries=answer.entries[:2]).verify()
    with pytest.raises(VerificationError, match="append answered 3 entries for 2 sent"):
        replace(answer, payloads=answer.payloads[:2]).verify()


def test_an_edited_leaf_is_rejected() -> None:
    answer = append_answer()
    other_payload = leaf(OLD, b"something else", ms=T0 + 100)
    with pytest.raises(VerificationError, match="entry 0: the log answered a leaf with another"):
        answer.with_entry(0, leaf=other_payload).verify()
    # Same payload, another acceptance time: only the range proof can tell.
    other_time = leaf(OLD + 1, ms=T0 + 101)
    with pytest.raises(RootMismatchError):
        answer.with_entry(1, leaf=other_time).verify()
    with pytest.raises(VerificationError, match="the log answered a malformed leaf"):
        answer.with_entry(2, leaf=answer.entries[2].leaf[:-1]).verify()


def test_a_duplicate_with_another_payload_names_the_reused_key() -> None:
    answer = append_answer(dup_of=OLD - 2)
    with pytest.raises(VerificationError, match=r"idempotency key reused for a different event"):
        replace(answer, payloads=(*answer.payloads[:-1], b"not that one")).verify()


def test_wrong_indices_and_range_are_rejected() -> None:
    answer = append_answer()
    with pytest.raises(VerificationError, match="new entries take consecutive indices"):
        answer.with_entry(1, index=OLD + 2).verify()
    with pytest.raises(VerificationError, match="new entries take consecutive indices"):
        replace(answer, start=OLD + 1).verify()
    with pytest.raises(VerificationError, match=r"append answered range \[5, 9\) for 3 new"):
        replace(answer, end=OLD + 4).verify()


@pytest.mark.parametrize("later", [0, 2])
def test_every_range_proof_hash_is_checked(later: int) -> None:
    answer = append_answer(later=later)
    for i in range(len(answer.left_frontier)):
        with pytest.raises(RootMismatchError):
            replace(answer, left_frontier=flipped(answer.left_frontier, i)).verify()
    for i in range(len(answer.consistency_proof)):
        with pytest.raises(RootMismatchError):
            replace(answer, consistency_proof=flipped(answer.consistency_proof, i)).verify()


def test_a_truncated_or_padded_range_proof_is_rejected() -> None:
    answer = append_answer(later=2)
    with pytest.raises(InvalidProofError):
        replace(answer, left_frontier=answer.left_frontier[:-1]).verify()
    with pytest.raises(InvalidProofError):
        replace(answer, consistency_proof=answer.consistency_proof[:-1]).verify()
    with pytest.raises(InvalidProofError):
        replace(answer, consistency_proof=(*answer.consistency_proof, bytes(32))).verify()
    at_end = append_answer(later=0)
    with pytest.raises(InvalidProofError, match="consistency hashes, want 0"):
        replace(at_end, consistency_proof=(bytes(32),)).verify()


def test_every_hash_of_a_duplicates_inclusion_proof_is_checked() -> None:
    answer = append_answer(dup_of=OLD - 2)
    proof = answer.entries[-1].inclusion_proof
    for i in range(len(proof)):
        with pytest.raises(RootMismatchError):
            answer.with_entry(-1, inclusion_proof=flipped(proof, i)).verify()
    with pytest.raises(InvalidProofError):
        answer.with_entry(-1, inclusion_proof=proof[:-1]).verify()
    with pytest.raises(RootMismatchError):
        answer.with_entry(-1, index=OLD - 3).verify()


def test_another_checkpoint_is_rejected() -> None:
    answer = append_answer(later=2)
    leaves = log_before() + [leaf(OLD + j, ms=T0 + 100) for j in range(3)] + [leaf(8), leaf(9)]
    with pytest.raises(VerificationError):
        replace(answer, checkpoint=signed(leaves, len(leaves) - 1)).verify()
    with pytest.raises(VerificationError):
        replace(answer, checkpoint=signed([*leaves, leaf(10)])).verify()


def test_a_duplicate_with_another_identity_is_rejected() -> None:
    leaves = log_before()
    leaves[1] = leaf(1, who="someone-else")
    new = leaf(OLD, ms=T0 + 100)
    tree = ReferenceTree([*leaves, new])
    answer = Answer(
        signed([*leaves, new]),
        (b"event 5", b"event 1"),
        (
            AnsweredEntry(OLD, new),
            AnsweredEntry(1, leaves[1], True, tuple(tree.path(1, OLD + 1))),
        ),
        OLD,
        OLD + 1,
        frontier(tree, OLD),
        (),
    )
    with pytest.raises(VerificationError, match=r"stamped identities .* and 'someone-else'"):
        answer.verify()
    with pytest.raises(VerificationError, match="a duplicate of someone else's event"):
        replace(answer, identity=IDENTITY).verify()


def test_a_new_leaf_with_another_identity_than_the_client_is_rejected() -> None:
    answer = append_answer()
    with pytest.raises(VerificationError, match="this client authenticates as 'svc'"):
        replace(answer, identity="svc").verify()
    assert replace(answer, identity=IDENTITY).verify()


def generated_dups(times: Sequence[int], indices: Sequence[int], sent_ms: int) -> Answer:
    """An answer of duplicates only, for keys the client generated."""
    leaves = log_before()
    for i, ms in zip(indices, times, strict=True):
        leaves[i] = leaf(i, ms=ms)
    tree = ReferenceTree(leaves)
    return Answer(
        signed(leaves),
        tuple(Leaf.parse(leaves[i]).payload for i in indices),
        tuple(AnsweredEntry(i, leaves[i], True, tuple(tree.path(i, OLD))) for i in indices),
        OLD,
        OLD,
        (),
        (),
        generated=(True,) * len(indices),
        sent_ms=sent_ms,
    )


def test_a_generated_keys_duplicate_from_before_the_call_is_rejected() -> None:
    sent = T0 + 3_600_000
    skew = 300_000
    assert generated_dups([sent - skew], [3], sent).verify()
    with pytest.raises(VerificationError, match="before this append was first sent"):
        generated_dups([sent - skew - 1], [3], sent).verify()
    assert replace(generated_dups([sent - 10_000], [3], sent), clock_skew_s=10).verify()
    with pytest.raises(VerificationError, match="tolerance 10 s"):
        replace(generated_dups([sent - 10_001], [3], sent), clock_skew_s=10).verify()
    # A key the caller gave: it may have been sent any time before.
    old = generated_dups([T0], [3], sent)
    assert replace(old, generated=(False,)).verify()


def test_generated_duplicates_must_come_from_one_attempt() -> None:
    sent = T0
    assert generated_dups([T0 + 7, T0 + 7], [2, 3], sent).verify()
    with pytest.raises(VerificationError, match="not of one earlier attempt"):
        generated_dups([T0 + 7, T0 + 8], [2, 3], sent).verify()
    with pytest.raises(VerificationError, match="not of one earlier attempt"):
        generated_dups([T0 + 7, T0 + 7], [3, 2], sent).verify()


def test_generated_keys_are_duplicates_all_together_or_not_at_all() -> None:
    answer = append_answer(dup_of=OLD - 2)
    mixed = replace(answer, generated=(True, True, True, True), sent_ms=T0)
    with pytest.raises(VerificationError, match="would have logged both"):
        mixed.verify()
    # A key the caller gave may be a duplicate next to generated new ones.
    assert replace(answer, generated=(True, True, True, False), sent_ms=T0).verify()


# --- GetEntries pages ---------------------------------------------------------------
SIZE = 13
LEAVES = [leaf(i) for i in range(SIZE)]
TREE = ReferenceTree(LEAVES)
CP = signed(LEAVES)


@dataclass(frozen=True)
class Page:
    start: int
    leaves: tuple[bytes, ...]
    left_frontier: tuple[bytes, ...]
    consistency_proof: tuple[bytes, ...]


def page(start: int, end: int) -> Page:
    return Page(
        start, tuple(LEAVES[start:end]), frontier(TREE, start), consistency(TREE, end, SIZE)
    )


def read(p: Page, next_index: int, end: int, cp: Checkpoint = CP.checkpoint) -> list[int]:
    entries = verify_entries_page(
        cp,
        p.start,
        p.leaves,
        p.left_frontier,
        p.consistency_proof,
        next_index=next_index,
        end=end,
    )
    assert [e.leaf for e in entries] == list(p.leaves)
    return [e.index for e in entries]


@pytest.mark.parametrize(("start", "end"), [(0, 5), (4, 9), (8, 13), (0, 13), (12, 13)])
def test_an_honest_page_verifies(start: int, end: int) -> None:
    assert read(page(start, end), start, end) == list(range(start, end))
    assert read(page(start, end), start, SIZE) == list(range(start, end))


def test_pages_out_of_the_window_are_rejected() -> None:
    with pytest.raises(VerificationError, match="starts at 4 with 5 leaves, want a page at 3"):
        read(page(4, 9), 3, 9)
    with pytest.raises(VerificationError, match="ending by 8"):
        read(page(4, 9), 4, 8)
    empty = replace(page(4, 9), leaves=())
    with pytest.raises(VerificationError, match="with 0 leaves"):
        read(empty, 4, 9)


def test_an_edited_or_malformed_leaf_in_a_page_is_rejected() -> None:
    p = page(4, 9)
    edited = (*p.leaves[:2], leaf(6, b"rewritten"), *p.leaves[3:])
    with pytest.raises(RootMismatchError):
        read(replace(p, leaves=edited), 4, 9)
    malformed = (*p.leaves[:2], p.leaves[2] + b"x", *p.leaves[3:])
    with pytest.raises(VerificationError, match="malformed leaf"):
        read(replace(p, leaves=malformed), 4, 9)


def test_missing_or_extra_leaves_in_a_page_are_rejected() -> None:
    p = page(4, 9)
    with pytest.raises(VerificationError):
        read(replace(p, leaves=p.leaves[:-1]), 4, 9)  # the proof is from 9, not 8
    with pytest.raises(VerificationError):
        read(replace(p, leaves=(*p.leaves, LEAVES[9])), 4, 13)
    with pytest.raises(VerificationError):
        read(replace(p, leaves=p.leaves[1:]), 4, 9)  # leaf 4 left out, the rest shifted


def test_every_hash_of_a_pages_proof_is_checked() -> None:
    p = page(5, 9)
    assert p.left_frontier and p.consistency_proof
    for i in range(len(p.left_frontier)):
        with pytest.raises(RootMismatchError):
            read(replace(p, left_frontier=flipped(p.left_frontier, i)), 5, 9)
    for i in range(len(p.consistency_proof)):
        with pytest.raises(RootMismatchError):
            read(replace(p, consistency_proof=flipped(p.consistency_proof, i)), 5, 9)
    with pytest.raises(InvalidProofError):
        read(replace(p, left_frontier=p.left_frontier[:-1]), 5, 9)
    with pytest.raises(InvalidProofError):
        read(replace(p, consistency_proof=p.consistency_proof[:-1]), 5, 9)


def test_a_page_against_another_checkpoint_is_rejected() -> None:
    other = Checkpoint(SIGNER.name, SIZE, flip_bit(CP.checkpoint.root_hash, 0))
    with pytest.raises(RootMismatchError):
        read(page(0, 13), 0, 13, other)
    with pytest.raises(VerificationError):
        read(page(0, 5), 0, 5, signed(LEAVES, SIZE - 1).checkpoint)


def test_a_read_that_stops_early_is_rejected() -> None:
    verify_entries_complete(9, 9)
    with pytest.raises(VerificationError, match="GetEntries stopped at 7, want 9"):
        verify_entries_complete(7, 9)


# --- full-audit pages ---------------------------------------------------------------
def audit(
    tree: CompactRange, start: int, leaves: Sequence[bytes], proof: Sequence[bytes], end: int
) -> CompactRange:
    return verify_audit_page(tree, CP, start, tuple(leaves), tuple(proof), end=end)


def test_an_honest_audit_reaches_the_signed_root_page_by_page() -> None:
    tree = CompactRange()
    for start, end in [(0, 4), (4, 9), (9, 13)]:
        before = tree.copy()
        tree = audit(tree, start, LEAVES[start:end], consistency(TREE, end, SIZE), SIZE)
        assert before.size == start  # the tree passed in is not changed
        assert tree.size == end
        assert tree.root() == TREE.root(end)
    verify_audited_tree(tree, CP)
    assert verify_audit_page(CompactRange(), CP, 0, tuple(LEAVES), ()).root() == TREE.root(SIZE)


def test_audit_pages_out_of_the_window_are_not_a_mismatch() -> None:
    tree = CompactRange()
    tree.extend(leaf_hash(lf) for lf in LEAVES[:4])
    for start, leaves, end in [(5, LEAVES[5:9], SIZE), (4, LEAVES[4:9], 8), (4, [], SIZE)]:
        with pytest.raises(VerificationError, match="GetEntries page starts at") as info:
            audit(tree, start, leaves, consistency(TREE, 9, SIZE), end)
        assert not isinstance(info.value, EntriesMismatchError)


def test_an_edited_leaf_in_an_audit_is_a_mismatch_with_its_evidence() -> None:
    tree = CompactRange()
    tree.extend(leaf_hash(lf) for lf in LEAVES[:4])
    leaves = list(LEAVES[4:9])
    leaves[2] = leaf(6, b"rewritten")
    proof = consistency(TREE, 9, SIZE)
    with pytest.raises(EntriesMismatchError) as info:
        audit(tree, 4, leaves, proof, SIZE)
    e = info.value
    assert (e.note, e.start, e.frontier) == (CP.note, 4, tree.hashes)
    assert (e.leaves, e.proof) == (tuple(leaves), proof)
    assert e.calculated == ReferenceTree([*LEAVES[:4], *leaves]).root(9)
    assert "consistency proof from size 9 to 13" in e.reason


def test_a_malformed_leaf_in_an_audit_is_named() -> None:
    leaves = list(LEAVES[:5])
    leaves[3] = leaves[3][:-1]
    with pytest.raises(EntriesMismatchError, match="leaf 3 is malformed: leaf: payload_length"):
        audit(CompactRange(), 0, leaves, consistency(TREE, 5, SIZE), SIZE)
    with pytest.raises(LeafFormatError) as parsed:
        Leaf.parse(leaves[3])
    assert malformed_leaf(10, leaves) == (13, str(parsed.value))
    assert malformed_leaf(0, LEAVES) is None


def test_every_hash_of_an_audit_proof_is_checked() -> None:
    proof = consistency(TREE, 9, SIZE)
    for i in range(len(proof)):
        with pytest.raises(EntriesMismatchError):
            audit(CompactRange(), 0, LEAVES[:9], flipped(proof, i), SIZE)
    with pytest.raises(EntriesMismatchError):
        audit(CompactRange(), 0, LEAVES[:9], proof[:-1], SIZE)
    with pytest.raises(EntriesMismatchError, match="has 1 consistency hashes, want 0"):
        audit(CompactRange(), 0, LEAVES, (bytes(32),), SIZE)
    with pytest.raises(EntriesMismatchError, match="is not the checkpoint's root"):
        audit(CompactRange(), 0, [*LEAVES[:-1], leaf(SIZE - 1, b"x")], (), SIZE)


def test_a_wrong_audited_frontier_is_caught() -> None:
    tree = CompactRange()
    tree.extend(leaf_hash(lf) for lf in LEAVES[:4])
    wrong = CompactRange(4, flipped(tree.hashes, 0))
    with pytest.raises(EntriesMismatchError):
        audit(wrong, 4, LEAVES[4:9], consistency(TREE, 9, SIZE), SIZE)
    full = CompactRange()
    full.extend(leaf_hash(lf) for lf in LEAVES)
    verify_audited_tree(full, CP)
    verify_audited_tree(tree, CP)  # another size: nothing to compare
    wrong_full = CompactRange(SIZE, flipped(full.hashes, 1))
    with pytest.raises(EntriesMismatchError, match="has another root than the checkpoint"):
        verify_audited_tree(wrong_full, CP)


# --- single entries and search results ----------------------------------------------
def test_an_entry_and_its_proof_verify_and_tampering_is_rejected() -> None:
    proof = tuple(TREE.path(6, SIZE))
    entry, inclusion = verify_entry(CP, 6, LEAVES[6], proof)
    assert (entry.index, entry.leaf) == (6, LEAVES[6])
    assert (inclusion.index, inclusion.leaf_hash, inclusion.proof) == (
        6,
        leaf_hash(LEAVES[6]),
        proof,
    )
    inclusion.verify()
    with pytest.raises(RootMismatchError):
        verify_entry(CP, 6, leaf(6, b"rewritten"), proof)
    with pytest.raises(RootMismatchError):
        verify_entry(CP, 7, LEAVES[6], proof)
    with pytest.raises(VerificationError, match="malformed leaf"):
        verify_entry(CP, 6, LEAVES[6][:-1], proof)
    for i in range(len(proof)):
        with pytest.raises(RootMismatchError):
            verify_entry(CP, 6, LEAVES[6], flipped(proof, i))
    with pytest.raises(InvalidProofError):
        verify_entry(CP, 6, LEAVES[6], proof[:-1])


def search(
    index: int, lf: bytes, *, since: int = 0, until: int = 0, after: int = 0, who: str = IDENTITY
) -> int:
    proof = tuple(ReferenceTree(LEAVES).path(index, SIZE))
    entry = verify_search_result(
        CP.checkpoint,
        index,
        lf,
        proof,
        identity=who,
        since_ms=since,
        until_ms=until,
        next_index=after,
    )
    return entry.index


def test_search_results_are_checked_for_identity_time_order_and_proof() -> None:
    assert search(6, LEAVES[6], since=T0 + 6, until=T0 + 6, after=6) == 6
    with pytest.raises(VerificationError, match=r"of identity 'spiffe://example\.org/ci'"):
        search(6, LEAVES[6], who="svc")
    with pytest.raises(VerificationError, match="does not match the search"):
        search(6, LEAVES[6], since=T0 + 7)
    with pytest.raises(VerificationError, match="does not match the search"):
        search(6, LEAVES[6], until=T0 + 5)
    with pytest.raises(VerificationError, match="answered index 6, want >= 7"):
        search(6, LEAVES[6], after=7)
    with pytest.raises(RootMismatchError):
        search(6, leaf(6, b"rewritten"))


# --- the offline re-check of full-audit evidence uses the same verifier ---------------
def root_mismatch(start: int, leaves: Sequence[bytes], proof: Sequence[bytes]) -> Evidence:
    tree = CompactRange()
    tree.extend(leaf_hash(lf) for lf in LEAVES[:start])
    return Evidence(
        kind="root_mismatch",
        origin=SIGNER.name,
        log_vkey=VERIFIER.vkey,
        checkpoint=CP.note,
        consistency_proof=tuple(proof),
        audit_start=start,
        audit_frontier=tree.hashes,
        audit_leaves=tuple(leaves),
    )


def test_root_mismatch_evidence_holds_exactly_when_the_audit_page_fails() -> None:
    proof = consistency(TREE, 9, SIZE)
    honest = check_evidence(root_mismatch(4, LEAVES[4:9], proof), VERIFIER)
    assert not honest.holds and "reproduces fine" in honest.proves
    edited = [*LEAVES[4:6], leaf(6, b"rewritten"), *LEAVES[7:9]]
    verdict = check_evidence(root_mismatch(4, edited, proof), VERIFIER)
    assert verdict.holds and verdict.proves.startswith("CONFIRMS: hashing these leaves")
    assert "consistency proof from size 9 to 13" in verdict.findings[-1]
    malformed = [*LEAVES[4:6], LEAVES[6][:-1], *LEAVES[7:9]]
    verdict = check_evidence(root_mismatch(4, malformed, proof), VERIFIER)
    assert verdict.holds and "leaf 6 is malformed: leaf: payload_length" in verdict.findings[-1]
    assert "at index 6 is not a valid leaf" in verdict.proves
    at_end = check_evidence(root_mismatch(9, [*LEAVES[9:12], leaf(12, b"x")], ()), VERIFIER)
    assert at_end.holds and "is not the checkpoint's root" in at_end.findings[-1]


def test_root_mismatch_evidence_outside_the_tree_does_not_hold() -> None:
    for start, leaves in [(4, []), (9, [*LEAVES[9:], leaf(SIZE)])]:
        verdict = check_evidence(root_mismatch(start, leaves, ()), VERIFIER)
        assert not verdict.holds and "are not inside the checkpoint's tree" in verdict.proves
    trusted = signed(LEAVES, 4)
    forged = replace(
        root_mismatch(4, LEAVES[4:9], consistency(TREE, 9, SIZE)), trusted=trusted.note
    )
    good = check_evidence(forged, VERIFIER)
    assert not good.holds
    assert any("from the trusted checkpoint of size 4" in f for f in good.findings)
    wrong_frontier = replace(forged, audit_frontier=flipped(forged.audit_frontier, 0))
    verdict = check_evidence(wrong_frontier, VERIFIER)
    assert not verdict.holds and "does not match the trusted checkpoint" in verdict.proves
