"""LogClient.entries against a log that answers more (or other) leaves than were asked for."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from dishonest_log import FakeLog, FakeLogServer, make_leaves
from rfc6962_reference import ReferenceTree

from sealog.client.errors import VerificationError
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.proof import subtree_nodes
from sealog.v1 import log_pb2


class OverreachingLog(FakeLog):
    """Serves pages that run past the requested ``end``, up to the tree size.

    Each page is honest (real leaves, a valid range proof), so only the window
    check catches it.
    """

    def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> Any:
        size = request.tree_size
        leaves = self.leaves[:size]
        tree = ReferenceTree(leaves)
        page = request.page_size or 7
        for start in range(request.start, size, page):
            end = min(size, start + page)
            yield log_pb2.EntriesPage(
                start=start,
                leaves=leaves[start:end],
                range_proof=log_pb2.RangeProof(
                    left_frontier=[tree.mth(n.begin, n.end) for n in subtree_nodes(0, start)],
                    consistency_proof=tree.proof(end, size) if end < size else [],
                ),
            )


@pytest.fixture
def overreaching() -> Iterator[tuple[FakeLogServer, str]]:
    signer = Ed25519Signer.generate("overreach.example/log")
    fake = OverreachingLog(signer, make_leaves([f"event {i}".encode() for i in range(20)]))
    server = FakeLogServer(fake)
    try:
        yield server, signer.verifier().vkey
    finally:
        server.stop()


@pytest.mark.parametrize(("start", "end"), [(0, 5), (3, 9), (0, 14), (15, 19)])
def test_entries_yields_nothing_past_end_from_a_log_that_sends_more(
    overreaching: tuple[FakeLogServer, str], start: int, end: int
) -> None:
    server, vkey = overreaching
    yielded: list[int] = []
    with (
        LogClient(server.target, vkey, timeout=10) as client,
        pytest.raises(VerificationError, match=f"ending by {end}"),
    ):
        for entry in client.entries(start, end):
            yielded.append(entry.index)
    assert all(start <= i < end for i in yielded), yielded
    assert yielded == list(range(start, start + len(yielded)))


def test_entries_window_split_over_calls_still_stops_at_end(
    overreaching: tuple[FakeLogServer, str],
) -> None:
    # entries_per_call splits [0, 12) into [0, 5), [5, 10), [10, 12): the first call overreaches.
    server, vkey = overreaching
    yielded: list[int] = []
    with (
        LogClient(server.target, vkey, timeout=10, entries_per_call=5) as client,
        pytest.raises(VerificationError),
    ):
        yielded.extend(e.index for e in client.entries(0, 12))
    assert yielded == []  # the first page of the first call already ran past 5


def test_entries_from_an_honest_log_reach_end_exactly() -> None:
    signer = Ed25519Signer.generate("honest.example/log")
    fake = FakeLog(signer, make_leaves([f"event {i}".encode() for i in range(20)]))
    server = FakeLogServer(fake)
    try:
        with LogClient(server.target, signer.verifier().vkey, timeout=10) as client:
            assert [e.index for e in client.entries(3, 17)] == list(range(3, 17))
    finally:
        server.stop()
