"""Many writers at once: every append lands exactly once, in one contiguous, verifiable log."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_support import RunningLog, recompute_root, run_threads

from sealog.client.checkpoint import SignedCheckpoint
from sealog.client.log_client import AppendResult, Receipt

pytestmark = pytest.mark.slow  # thousands of appends from many threads

THREADS = 32
PER_THREAD = 200


def test_32_threads_of_single_appends(log: RunningLog) -> None:
    clients = [log.client() for _ in range(4)]
    receipts: list[list[Receipt]] = [[] for _ in range(THREADS)]

    def work(t: int) -> None:
        c = clients[t % len(clients)]
        for j in range(PER_THREAD):
            receipts[t].append(c.append(f"thread {t} event {j}".encode()))

    run_threads(THREADS, work)

    total = THREADS * PER_THREAD
    everything = [r for rs in receipts for r in rs]
    assert sorted(r.index for r in everything) == list(range(total))
    for t, rs in enumerate(receipts):
        indices = [r.index for r in rs]
        assert indices == sorted(indices), f"thread {t}: later appends got earlier indices"
    for r in everything:
        assert not r.duplicate
        r.verify(log.verifier)

    c = log.client()
    final = c.checkpoint()
    assert final.checkpoint.size == total
    entries = list(c.entries(checkpoint=final))
    assert recompute_root(entries) == (total, final.checkpoint.root_hash)
    by_index = {r.index: r for r in everything}
    for e in entries:
        assert e.leaf == by_index[e.index].leaf
    # Every receipt's checkpoint is a prefix of the final tree.
    for r in random.Random(1).sample(everything, 50):
        c.consistency_proof(r.checkpoint, final)


def test_concurrent_batches_stay_atomic_while_readers_watch(log: RunningLog) -> None:
    writers = 12
    batches_per_writer = 15
    results: list[list[tuple[list[bytes], AppendResult]]] = [[] for _ in range(writers)]
    stop_reading = threading.Event()
    seen: list[SignedCheckpoint] = []

    def write(t: int) -> None:
        c = log.client()
        rng = random.Random(t)
        for b in range(batches_per_writer):
            payloads = [f"w{t} b{b} e{k}".encode() for k in range(rng.choice([1, 2, 7, 33, 100]))]
            results[t].append((payloads, c.append_batch(payloads)))

    def read() -> None:
        c = log.client()
        trusted = c.checkpoint()
        while not stop_reading.is_set():
            latest = c.checkpoint(trusted=trusted)  # raises unless it extends `trusted`
            assert latest.checkpoint.size >= trusted.checkpoint.size
            if latest.checkpoint.size:
                start = max(0, latest.checkpoint.size - 40)
                assert len(list(c.entries(start, checkpoint=latest, page_size=16))) == (
                    latest.checkpoint.size - start
                )
            seen.append(latest)
            trusted = latest

    with ThreadPoolExecutor(max_workers=2) as readers:
        reading = [readers.submit(read) for _ in range(2)]
        try:
            run_threads(writers, write)
        finally:
            stop_reading.set()
        for r in reading:
            r.result(timeout=60)

    c = log.client()
    final = c.checkpoint()
    entries = list(c.entries(checkpoint=final))
    total = sum(len(p) for rs in results for p, _ in rs)
    assert recompute_root(entries) == (total, final.checkpoint.root_hash)
    claimed: set[int] = set()
    for rs in results:
        for payloads, result in rs:
            indices = [e.index for e in result.entries]
            first = indices[0]
            assert indices == list(range(first, first + len(payloads))), "batch was split"
            assert [entries[i].parse().payload for i in indices] == payloads
            assert claimed.isdisjoint(indices)
            claimed.update(indices)
            for i in (0, len(payloads) - 1):
                result.receipt(i).verify(log.verifier)
    assert claimed == set(range(total))
    assert len(seen) > 1, "the readers never ran alongside the writers"
    for old in seen[:: max(1, len(seen) // 20)]:
        c.consistency_proof(old, final)
