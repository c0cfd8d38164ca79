"""One bad request in a batch fails alone: the sequencer commits and answers the others.

The sequencer writes many requests in one transaction. Whatever can be wrong
with one request (an identity no leaf can hold, an idempotency key reused for
another event) must be decided for that request, never by failing the commit
of everyone batched with it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from sealog.client.leaf import MAX_IDENTITY_BYTES, Leaf
from sealog.client.note import Ed25519Signer
from sealog.server.config import Settings
from sealog.server.errors import AlreadyExistsError, InvalidArgumentError
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem, AppendOutcome

ORIGIN = "sealog.localhost/log"
SIGNER = Ed25519Signer.generate(ORIGIN)
T0 = 1_700_000_000_000


class GateClock:
    """A clock that, once armed, holds the sequencer in its next commit until opened.

    The request being committed meanwhile is alone in its batch; everything
    submitted while the gate is shut queues up and is committed as one batch.
    """

    def __init__(self) -> None:
        self.armed = False
        self.gate = threading.Event()

    def __call__(self) -> int:
        if self.armed:
            self.armed = False
            assert self.gate.wait(10), "the test never opened the gate"
        return T0


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Log, GateClock]]:
    clock = GateClock()
    storage = LmdbStorage(tmp_path / "db")
    log = Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, Settings(), clock_ms=clock)
    try:
        yield log, clock
    finally:
        log.close()
        storage.close()


def one_batch(
    log: Log, clock: GateClock, requests: list[tuple[list[AppendItem], str]]
) -> list[Future[AppendOutcome]]:
    """Submit ``requests`` so that the sequencer writes all of them in one batch."""
    clock.armed = True
    first = log.submit([AppendItem(b"gate")], "gate")
    futures = [log.submit(items, identity) for items, identity in requests]
    clock.gate.set()
    first.result(10)
    for f in futures:
        f.exception(10)  # wait for all, whatever the outcome
    return futures


def test_one_overlong_identity_fails_only_its_own_request(gated: tuple[Log, GateClock]) -> None:
    log, clock = gated
    too_long = "spiffe://example.org/" + "x" * MAX_IDENTITY_BYTES
    requests = [([AppendItem(b"innocent %d" % i)], f"svc-{i}") for i in range(20)]
    requests.insert(7, ([AppendItem(b"from the long identity")], too_long))

    futures = one_batch(log, clock, requests)

    bad = futures.pop(7)
    error = bad.exception()
    assert isinstance(error, InvalidArgumentError)
    assert "identity" in str(error) and str(MAX_IDENTITY_BYTES) in str(error)
    outcomes = [f.result() for f in futures]
    assert len({o.checkpoint for o in outcomes}) == 1, "the premise: one batch"
    assert outcomes[-1].size == 21  # the gate entry and the 20 innocent ones
    for i, o in enumerate(outcomes):
        (entry,) = o.entries
        leaf = Leaf.parse(entry.leaf)
        assert (leaf.identity, leaf.payload) == (f"svc-{i}", b"innocent %d" % i)
        assert not entry.duplicate


def test_an_idempotency_conflict_fails_only_its_own_request(gated: tuple[Log, GateClock]) -> None:
    log, clock = gated
    log.submit([AppendItem(b"deploy v1", "release")], "ci").result(10)
    requests = [([AppendItem(b"other %d" % i, f"k{i}")], "ci") for i in range(10)]
    requests.insert(3, ([AppendItem(b"deploy v2", "release")], "ci"))  # another event
    requests.insert(5, ([AppendItem(b"deploy v1", "release")], "ci"))  # a true retry
    requests.insert(6, ([AppendItem(b"a", "twice"), AppendItem(b"b", "twice")], "ci"))
    requests.append(([AppendItem(b"deploy v2", "release")], "someone else"))  # own keys

    futures = one_batch(log, clock, requests)

    conflict, retry, inside = futures[3], futures[5], futures[6]
    for refused, where in ((conflict, "at index 0"), (inside, "by entries[0]")):
        error = refused.exception()
        assert isinstance(error, AlreadyExistsError)
        assert where in str(error) and "new event needs a new key" in str(error)
    (dup,) = retry.result().entries
    assert dup.duplicate and dup.index == 0
    others = [f.result() for i, f in enumerate(futures) if i not in (3, 5, 6)]
    assert len({o.checkpoint for o in [*others, retry.result()]}) == 1, "the premise: one batch"
    assert [Leaf.parse(o.entries[0].leaf).payload for o in others] == [
        *(b"other %d" % i for i in range(10)),
        b"deploy v2",
    ]
    assert not any(o.entries[0].duplicate for o in others)
    assert others[-1].size == 1 + 1 + 11  # the first deploy, the gate, the new leaves


def test_a_conflict_with_an_entry_of_the_same_batch(gated: tuple[Log, GateClock]) -> None:
    log, clock = gated
    requests = [
        ([AppendItem(b"first", "k")], "ci"),
        ([AppendItem(b"second", "k")], "ci"),  # the same key, meanwhile used for "first"
        ([AppendItem(b"first", "k")], "ci"),  # a retry of the first
    ]

    first, second, retry = one_batch(log, clock, requests)

    assert isinstance(second.exception(), AlreadyExistsError)
    assert retry.result().entries[0].duplicate
    assert retry.result().entries[0].index == first.result().entries[0].index


def test_a_payload_that_ends_the_stored_one_is_another_event(gated: tuple[Log, GateClock]) -> None:
    """The stored payload ends with the bytes of a shorter one, length prefix and all."""
    log, _ = gated
    short = b"abc"
    longer = b"zz" + len(short).to_bytes(4, "big") + short
    log.submit([AppendItem(longer, "k")], "ci").result(10)

    with pytest.raises(AlreadyExistsError):
        log.submit([AppendItem(short, "k")], "ci").result(10)
    assert log.submit([AppendItem(longer, "k")], "ci").result(10).entries[0].duplicate


@pytest.mark.slow
def test_conflicts_are_found_in_the_stored_index_at_10000_entries(tmp_path: Path) -> None:
    """Keys flushed to the stored idempotency index (not only the in-memory tail)."""

    def opened() -> tuple[Log, LmdbStorage]:
        storage = LmdbStorage(tmp_path / "db")
        return Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, Settings()), storage

    n = 10_000
    log, storage = opened()
    for b in range(0, n, 1000):
        items = [AppendItem(b"event %d" % i, f"key-{i}") for i in range(b, b + 1000)]
        log.submit(items, "ci").result(30)
    log.close()  # a clean stop indexes every leaf: the next start has no tail
    storage.close()

    log, storage = opened()
    try:
        assert log._sequencer.index_tail.low == n
        retries = [AppendItem(b"event %d" % i, f"key-{i}") for i in range(0, n, 7)]
        again = log.submit(retries, "ci").result(30)
        assert all(e.duplicate for e in again.entries)
        assert [e.index for e in again.entries] == list(range(0, n, 7))
        assert again.size == n
        for i in (0, 4321, n - 1):
            with pytest.raises(AlreadyExistsError, match=f"at index {i}"):
                log.submit([AppendItem(b"not event %d" % i, f"key-{i}")], "ci").result(30)
        fresh = log.submit([AppendItem(b"event 0", "key-0")], "someone else").result(30)
        assert not fresh.entries[0].duplicate  # keys are per identity
    finally:
        log.close()
        storage.close()
