"""Throughput of sealog's trusted core: proof checks, note signature checks, appends.

Run from the repository root::

    python -m bench.core            # about 15 seconds
    python -m bench.core --quick    # a smoke run of a second or two; rates are not meaningful

It prints, for trees of 2^10, 2^20 and 2^30 leaves, how many inclusion and
consistency proofs :mod:`sealog.client.verify` checks per second; how many
signed checkpoint notes it opens per second (Ed25519); and how many leaf hashes
a :class:`~sealog.client.compact.CompactRange` appends per second. Each rate is
the best of repeated batches, on one core, and is shown beside its goal where
there is one.

Trees of 2^20 and 2^30 leaves are never built. An inclusion proof there is 20
or 30 random hashes with the root they lead to, from
:func:`~sealog.client.verify.root_from_inclusion_proof`. A consistency proof
needs two roots that agree, so it is read from a :class:`StandInTree`, in which
every perfect subtree off the path of the old tree's last leaf is a stand-in
hash; the verifier never looks inside those, so the proof is as hard to check
as a real one.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealog.client.compact import CompactRange
from sealog.client.hashing import HASH_SIZE, node_hash
from sealog.client.proof import (
    NodeID,
    consistency_proof_nodes,
    fold_subtree,
    inclusion_proof_nodes,
    subtree_nodes,
)
from sealog.client.verify import (
    inclusion_proof_length,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

__all__ = ["Result", "StandInTree", "main", "run"]

TREE_SIZES = (1 << 10, 1 << 20, 1 << 30)
INCLUSION_GOAL = 15_000
"""Inclusion proofs checked per second at 2^20 leaves, on the 2-core reference machine."""
APPEND_GOAL = 250_000
"""Leaf hashes appended to a compact range per second."""
APPENDS = 1_000_000
PROOFS_PER_SIZE = 64
"""Distinct proofs per tree size; the timed loop cycles through them."""
SEED = 6962


@dataclass(frozen=True)
class Result:
    """One measured rate."""

    name: str
    per_second: float
    goal: float | None = None

    def line(self) -> str:
        text = f"{self.name:<48} {self.per_second:>12,.0f}/s"
        if self.goal is None:
            return text
        ratio = self.per_second / self.goal
        verdict = "ok" if ratio >= 1 else "BELOW GOAL"
        return f"{text}   goal {self.goal:>9,.0f}/s   {ratio:5.2f}x  {verdict}"


def best_rate(batch: Callable[[], int], seconds: float) -> float:
    """Run ``batch`` (which returns how many operations it did) for ``seconds``; best rate."""
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        done = batch()
        elapsed = time.perf_counter() - start
        best = max(best, done / elapsed)
        if time.perf_counter() >= deadline:
            return best


def _log2(size: int) -> int:
    return size.bit_length() - 1


# --- Proof inputs ----------------------------------------------------------------------------

InclusionCase = tuple[int, int, bytes, list[bytes], bytes]
ConsistencyCase = tuple[int, int, bytes, bytes, list[bytes]]


def _built_tree(size: int, rnd: random.Random) -> dict[NodeID, bytes]:
    """Every perfect-subtree hash of a real tree of ``size`` random leaf hashes."""
    compact = CompactRange()
    stored: dict[NodeID, bytes] = {}
    for index in range(size):
        for level, h in enumerate(compact.append(rnd.randbytes(HASH_SIZE))):
            stored[NodeID(level, index >> level)] = h
    return stored


def _fold(nodes: Sequence[NodeID], hash_of: Callable[[NodeID], bytes]) -> bytes:
    return fold_subtree([hash_of(node) for node in nodes])


class StandInTree:
    """A tree of any size in which only the path of one leaf is hashed for real.

    The hash of a perfect subtree that holds leaf ``special`` is computed from
    its two halves; every other perfect subtree gets a stand-in hash derived
    from its position. Roots and proofs read from it agree with each other as
    long as no check recomputes a stand-in from its children, which proofs
    about leaf ``special`` (or about the tree that ends with it) never do.
    """

    def __init__(self, special: int) -> None:
        self.special = special
        self._memo: dict[NodeID, bytes] = {}

    def hash_of(self, node: NodeID) -> bytes:
        cached = self._memo.get(node)
        if cached is None:
            if node.level > 0 and node.begin <= self.special < node.end:
                left = self.hash_of(NodeID(node.level - 1, 2 * node.index))
                right = self.hash_of(NodeID(node.level - 1, 2 * node.index + 1))
                cached = node_hash(left, right)
            else:
                cached = hashlib.sha256(b"stand-in %d %d" % (node.level, node.index)).digest()
            self._memo[node] = cached
        return cached

    def root(self, size: int) -> bytes:
        return _fold(subtree_nodes(0, size), self.hash_of)


def inclusion_cases(size: int, count: int, rnd: random.Random) -> list[InclusionCase]:
    """``count`` valid inclusion proofs for random leaves of a tree of ``size``."""
    indexes = [rnd.randrange(size) for _ in range(count)]
    cases: list[InclusionCase] = []
    if size <= 1 << 16:
        stored = _built_tree(size, rnd)
        root = _fold(subtree_nodes(0, size), stored.__getitem__)
        for index in indexes:
            proof = [_fold(g, stored.__getitem__) for g in inclusion_proof_nodes(index, size)]
            cases.append((index, size, stored[NodeID(0, index)], proof, root))
        return cases
    for index in indexes:
        leaf = rnd.randbytes(HASH_SIZE)
        proof = [rnd.randbytes(HASH_SIZE) for _ in range(inclusion_proof_length(index, size))]
        cases.append(
            (index, size, leaf, proof, root_from_inclusion_proof(index, size, leaf, proof))
        )
    return cases


def consistency_cases(size: int, count: int, rnd: random.Random) -> list[ConsistencyCase]:
    """``count`` valid consistency proofs from random smaller sizes to ``size``."""
    cases: list[ConsistencyCase] = []
    stored = _built_tree(size, rnd) if size <= 1 << 16 else None
    for _ in range(count):
        size1 = rnd.randrange(1, size)
        hash_of = stored.__getitem__ if stored is not None else StandInTree(size1 - 1).hash_of
        proof = [_fold(g, hash_of) for g in consistency_proof_nodes(size1, size)]
        root1 = _fold(subtree_nodes(0, size1), hash_of)
        root2 = _fold(subtree_nodes(0, size), hash_of)
        cases.append((size1, size, root1, root2, proof))
    return cases


def bench_inclusion(size: int, seconds: float, rnd: random.Random) -> Result:
    cases = inclusion_cases(size, PROOFS_PER_SIZE, rnd)
    for case in cases:
        verify_inclusion(*case)  # the inputs must be valid, or the rate means nothing

    def batch() -> int:
        for _ in range(8):
            for index, tree_size, leaf, proof, root in cases:
                verify_inclusion(index, tree_size, leaf, proof, root)
        return 8 * len(cases)

    goal = INCLUSION_GOAL if size == 1 << 20 else None
    name = f"inclusion proof verifications, size 2^{_log2(size)}"
    return Result(name, best_rate(batch, seconds), goal)


def bench_consistency(size: int, seconds: float, rnd: random.Random) -> Result:
    cases = consistency_cases(size, PROOFS_PER_SIZE, rnd)
    for case in cases:
        verify_consistency(*case)

    def batch() -> int:
        for _ in range(8):
            for size1, size2, root1, root2, proof in cases:
                verify_consistency(size1, size2, root1, root2, proof)
        return 8 * len(cases)

    name = f"consistency proof verifications, size 2^{_log2(size)}"
    return Result(name, best_rate(batch, seconds))


# --- Signatures ------------------------------------------------------------------------------


def bench_raw_ed25519(seconds: float) -> Result:
    key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"sealog bench key").digest())
    public = key.public_key()
    message = b"example.com/sealog\n1073741824\n" + base64.b64encode(bytes(range(32))) + b"\n"
    message += b"x" * (100 - len(message))
    signature = key.sign(message)

    def batch() -> int:
        for _ in range(100):
            public.verify(signature, message)
        return 100

    return Result("Ed25519 verifications (cryptography, 100 B)", best_rate(batch, seconds))


def bench_open_note(seconds: float) -> Result | str:
    """Opened checkpoint notes per second, or why they could not be measured."""
    try:
        from sealog.client.note import Ed25519Signer, open_note, sign_note  # noqa: PLC0415
    except ImportError as e:
        return f"note verifications: sealog.client.note unavailable ({e}); raw Ed25519 only"
    signer = Ed25519Signer.generate("example.com/sealog")
    verifiers = [signer.verifier()]
    root = base64.b64encode(hashlib.sha256(b"root").digest()).decode()
    note = sign_note(f"example.com/sealog\n1073741824\n{root}\n".encode(), signer)
    open_note(note, verifiers)

    def batch() -> int:
        for _ in range(100):
            open_note(note, verifiers)
        return 100

    return Result("signed checkpoint notes opened (open_note)", best_rate(batch, seconds))


# --- Compact range -----------------------------------------------------------------------------


def bench_appends(count: int, repeats: int, rnd: random.Random) -> Result:
    leaf_hashes = [rnd.randbytes(HASH_SIZE) for _ in range(count)]
    best = 0.0
    for _ in range(repeats):
        compact = CompactRange()
        append = compact.append
        start = time.perf_counter()
        for h in leaf_hashes:
            append(h)
        best = max(best, count / (time.perf_counter() - start))
    name = f"compact range appends ({count:,} leaf hashes)"
    return Result(name, best, APPEND_GOAL)


# --- Driver ------------------------------------------------------------------------------------


def run(*, quick: bool = False, report: Callable[[str], None] = print) -> list[Result]:
    """Measure everything, reporting each line as it is ready; return the results."""
    seconds = 0.02 if quick else 1.0
    rnd = random.Random(SEED)
    report(
        f"sealog core benchmark: Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, one core used{', QUICK (rates not meaningful)' if quick else ''}"
    )
    results: list[Result] = []

    def record(result: Result) -> None:
        results.append(result)
        report(result.line())

    for size in TREE_SIZES:
        record(bench_inclusion(size, seconds, rnd))
    for size in TREE_SIZES:
        record(bench_consistency(size, seconds, rnd))
    record(bench_raw_ed25519(seconds))
    note = bench_open_note(seconds)
    if isinstance(note, Result):
        record(note)
    else:
        report(note)
    record(bench_appends(10_000 if quick else APPENDS, 1 if quick else 3, rnd))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=(__doc__ or "").partition("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
