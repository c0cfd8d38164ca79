"""A lying log cannot pass off an old leaf as the receipt of a new event.

``duplicate = true`` says "this event is already in the log, here is its
leaf". Everything else in such an answer verifies (the leaf is in the
signed tree), so the client must itself reject a duplicate that no retry of
its own can have caused: otherwise it hands out a valid-looking receipt for
an event that was never logged.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from dishonest_log import FakeLog, FakeLogServer
from rfc6962_reference import ReferenceTree

from sealog.client.errors import VerificationError
from sealog.client.leaf import Leaf
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.proof import subtree_nodes
from sealog.v1 import log_pb2

HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class LyingAppendLog(FakeLog):
    """A FakeLog that appends for ``identity``, and answers the payloads in
    ``lie_with`` (payload -> index of an old leaf) as duplicates of that leaf."""

    def __init__(self, signer: Ed25519Signer, identity: str = "svc") -> None:
        super().__init__(signer)
        self.identity = identity
        self.lie_with: dict[bytes, int] = {}

    def add(self, payload: bytes, *, accepted_at_ms: int, identity: str | None = None) -> int:
        """Put a leaf into the log directly; return its index."""
        with self.lock:
            leaf = Leaf(accepted_at_ms, self.identity if identity is None else identity, payload)
            self.leaves.append(leaf.to_bytes())
            return len(self.leaves) - 1

    def Append(  # noqa: N802
        self, request: log_pb2.AppendRequest, context: grpc.ServicerContext
    ) -> log_pb2.AppendResponse:
        with self.lock:
            start = len(self.leaves)
            stamped = now_ms()
            answers: list[tuple[int, bool]] = []
            for entry in request.entries:
                old = self.lie_with.get(entry.payload)
                if old is not None:
                    answers.append((old, True))
                    continue
                self.leaves.append(Leaf(stamped, self.identity, entry.payload).to_bytes())
                answers.append((len(self.leaves) - 1, False))
            size = len(self.leaves)
            tree = ReferenceTree(self.leaves)
            return log_pb2.AppendResponse(
                checkpoint=self.note(self.leaves),
                entries=[
                    log_pb2.AppendedEntry(
                        index=index,
                        leaf=self.leaves[index],
                        duplicate=dup,
                        inclusion_proof=tree.path(index, size) if dup else [],
                    )
                    for index, dup in answers
                ],
                start=start,
                end=size,
                range_proof=log_pb2.RangeProof(
                    left_frontier=[tree.mth(n.begin, n.end) for n in subtree_nodes(0, start)],
                    consistency_proof=[],
                ),
            )


@pytest.fixture
def fake() -> Iterator[tuple[LyingAppendLog, LogClient]]:
    signer = Ed25519Signer.generate("sealog.localhost/lying")
    log = LyingAppendLog(signer)
    server = FakeLogServer(log)
    client = LogClient(server.target, signer.verifier().vkey, timeout=5, max_attempts=1)
    try:
        yield log, client
    finally:
        client.close()
        server.stop()


def test_the_honest_fake_is_accepted(fake: tuple[LyingAppendLog, LogClient]) -> None:
    log, client = fake
    result = client.append_batch([b"a", b"b"])
    assert result.duplicates == (False, False)
    log.lie_with[b"a"] = 0  # a true retry would look like this: a leaf of just now
    assert client.append(b"a", idempotency_key="mine").duplicate


def test_a_fresh_key_answered_with_an_older_leaf_is_rejected(
    fake: tuple[LyingAppendLog, LogClient],
) -> None:
    """The issue's lie: a new event, the same payload as an old one, answered duplicate."""
    log, client = fake
    old = log.add(b"heartbeat", accepted_at_ms=now_ms() - HOUR_MS)
    log.lie_with[b"heartbeat"] = old

    with pytest.raises(VerificationError, match="before this append was first sent"):
        client.append(b"heartbeat")  # the client makes up the key: nobody used it before


def test_the_skew_tolerance_bounds_what_counts_as_older(
    fake: tuple[LyingAppendLog, LogClient],
) -> None:
    log, client = fake
    log.lie_with[b"tick"] = log.add(b"tick", accepted_at_ms=now_ms() - 60_000)
    client.append(b"tick")  # a minute behind: within the default 300 s the clock may lag
    client.clock_skew_s = 10.0
    with pytest.raises(VerificationError, match=r"tolerance 10 s"):
        client.append(b"tick")


def test_a_duplicate_stamped_with_another_identity_is_rejected(
    fake: tuple[LyingAppendLog, LogClient],
) -> None:
    log, client = fake
    theirs = log.add(b"rotate key", accepted_at_ms=now_ms(), identity="someone-else")
    log.lie_with[b"rotate key"] = theirs

    with pytest.raises(VerificationError, match="stamped identities 'svc' and 'someone-else'"):
        client.append_batch([b"mine", b"rotate key"], idempotency_keys=["k1", "k2"])
    client.identity = "svc"  # a client that knows who it is checks a lone entry too
    with pytest.raises(VerificationError, match="this client authenticates as 'svc'"):
        client.append(b"rotate key", idempotency_key="k2")


def test_generated_keys_are_duplicates_all_together_or_not_at_all(
    fake: tuple[LyingAppendLog, LogClient],
) -> None:
    """An earlier attempt of the same call logs all of its entries or none."""
    log, client = fake
    log.lie_with[b"x"] = log.add(b"x", accepted_at_ms=now_ms())

    with pytest.raises(VerificationError, match="would have logged both"):
        client.append_batch([b"x", b"y"])
