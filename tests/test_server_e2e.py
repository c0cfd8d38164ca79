"""End to end through gRPC: appends, receipts, proofs, entries, and a client that catches lies.

Every proof the server gives is checked twice: the client verifies it, and
the test compares it byte for byte with RFC 6962 computed from the leaves by
``rfc6962_reference`` (which shares no code with sealog).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import OpenLog, RunningLog, TamperInterceptor, flip, recompute_root
from rfc6962_reference import ReferenceTree

from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.errors import (
    InconsistentCheckpointsError,
    InvalidProofError,
    InvalidSignatureError,
    RootMismatchError,
    UnverifiedNoteError,
    VerificationError,
)
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.server.app import LogServer
from sealog.v1 import log_pb2

# Batch sizes that take the tree through 1, 2, 4, 7, 8, 16, 32, 33, 64 and 70 leaves:
# powers of two, one past them, and ragged right edges.
GROWTH = (1, 1, 2, 3, 1, 8, 16, 1, 31, 6)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# --- appends and receipts --------------------------------------------------------------
def test_append_returns_a_receipt_that_verifies_offline(log: RunningLog, client: LogClient) -> None:
    receipt = client.append(b"deploy svc/payments ok")

    assert receipt.index == 0
    assert not receipt.duplicate
    assert Leaf.parse(receipt.leaf).payload == b"deploy svc/payments ok"
    assert receipt.checkpoint.checkpoint.size == 1
    assert receipt.checkpoint.checkpoint.origin == log.origin
    receipt.verify(log.verifier)  # offline: signature and inclusion proof

    stranger = Ed25519Signer.generate(log.origin).verifier()
    with pytest.raises(UnverifiedNoteError):
        receipt.verify(stranger)


def test_batch_append_takes_consecutive_indices_in_request_order(
    log: RunningLog, client: LogClient
) -> None:
    client.append_batch([b"first", b"second"])
    payloads = [f"event {i}".encode() for i in range(9)]

    result = client.append_batch(payloads)

    assert [e.index for e in result.entries] == list(range(2, 11))
    assert [e.parse().payload for e in result.entries] == payloads
    assert result.duplicates == (False,) * 9
    assert result.checkpoint.checkpoint.size == 11
    for i, receipt in enumerate(result.receipts()):
        assert receipt.index == 2 + i
        assert receipt.leaf == result.entries[i].leaf
        receipt.verify(log.verifier)


# --- proofs at many sizes ------------------------------------------------------------------
def test_proofs_by_index_and_by_hash_at_every_size(client: LogClient) -> None:
    leaves: list[bytes] = []
    seen: list[SignedCheckpoint] = []
    for step, count in enumerate(GROWTH):
        result = client.append_batch([f"grow {step}.{i}".encode() for i in range(count)])
        leaves.extend(e.leaf for e in result.entries)
        size = len(leaves)
        ref = ReferenceTree(leaves)
        for receipt in result.receipts():
            assert list(receipt.inclusion_proof) == ref.path(
                receipt.index, receipt.checkpoint.checkpoint.size
            )

        cp = client.checkpoint()
        assert cp.checkpoint.size == size
        assert cp.checkpoint.root_hash == ref.root(size)
        for i, leaf in enumerate(leaves):
            entry, proof = client.entry_and_proof(i, cp)
            assert entry.leaf == leaf
            assert list(proof.proof) == ref.path(i, size)
            by_hash = client.inclusion_proof_by_hash(leaf_hash(leaf), cp)
            assert by_hash.index == i
            assert by_hash.proof == proof.proof
        seen.append(cp)

    ref = ReferenceTree(leaves)
    # The log answers for the tree size asked, not its current one.
    for old in seen:
        n = old.checkpoint.size
        for i in range(n):
            proof = client.inclusion_proof(i, old)
            assert list(proof.proof) == ref.path(i, n)
    # Every checkpoint ever seen is consistent with every later one.
    for a in seen:
        for b in seen:
            if a.checkpoint.size > b.checkpoint.size:
                continue
            consistency = client.consistency_proof(a, b)
            want = (
                []
                if a.checkpoint.size == b.checkpoint.size
                else ref.proof(a.checkpoint.size, b.checkpoint.size)
            )
            assert list(consistency) == want
        latest = client.checkpoint(trusted=a)
        assert latest.checkpoint.size == len(leaves)


def test_empty_log_has_the_empty_tree_checkpoint(log: RunningLog, client: LogClient) -> None:
    cp = client.checkpoint()

    assert cp.checkpoint.size == 0
    assert cp.checkpoint.root_hash == ReferenceTree([]).root(0)
    assert list(client.entries()) == []
    first = client.append(b"x")
    assert client.checkpoint(trusted=cp).checkpoint.size == 1
    assert first.index == 0


def test_identical_leaves_are_found_by_hash_at_the_first_index(client: LogClient) -> None:
    client.append(b"before")
    # One request commits at one acceptance time: equal payloads make equal leaves.
    result = client.append_batch([b"same", b"same"])
    first, second = result.entries
    assert first.leaf == second.leaf

    found = client.inclusion_proof_by_hash(first.leaf_hash)

    assert found.index == first.index == 1
    entry, proof = client.entry_and_proof(second.index)
    assert entry.leaf == first.leaf
    assert proof.leaf_hash == found.leaf_hash and proof.index == 2


def test_a_failed_start_leaves_the_data_dir_usable(tmp_path: Path) -> None:
    data_dir = tmp_path / "log"
    before = set(threading.enumerate())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        # A failed start must release the log (its writer thread and LMDB
        # environment), or reopening the folder in this process fails.
        with pytest.raises(OSError, match=address):
            LogServer.open(data_dir, address=address)

    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running by the failed start: {leaked}"
    running = RunningLog(data_dir)
    try:
        assert running.client().append(b"first").index == 0
    finally:
        running.stop()


# --- entries ----------------------------------------------------------------------------
PAYLOADS = [
    b"",
    b"plain text",
    "ünïcødé ✓".encode(),
    bytes(range(256)),
    b"\x00" * 100,
    b"\n\r\n\x00trailing\n",
    bytes([0xFF]) * 1000,
]


def test_payloads_round_trip_byte_for_byte(log: RunningLog, client: LogClient) -> None:
    biggest = bytes(i % 251 for i in range(log.settings.max_entry_bytes))
    payloads = [*PAYLOADS, biggest]
    result = client.append_batch(payloads)
    single = client.append(b"")

    stored = list(client.entries())

    assert [e.parse().payload for e in stored] == [*payloads, b""]
    assert [e.leaf for e in stored[: len(payloads)]] == [e.leaf for e in result.entries]
    assert stored[-1].leaf == single.leaf
    for i, payload in enumerate(payloads):
        entry, _ = client.entry_and_proof(i)
        assert entry.parse().payload == payload
        assert Leaf.parse(entry.leaf).to_bytes() == entry.leaf


def _pages(stub: Any, start: int, end: int, tree_size: int, page_size: int) -> list[Any]:
    request = log_pb2.GetEntriesRequest(
        start=start, end=end, tree_size=tree_size, page_size=page_size
    )
    return list(stub.GetEntries(request, timeout=30))


@pytest.mark.parametrize("page_size", [1, 7, 0], ids=["page1", "page7", "default"])
def test_get_entries_in_pages(log: RunningLog, client: LogClient, page_size: int) -> None:
    total = log.settings.default_page_size + 44
    payloads = [f"entry {i}".encode() for i in range(total)]
    for chunk in range(0, total, 100):
        client.append_batch(payloads[chunk : chunk + 100])
    cp = client.checkpoint()
    stub = log.stub()
    effective = page_size or log.settings.default_page_size

    for start, end in [(0, total), (3, total), (5, 23), (total - 1, total)]:
        pages = _pages(stub, start, end, total, page_size)
        want_starts = list(range(start, end, effective))
        assert [p.start for p in pages] == want_starts
        assert [len(p.leaves) for p in pages] == [min(effective, end - s) for s in want_starts]
        leaves = [leaf for p in pages for leaf in p.leaves]
        assert [Leaf.parse(leaf).payload for leaf in leaves] == payloads[start:end]

        verified = list(client.entries(start, end, cp, page_size=page_size))
        assert [e.index for e in verified] == list(range(start, end))
        assert [e.leaf for e in verified] == leaves


def test_entries_of_an_older_checkpoint_stay_provable(client: LogClient) -> None:
    client.append_batch([f"a{i}".encode() for i in range(13)])
    old = client.checkpoint()
    client.append_batch([f"b{i}".encode() for i in range(20)])

    old_entries = list(client.entries(checkpoint=old, page_size=4))

    assert [e.parse().payload for e in old_entries] == [f"a{i}".encode() for i in range(13)]
    assert recompute_root(old_entries) == (13, old.checkpoint.root_hash)
    latest = client.checkpoint()
    assert recompute_root(client.entries(checkpoint=latest)) == (33, latest.checkpoint.root_hash)


def test_leaf_holds_acceptance_time_and_empty_identity(client: LogClient) -> None:
    before = now_ms()
    for i in range(5):
        client.append_batch([f"t{i}.{j}".encode() for j in range(i + 1)])
    after = now_ms()

    leaves = [e.parse() for e in client.entries()]

    assert len(leaves) == 15
    times = [leaf.accepted_at_ms for leaf in leaves]
    assert times == sorted(times), "acceptance time goes backwards along the log"
    assert before <= times[0] and times[-1] <= after
    assert all(leaf.identity == "" for leaf in leaves)


# --- a client that does not trust the server ----------------------------------------------
def test_wrong_verifier_key_is_rejected(log: RunningLog) -> None:
    log.client().append(b"seed")
    same_name_other_key = Ed25519Signer.generate(log.origin).verifier()
    other_name = Ed25519Signer.generate("other.example/log").verifier()

    for verifier in (same_name_other_key, other_name):
        c = log.client(verifier=verifier)
        with pytest.raises(UnverifiedNoteError):
            c.checkpoint()
        with pytest.raises(UnverifiedNoteError):
            c.append(b"appended but not accepted by the client")
        with pytest.raises(UnverifiedNoteError):
            list(c.entries(checkpoint=None))


def test_wrong_origin_is_rejected(log: RunningLog) -> None:
    c = log.client(origin="other.example/log")
    with pytest.raises(VerificationError, match="origin"):
        c.checkpoint()
    with pytest.raises(VerificationError, match="origin"):
        c.append(b"x")


def test_a_forked_log_is_caught_with_evidence(open_log: OpenLog) -> None:
    """Two logs signed with one key (a split view): a client that kept a checkpoint notices."""
    honest = open_log()
    honest.client().append_batch([f"real {i}".encode() for i in range(5)])
    kept = honest.client().checkpoint()
    fork = open_log(key_file=honest.data_dir / "log.key", new_log=True)  # the operator insists
    fork_client = fork.client(verifier=honest.verifier)
    fork_client.append_batch([f"fake {i}".encode() for i in range(3)])

    smaller = fork_client.checkpoint()
    with pytest.raises(InconsistentCheckpointsError, match="went backwards"):
        fork_client.consistency_proof(kept, smaller)

    fork_client.append_batch([f"fake more {i}".encode() for i in range(5)])
    with pytest.raises(InconsistentCheckpointsError) as caught:
        fork_client.checkpoint(trusted=kept)
    evidence = caught.value
    assert evidence.old_note == kept.note
    assert evidence.old.size == 5 and evidence.new.size == 8
    # Both notes verify with the log's key: proof of misbehaviour anyone can check.
    from sealog.client.checkpoint import open_checkpoint

    assert open_checkpoint(evidence.new_note, honest.verifier).checkpoint == evidence.new


@dataclass
class Seeded:
    log: RunningLog
    old: SignedCheckpoint  # size 5
    latest: SignedCheckpoint  # size 12
    leaf_hash: bytes  # of leaf 7


@pytest.fixture
def seeded(log: RunningLog, client: LogClient) -> Seeded:
    client.append_batch([f"seed {i}".encode() for i in range(5)])
    old = client.checkpoint()
    result = client.append_batch([f"seed {i}".encode() for i in range(5, 12)])
    client.append(b"dup me", idempotency_key="dup-key")
    latest = client.checkpoint()
    return Seeded(log, old, latest, result.entries[2].leaf_hash)


def _bump_size(note: bytes) -> bytes:
    lines = note.split(b"\n")
    lines[1] = str(int(lines[1]) + 1).encode()
    return b"\n".join(lines)


def _set(field: str, i: int, change: Callable[[bytes], bytes]) -> Callable[[Any], None]:
    def mutate(msg: Any) -> None:
        values = getattr(msg, field)
        values[i] = change(values[i])

    return mutate


def _drop_last(field: str) -> Callable[[Any], None]:
    def mutate(msg: Any) -> None:
        del getattr(msg, field)[-1]

    return mutate


def _entry0(change: Callable[[Any], None]) -> Callable[[Any], None]:
    def mutate(msg: Any) -> None:
        change(msg.entries[0])

    return mutate


def _leaf_with_payload(leaf: bytes, payload: bytes) -> bytes:
    parsed = Leaf.parse(leaf)
    return Leaf(parsed.accepted_at_ms, parsed.identity, payload).to_bytes()


def _frontier0(msg: Any) -> None:
    msg.range_proof.left_frontier[0] = flip(msg.range_proof.left_frontier[0])


def _plus_one_index(msg: Any) -> None:
    msg.leaf_index += 1


def _page_start(msg: Any) -> None:
    msg.start += 1


def _checkpoint(msg: Any) -> None:
    msg.checkpoint = _bump_size(msg.checkpoint)


def _leaf_time(entry: Any) -> None:
    entry.leaf = flip(entry.leaf, 5)


def _leaf_payload(entry: Any) -> None:
    entry.leaf = _leaf_with_payload(entry.leaf, b"not what was sent")


def _entry_index(entry: Any) -> None:
    entry.index += 1


def _dup_proof(entry: Any) -> None:
    entry.inclusion_proof[0] = flip(entry.inclusion_proof[0])


Action = Callable[[LogClient, Seeded], object]

TAMPERING: list[tuple[str, str, Callable[[Any], None], Action, type[Exception]]] = [
    # (case, RPC, how the response is altered, what the client does, what it must raise)
    (
        "checkpoint-signed-text",
        "GetCheckpoint",
        _checkpoint,
        lambda c, s: c.checkpoint(),
        InvalidSignatureError,
    ),
    (
        "checkpoint-consistency-hash",
        "GetCheckpoint",
        _set("consistency_proof", 0, flip),
        lambda c, s: c.checkpoint(trusted=s.old),
        InconsistentCheckpointsError,
    ),
    (
        "checkpoint-consistency-short",
        "GetCheckpoint",
        _drop_last("consistency_proof"),
        lambda c, s: c.checkpoint(trusted=s.old),
        InconsistentCheckpointsError,
    ),
    (
        "inclusion-hash",
        "GetEntryAndProof",
        _set("inclusion_proof", 0, flip),
        lambda c, s: c.inclusion_proof(3, s.latest),
        RootMismatchError,
    ),
    (
        "inclusion-short",
        "GetEntryAndProof",
        _drop_last("inclusion_proof"),
        lambda c, s: c.entry_and_proof(3, s.latest),
        InvalidProofError,
    ),
    (
        "entry-leaf-bytes",
        "GetEntryAndProof",
        lambda m: setattr(m, "leaf", _leaf_with_payload(m.leaf, b"forged")),
        lambda c, s: c.entry_and_proof(3, s.latest),
        RootMismatchError,
    ),
    (
        "by-hash-index",
        "GetInclusionProofByHash",
        _plus_one_index,
        lambda c, s: c.inclusion_proof_by_hash(s.leaf_hash, s.latest),
        VerificationError,
    ),
    (
        "by-hash-proof",
        "GetInclusionProofByHash",
        _set("inclusion_proof", -1, flip),
        lambda c, s: c.inclusion_proof_by_hash(s.leaf_hash, s.latest),
        RootMismatchError,
    ),
    (
        "consistency-hash",
        "GetConsistencyProof",
        _set("consistency_proof", 0, flip),
        lambda c, s: c.consistency_proof(s.old, s.latest),
        InconsistentCheckpointsError,
    ),
    (
        "entries-leaf",
        "GetEntries",
        _set("leaves", 0, lambda leaf: _leaf_with_payload(leaf, b"forged")),
        lambda c, s: list(c.entries(0, 12, s.latest)),
        RootMismatchError,
    ),
    (
        "entries-page-start",
        "GetEntries",
        _page_start,
        lambda c, s: list(c.entries(0, 12, s.latest)),
        VerificationError,
    ),
    (
        "entries-frontier",
        "GetEntries",
        _frontier0,
        lambda c, s: list(c.entries(4, 12, s.latest)),
        RootMismatchError,
    ),
    (
        "entries-missing-leaf",
        "GetEntries",
        _drop_last("leaves"),
        lambda c, s: list(c.entries(0, 12, s.latest, page_size=5)),
        VerificationError,
    ),
    (
        "append-checkpoint",
        "Append",
        _checkpoint,
        lambda c, s: c.append(b"new"),
        InvalidSignatureError,
    ),
    (
        "append-other-payload",
        "Append",
        _entry0(_leaf_payload),
        lambda c, s: c.append(b"new"),
        VerificationError,
    ),
    (
        "append-leaf-time",
        "Append",
        _entry0(_leaf_time),
        lambda c, s: c.append(b"new"),
        RootMismatchError,
    ),
    (
        "append-index",
        "Append",
        _entry0(_entry_index),
        lambda c, s: c.append(b"new"),
        VerificationError,
    ),
    (
        "append-range-frontier",
        "Append",
        _frontier0,
        lambda c, s: c.append(b"new"),
        RootMismatchError,
    ),
    (
        "append-duplicate-proof",
        "Append",
        _entry0(_dup_proof),
        lambda c, s: c.append(b"dup me", idempotency_key="dup-key"),
        RootMismatchError,
    ),
]


@pytest.mark.parametrize(
    ("rpc", "mutate", "action", "error"),
    [t[1:] for t in TAMPERING],
    ids=[t[0] for t in TAMPERING],
)
def test_client_rejects_a_tampered_answer(
    seeded: Seeded,
    rpc: str,
    mutate: Callable[[Any], None],
    action: Action,
    error: type[Exception],
) -> None:
    honest = seeded.log.client()
    action(honest, seeded)  # the untouched answer verifies

    liar = seeded.log.client_with(TamperInterceptor(mutate={rpc: mutate}))
    with pytest.raises(error):
        action(liar, seeded)


MALFORMED: dict[str, tuple[str, Callable[[Any], None], Action]] = {
    "leaf": (
        "GetEntryAndProof",
        lambda m: setattr(m, "leaf", m.leaf + b"!"),
        lambda c, s: c.entry_and_proof(3, s.latest),
    ),
    "checkpoint-note": (
        "GetCheckpoint",
        lambda m: setattr(m, "checkpoint", b"not a signed note"),
        lambda c, s: c.checkpoint(),
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_client_rejects_malformed_answers_as_verification_failures(
    seeded: Seeded, case: str
) -> None:
    # Bytes that do not parse are a failure to verify too: a monitor written as
    # `except VerificationError: alert()` must alert, not crash.
    rpc, mutate, action = MALFORMED[case]
    liar = seeded.log.client_with(TamperInterceptor(mutate={rpc: mutate}))
    with pytest.raises(VerificationError):
        action(liar, seeded)
