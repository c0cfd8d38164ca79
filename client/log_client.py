"""The gRPC client: every answer is verified before it is returned.

Checkpoints must carry a valid signature from the log's key (and name the
log's origin); proofs are checked against them with :mod:`sealog.client.verify`;
leaves are re-parsed and re-hashed. A server that lies gets a
:class:`~sealog.client.errors.VerificationError`, never a wrong answer.

Appends never duplicate and never lose an event: each entry carries an
idempotency key (a random one unless the caller gives its own), and the
request is retried, with the same keys, when the server is unavailable
(gRPC's retry policy) or the answer did not arrive in time (here).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from sealog.client.checkpoint import SignedCheckpoint, open_checkpoint
from sealog.client.errors import FormatError, InconsistentCheckpointsError, VerificationError
from sealog.client.hashing import leaf_hash as rfc6962_leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Verifier, NoteVerifier
from sealog.client.range_proof import VerifiedRange, verify_range
from sealog.client.verify import verify_consistency, verify_inclusion
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = [
    "AppendResult",
    "Entry",
    "InclusionProof",
    "LogClient",
    "Receipt",
]

_SERVICE = "sealog.v1.LogService"
_RETRY_CODES = ("UNAVAILABLE",)


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
        """Re-check the proof against the checkpoint (offline)."""
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
        cp = signed.checkpoint
        _parse_leaf(self.leaf)
        verify_inclusion(
            self.index, cp.size, rfc6962_leaf_hash(self.leaf), self.inclusion_proof, cp.root_hash
        )


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


T = TypeVar("T")


class LogClient:
    """A verifying client of one sealog log.

    ``verifier`` is the log's public key (a note verifier or its vkey string);
    ``origin``, if given, must be the origin line of every checkpoint (by
    default the key's name).
    """

    def __init__(
        self,
        target: str,
        verifier: NoteVerifier | str,
        *,
        origin: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
        max_attempts: int = 5,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.verifier: NoteVerifier = (
            Ed25519Verifier.from_vkey(verifier) if isinstance(verifier, str) else verifier
        )
        self.origin = origin if origin is not None else self.verifier.name
        self.timeout = timeout
        self.max_attempts = max_attempts
        if channel is None:
            options = [
                ("grpc.enable_retries", 1),
                ("grpc.service_config", _service_config(max_attempts)),
                ("grpc.max_receive_message_length", 80 * 1024 * 1024),
                ("grpc.max_send_message_length", 80 * 1024 * 1024),
            ]
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        self._stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
        self._last_note: tuple[bytes, SignedCheckpoint] | None = None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------
    def _call(self, method: Callable[..., T], request: Any) -> T:
        """Call with a deadline; retry a deadline miss (the request is idempotent)."""
        delay = 0.1
        for attempt in range(1, self.max_attempts + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.DEADLINE_EXCEEDED or attempt == self.max_attempts:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def _open(self, note: bytes) -> SignedCheckpoint:
        cached = self._last_note
        if cached is not None and cached[0] == note:
            return cached[1]
        try:
            signed = open_checkpoint(note, self.verifier, origin=self.origin)
        except FormatError as e:
            raise VerificationError(f"the log answered a malformed checkpoint: {e}") from e
        self._last_note = (note, signed)
        return signed

    # --- appends ----------------------------------------------------------
    def append(self, payload: bytes, *, idempotency_key: str | None = None) -> Receipt:
        """Append one event; return its verified receipt."""
        return self.append_batch([payload], idempotency_keys=[idempotency_key]).receipt(0)

    def append_batch(
        self,
        payloads: Sequence[bytes],
        *,
        idempotency_keys: Sequence[str | None] | None = None,
    ) -> AppendResult:
        """Append events atomically, in order; return the verified result.

        Entries without an idempotency key get a random one, so retries never
        append an event twice.
        """
        given = list(idempotency_keys) if idempotency_keys is not None else [None] * len(payloads)
        if len(given) != len(payloads):
            raise ValueError("idempotency_keys must have one key (or None) per payload")
        keys = [k if k else secrets.token_urlsafe(24) for k in given]
        request = log_pb2.AppendRequest(
            entries=[
                log_pb2.AppendEntry(payload=p, idempotency_key=k)
                for p, k in zip(payloads, keys, strict=True)
            ]
        )
        response = self._call(self._stub.Append, request)
        return self._verify_append(payloads, response)

    def _verify_append(
        self, payloads: Sequence[bytes], response: log_pb2.AppendResponse
    ) -> AppendResult:
        signed = self._open(response.checkpoint)
        cp = signed.checkpoint
        if len(response.entries) != len(payloads):
            raise VerificationError(
                f"append answered {len(response.entries)} entries for {len(payloads)} sent"
            )
        entries: list[Entry] = []
        duplicates: list[bool] = []
        proofs: dict[int, tuple[bytes, ...]] = {}
        new_hashes: list[bytes] = []
        start, end = response.start, response.end
        for i, (e, payload) in enumerate(zip(response.entries, payloads, strict=True)):
            leaf = _parse_leaf(e.leaf)
            if leaf.payload != payload:
                raise VerificationError(
                    f"entry {i}: the log answered a leaf with another payload"
                    + (" (idempotency key reused for a different event?)" if e.duplicate else "")
                )
            entries.append(Entry(e.index, e.leaf))
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
        verified = None
        if new_hashes:
            if start + len(new_hashes) != end:
                raise VerificationError(
                    f"append answered range [{start}, {end}) for {len(new_hashes)} new entries"
                )
            proof = response.range_proof
            verified = verify_range(
                start,
                new_hashes,
                cp.size,
                cp.root_hash,
                proof.left_frontier,
                proof.consistency_proof,
            )
        return AppendResult(signed, tuple(entries), tuple(duplicates), proofs, verified)

    # --- checkpoints and proofs ----------------------------------------------
    def checkpoint(self, trusted: SignedCheckpoint | None = None) -> SignedCheckpoint:
        """The log's latest checkpoint, signature verified.

        With ``trusted``, also prove that the new checkpoint extends it; raise
        :class:`InconsistentCheckpointsError` (with both notes and the proof)
        if it does not, including when the log's size went backwards.
        """
        first = trusted.checkpoint.size if trusted is not None else 0
        response = self._call(
            self._stub.GetCheckpoint, log_pb2.GetCheckpointRequest(first_tree_size=first)
        )
        signed = self._open(response.checkpoint)
        if trusted is not None:
            self._check_consistent(trusted, signed, response.consistency_proof)
        return signed

    def _check_consistent(
        self, old: SignedCheckpoint, new: SignedCheckpoint, proof: Sequence[bytes]
    ) -> None:
        o, n = old.checkpoint, new.checkpoint
        if n.size < o.size:
            raise InconsistentCheckpointsError(
                o, n, proof, "the log's size went backwards", old.note, new.note
            )
        if o.size == 0:
            return
        try:
            verify_consistency(o.size, n.size, o.root_hash, n.root_hash, proof)
        except VerificationError as e:
            raise InconsistentCheckpointsError(o, n, proof, str(e), old.note, new.note) from e

    def consistency_proof(self, old: SignedCheckpoint, new: SignedCheckpoint) -> tuple[bytes, ...]:
        """The verified consistency proof between two checkpoints of this log."""
        o, n = old.checkpoint, new.checkpoint
        proof: Sequence[bytes] = ()
        if 0 < o.size < n.size:
            proof = self._call(
                self._stub.GetConsistencyProof,
                log_pb2.GetConsistencyProofRequest(first_tree_size=o.size, second_tree_size=n.size),
            ).consistency_proof
        self._check_consistent(old, new, proof)
        return tuple(proof)

    def _at(self, checkpoint: SignedCheckpoint | None) -> SignedCheckpoint:
        return checkpoint if checkpoint is not None else self.checkpoint()

    def inclusion_proof(
        self, index: int, checkpoint: SignedCheckpoint | None = None
    ) -> InclusionProof:
        """Prove leaf ``index`` is in ``checkpoint`` (default: the latest), verified."""
        return self.entry_and_proof(index, checkpoint)[1]

    def inclusion_proof_by_hash(
        self, leaf_hash: bytes, checkpoint: SignedCheckpoint | None = None
    ) -> InclusionProof:
        """Find and prove the leaf with this RFC 6962 leaf hash."""
        signed = self._at(checkpoint)
        cp = signed.checkpoint
        response = self._call(
            self._stub.GetInclusionProofByHash,
            log_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf_hash, tree_size=cp.size),
        )
        verify_inclusion(
            response.leaf_index, cp.size, leaf_hash, response.inclusion_proof, cp.root_hash
        )
        return InclusionProof(
            response.leaf_index, leaf_hash, tuple(response.inclusion_proof), signed
        )

    def entry_and_proof(
        self, index: int, checkpoint: SignedCheckpoint | None = None
    ) -> tuple[Entry, InclusionProof]:
        """Leaf ``index`` and its verified inclusion proof."""
        signed = self._at(checkpoint)
        cp = signed.checkpoint
        response = self._call(
            self._stub.GetEntryAndProof,
            log_pb2.GetEntryAndProofRequest(leaf_index=index, tree_size=cp.size),
        )
        _parse_leaf(response.leaf)
        lh = rfc6962_leaf_hash(response.leaf)
        verify_inclusion(index, cp.size, lh, response.inclusion_proof, cp.root_hash)
        return Entry(index, response.leaf), InclusionProof(
            index, lh, tuple(response.inclusion_proof), signed
        )

    def entries(
        self,
        start: int = 0,
        end: int | None = None,
        checkpoint: SignedCheckpoint | None = None,
        *,
        page_size: int = 0,
    ) -> Iterator[Entry]:
        """Leaves ``[start, end)`` (default: to the checkpoint's size), each page verified first."""
        signed = self._at(checkpoint)
        cp = signed.checkpoint
        end = cp.size if end is None else end
        if start >= end:
            return
        request = log_pb2.GetEntriesRequest(
            start=start, end=end, tree_size=cp.size, page_size=page_size
        )
        expected = start
        for page in self._stub.GetEntries(request, timeout=self.timeout):
            if page.start != expected or not page.leaves:
                raise VerificationError(
                    f"GetEntries page starts at {page.start} with {len(page.leaves)} leaves, "
                    f"want a page at {expected}"
                )
            for leaf in page.leaves:
                _parse_leaf(leaf)
            verify_range(
                page.start,
                [rfc6962_leaf_hash(leaf) for leaf in page.leaves],
                cp.size,
                cp.root_hash,
                page.range_proof.left_frontier,
                page.range_proof.consistency_proof,
            )
            for i, leaf in enumerate(page.leaves):
                yield Entry(page.start + i, leaf)
            expected += len(page.leaves)
        if expected != end:
            raise VerificationError(f"GetEntries stopped at {expected}, want {end}")


def _parse_leaf(data: bytes) -> Leaf:
    """Parse a leaf the log sent; a malformed one is the log's failure to verify."""
    try:
        return Leaf.parse(data)
    except FormatError as e:
        raise VerificationError(f"the log answered a malformed leaf: {e}") from e


def _service_config(max_attempts: int) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": _SERVICE}],
                    "retryPolicy": {
                        "maxAttempts": max(2, min(max_attempts, 5)),
                        "initialBackoff": "0.1s",
                        "maxBackoff": "5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": list(_RETRY_CODES),
                    },
                }
            ]
        }
    )
