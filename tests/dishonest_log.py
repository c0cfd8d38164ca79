"""A deliberately dishonest log: a LogService that serves whatever tree a test tells it to.

:class:`FakeLog` signs with a real log key, computes every proof from
``tests/rfc6962_reference.py`` (no sealog server code), and can lie in each
way a monitor must catch: serve a forked tree (``view``), serve leaves other
than the ones its hashes were computed from (``altered_entries``), serve a
fixed checkpoint note as its latest (a rolled-back one, one with a broken
signature), or a fixed witnessed note (with a stale cosignature). Run it
with :class:`FakeLogServer` on 127.0.0.1.
"""

from __future__ import annotations

import threading
from concurrent import futures
from typing import Any

import grpc
from rfc6962_reference import ReferenceTree

from sealog.client.checkpoint import Checkpoint, sign_checkpoint
from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Signer
from sealog.client.proof import subtree_nodes
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = ["FakeLog", "FakeLogServer", "make_leaves"]


def make_leaves(payloads: list[bytes], start_ms: int = 1_767_225_600_000) -> list[bytes]:
    """Leaf bytes as a sealog log would write them (v1, empty identity)."""
    return [Leaf(start_ms + i, "", p).to_bytes() for i, p in enumerate(payloads)]


class FakeLog(log_pb2_grpc.LogServiceServicer):
    """A LogService over an in-memory list of leaves, with switches to make it lie."""

    def __init__(self, signer: Ed25519Signer, leaves: list[bytes] | None = None) -> None:
        self.signer = signer
        self.origin = signer.name
        self.leaves: list[bytes] = list(leaves or [])
        self.lock = threading.Lock()
        # --- lies ---
        self.view: list[bytes] | None = None
        """If set, the tree this log serves (checkpoints, proofs, entries) instead of ``leaves``."""
        self.altered_entries: dict[int, bytes] = {}
        """Leaves GetEntries answers instead of the real ones; hashes and proofs stay honest."""
        self.latest_note: bytes | None = None
        """If set, GetCheckpoint answers this note as the latest (and no proof)."""
        self.witnessed_note: bytes | None = None
        """What GetCheckpoint answers with ``witnessed``; AddCosignature sets it."""
        self.cosigned: list[bytes] = []

    # --- building trees -----------------------------------------------------------
    def tree(self) -> list[bytes]:
        """The leaves this log currently serves."""
        return self.view if self.view is not None else self.leaves

    def append(self, payloads: list[bytes]) -> None:
        """Append honestly (to ``leaves``; to ``view`` too if one is set)."""
        with self.lock:
            new = make_leaves(payloads, 1_767_225_600_000 + len(self.leaves))
            self.leaves.extend(new)
            if self.view is not None:
                self.view.extend(new)

    def note(self, leaves: list[bytes] | None = None, size: int | None = None) -> bytes:
        """The signed checkpoint of ``leaves`` (default: the served tree) at ``size``."""
        leaves = self.tree() if leaves is None else leaves
        size = len(leaves) if size is None else size
        root = ReferenceTree(leaves).root(size)
        return sign_checkpoint(Checkpoint(self.origin, size, root), self.signer)

    # --- the service ---------------------------------------------------------------
    def GetCheckpoint(  # noqa: N802
        self, request: log_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetCheckpointResponse:
        with self.lock:
            if request.witnessed:
                if self.witnessed_note is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no witnessed checkpoint yet")
                return log_pb2.GetCheckpointResponse(checkpoint=self.witnessed_note)
            leaves = self.tree()
            note = self.latest_note or self.note(leaves)
            size = int(note.split(b"\n")[1])
            proof: list[bytes] = []
            first = request.first_tree_size
            if 0 < first < size <= len(leaves):
                proof = ReferenceTree(leaves).proof(first, size)
            return log_pb2.GetCheckpointResponse(checkpoint=note, consistency_proof=proof)

    def GetConsistencyProof(  # noqa: N802
        self, request: log_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetConsistencyProofResponse:
        with self.lock:
            leaves = self.tree()
            first, second = request.first_tree_size, request.second_tree_size
            if not 0 < first <= second <= len(leaves):
                context.abort(grpc.StatusCode.OUT_OF_RANGE, "sizes out of range")
            proof = ReferenceTree(leaves).proof(first, second)
            return log_pb2.GetConsistencyProofResponse(consistency_proof=proof)

    def GetEntryAndProof(  # noqa: N802
        self, request: log_pb2.GetEntryAndProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetEntryAndProofResponse:
        with self.lock:
            leaves = self.tree()
            i, size = request.leaf_index, request.tree_size
            if not i < size <= len(leaves):
                context.abort(grpc.StatusCode.OUT_OF_RANGE, "out of range")
            return log_pb2.GetEntryAndProofResponse(
                leaf_index=i,
                tree_size=size,
                leaf=self.altered_entries.get(i, leaves[i]),
                inclusion_proof=ReferenceTree(leaves[:size]).path(i, size),
            )

    def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> Any:
        with self.lock:
            leaves = list(self.tree())
            altered = dict(self.altered_entries)
        size = request.tree_size
        if not request.start < request.end <= size <= len(leaves):
            context.abort(grpc.StatusCode.OUT_OF_RANGE, "out of range")
        tree = ReferenceTree(leaves[:size])
        page = request.page_size or 7
        for start in range(request.start, request.end, page):
            end = min(request.end, start + page)
            yield log_pb2.EntriesPage(
                start=start,
                leaves=[altered.get(i, leaves[i]) for i in range(start, end)],
                range_proof=log_pb2.RangeProof(
                    left_frontier=[tree.mth(n.begin, n.end) for n in subtree_nodes(0, start)],
                    consistency_proof=tree.proof(end, size) if end < size else [],
                ),
            )

    def AddCosignature(  # noqa: N802
        self, request: log_pb2.AddCosignatureRequest, context: grpc.ServicerContext
    ) -> log_pb2.AddCosignatureResponse:
        with self.lock:
            self.cosigned.append(request.checkpoint)
            self.witnessed_note = request.checkpoint
            return log_pb2.AddCosignatureResponse(checkpoint=request.checkpoint)


class FakeLogServer:
    """A :class:`FakeLog` served on 127.0.0.1 (a port the kernel picks)."""

    def __init__(self, fake: FakeLog) -> None:
        self.fake = fake
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        log_pb2_grpc.add_LogServiceServicer_to_server(fake, self.server)  # type: ignore[no-untyped-call]
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None).wait(5)
