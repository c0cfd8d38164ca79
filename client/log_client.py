"""The gRPC client: every answer is verified before it is returned.

Checkpoints must carry a valid signature from the log's key (and name the
log's origin); proofs are checked against them with :mod:`sealog.client.verify`;
leaves are re-parsed and re-hashed. A server that lies gets a
:class:`~sealog.client.errors.VerificationError`, never a wrong answer. The
checks themselves are the pure functions of :mod:`sealog.client.answers`:
this module makes the calls and hands them what the log sent.

Appends never duplicate and never lose an event: each entry carries an
idempotency key (a random one unless the caller gives its own), and the
request is retried, with the same keys, when the server is unavailable, over
a quota or queue limit that it says will clear (google.rpc.RetryInfo), or the
answer did not arrive in time: :class:`~sealog.client.retry.RetryPolicy`
says when, waiting at least the delay the log asked for, and for how long.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc

from sealog.client.answers import (
    DUPLICATE_CLOCK_SKEW_S,
    AnsweredEntry,
    AppendResult,
    Entry,
    InclusionProof,
    Receipt,
    verify_append_answer,
    verify_audit_page,
    verify_audited_tree,
    verify_entries_complete,
    verify_entries_page,
    verify_entry,
    verify_search_result,
)
from sealog.client.api_key import with_api_key
from sealog.client.checkpoint import Checkpoint, SignedCheckpoint, open_checkpoint
from sealog.client.compact import CompactRange
from sealog.client.cosignature import Cosignature, CosignatureVerifier
from sealog.client.display import escape
from sealog.client.errors import (
    FormatError,
    InconsistentCheckpointsError,
    VerificationError,
)
from sealog.client.leaf import MAX_IDENTITY_BYTES
from sealog.client.note import Ed25519Verifier, NoteVerifier
from sealog.client.retry import RetryPolicy
from sealog.client.verify import verify_consistency, verify_inclusion
from sealog.client.witness_policy import WitnessPolicy
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = [
    "DUPLICATE_CLOCK_SKEW_S",
    "AppendResult",
    "Entry",
    "InclusionProof",
    "LogClient",
    "Receipt",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class LogClient:
    """A verifying client of one sealog log.

    ``verifier`` is the log's public key (a note verifier or its vkey string);
    ``origin``, if given, must be the origin line of every checkpoint (by
    default the key's name).

    ``witnesses`` (verifier keys, type 0x04) set a witness policy: at least
    ``witness_threshold`` of them (default: all) must have cosigned a
    checkpoint before :meth:`checkpoint` returns it, and cosignatures older
    than ``witness_max_age_s`` do not count. A :class:`WitnessPolicy` may be
    passed instead. With a policy, :meth:`checkpoint` (and every proof that
    uses the default checkpoint) asks for the log's witnessed checkpoint.

    ``entries_per_call`` bounds the leaves one GetEntries call asks for; it
    must not exceed the server's ``max_entries_per_request_range``.

    ``retry`` says which failed calls are tried again and for how long
    (:class:`~sealog.client.retry.RetryPolicy`; by default up to
    ``max_attempts`` attempts, honouring the log's RetryInfo up to 30 s a wait
    and 60 s in all). A GetEntries stream that fails is resumed after its
    last verified page.

    ``api_key`` is presented on every call (``authorization: Bearer``);
    ``credentials`` (see :func:`sealog.client.tls.channel_credentials`)
    connect with TLS, with a client certificate for mutual TLS.

    ``identity``, if given, is the identity the log must have stamped into
    every leaf an append answers (new or duplicate). ``clock_skew_s`` bounds
    how far the log's clock may be behind this machine's: a duplicate for an
    idempotency key this client generated must have been accepted after the
    append was first sent, less this (docs/api.md, "Duplicate answers").
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
        witnesses: WitnessPolicy | Sequence[CosignatureVerifier | str] = (),
        witness_threshold: int | None = None,
        witness_max_age_s: float | None = None,
        api_key: str | None = None,
        entries_per_call: int = 100_000,
        identity: str | None = None,
        clock_skew_s: float = DUPLICATE_CLOCK_SKEW_S,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.verifier: NoteVerifier = (
            Ed25519Verifier.from_vkey(verifier) if isinstance(verifier, str) else verifier
        )
        self.origin = origin if origin is not None else self.verifier.name
        self.policy: WitnessPolicy | None
        if isinstance(witnesses, str):
            witnesses = [witnesses]  # one key, not a sequence of characters
        if isinstance(witnesses, WitnessPolicy):
            self.policy = witnesses
        elif witnesses:
            self.policy = WitnessPolicy.from_vkeys(witnesses, witness_threshold, witness_max_age_s)
        else:
            if witness_threshold is not None:
                raise ValueError("witness_threshold needs witness keys (witnesses=[...])")
            self.policy = None
        self.timeout = timeout
        self.retry = retry if retry is not None else RetryPolicy(max_attempts=max_attempts)
        if entries_per_call < 1:
            raise ValueError(f"entries_per_call: {entries_per_call}, want >= 1")
        self.entries_per_call = entries_per_call
        if identity is not None and len(identity.encode()) > MAX_IDENTITY_BYTES:
            raise ValueError(f"identity: longer than {MAX_IDENTITY_BYTES} bytes")
        if clock_skew_s < 0:
            raise ValueError(f"clock_skew_s: {clock_skew_s}, want >= 0")
        self.identity = identity
        self.clock_skew_s = clock_skew_s
        if channel is None:
            # No gRPC retry policy: it would retry UNAVAILABLE without the log's
            # RetryInfo delay. Retries are this client's (RetryPolicy); gRPC only
            # makes its transparent retries of calls that never left the client.
            options = [
                ("grpc.max_receive_message_length", 80 * 1024 * 1024),
                ("grpc.max_send_message_length", 80 * 1024 * 1024),
            ]
            if credentials is None:
                channel = grpc.insecure_channel(target, options=options)
            else:
                channel = grpc.secure_channel(target, credentials, options=options)
        self._channel = channel
        if api_key is not None:
            channel = with_api_key(channel, api_key)
        self._stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
        self._last_note: tuple[bytes, SignedCheckpoint] | None = None
        self.last_received_note = b""
        """The last checkpoint note the server sent, verified or not (a monitor's evidence)."""

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> LogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------
    @property
    def max_attempts(self) -> int:
        """Attempts per call, the first one included (``retry.max_attempts``)."""
        return self.retry.max_attempts

    def _call(self, method: Callable[..., T], request: Any) -> T:
        """Call with a deadline; retry as :attr:`retry` says, with the same request.

        Every request is idempotent (appends carry their idempotency keys), so
        sending the same one again never logs an event twice.
        """
        attempt, waited = 1, 0.0
        while True:
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as e:
                wait = self.retry.wait_before_retry(e, attempt, waited)
                if wait is None:
                    raise
                _log_retry(e, attempt, self.retry.max_attempts, wait)
            time.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    def _entries_pages(
        self, start: int, end: int, tree_size: int, page_size: int
    ) -> Iterator[log_pb2.EntriesPage]:
        """GetEntries pages for ``[start, end)``; a failed stream is resumed.

        After a retryable failure (:attr:`retry`) the call is made again from
        the end of the last page the caller took, so no leaf is skipped or
        served twice. Each page taken resets the count of attempts: only
        failures in a row, with nothing received between them, give up.
        The caller checks every page (start, count, proof).
        """
        attempt, waited = 1, 0.0
        while start < end:
            request = log_pb2.GetEntriesRequest(
                start=start, end=end, tree_size=tree_size, page_size=page_size
            )
            try:
                for page in self._stub.GetEntries(request, timeout=self.timeout):
                    attempt, waited = 1, 0.0
                    yield page
                    start = page.start + len(page.leaves)
                return
            except grpc.RpcError as e:
                wait = self.retry.wait_before_retry(e, attempt, waited)
                if wait is None:
                    raise
                _log_retry(e, attempt, self.retry.max_attempts, wait)
            time.sleep(wait)
            attempt, waited = attempt + 1, waited + wait

    def _open(self, note: bytes) -> SignedCheckpoint:
        self.last_received_note = note
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
        sent_ms = time.time_ns() // 1_000_000  # before the first attempt
        response = self._call(self._stub.Append, request)
        generated = [not k for k in given]
        return self._verify_append(payloads, response, generated=generated, sent_ms=sent_ms)

    def _verify_append(
        self,
        payloads: Sequence[bytes],
        response: log_pb2.AppendResponse,
        *,
        generated: Sequence[bool] = (),
        sent_ms: int = 0,
    ) -> AppendResult:
        """Verify an Append answer; ``generated[i]`` says this client made entry i's
        key up for this call (first sent at ``sent_ms``, this machine's clock)."""
        signed = self._open(response.checkpoint)
        proof = response.range_proof
        return verify_append_answer(
            signed,
            payloads,
            [
                AnsweredEntry(e.index, e.leaf, e.duplicate, tuple(e.inclusion_proof))
                for e in response.entries
            ],
            start=response.start,
            end=response.end,
            left_frontier=tuple(proof.left_frontier),
            consistency_proof=tuple(proof.consistency_proof),
            generated=generated,
            sent_ms=sent_ms,
            identity=self.identity,
            clock_skew_s=self.clock_skew_s,
        )

    # --- checkpoints and proofs ----------------------------------------------
    def checkpoint(
        self, trusted: SignedCheckpoint | None = None, *, witnessed: bool | None = None
    ) -> SignedCheckpoint:
        """The log's latest checkpoint, signature verified.

        With ``trusted``, also prove that the new checkpoint extends it; raise
        :class:`InconsistentCheckpointsError` (with both notes and the proof)
        if it does not, including when the log's size went backwards.

        ``witnessed`` (default: whether this client has a witness policy) asks
        for the log's witnessed checkpoint instead, and checks it against the
        policy (:class:`~sealog.client.errors.WitnessPolicyError` names the
        missing witnesses). It may be older than ``trusted``: then it is
        proven to be a prefix of ``trusted`` and returned.
        """
        if witnessed is None:
            witnessed = self.policy is not None
        if witnessed:
            return self._witnessed_checkpoint(trusted)
        first = trusted.checkpoint.size if trusted is not None else 0
        response = self._call(
            self._stub.GetCheckpoint, log_pb2.GetCheckpointRequest(first_tree_size=first)
        )
        signed = self._open(response.checkpoint)
        if trusted is not None:
            self._check_consistent(trusted, signed, response.consistency_proof)
        return signed

    def _witnessed_checkpoint(self, trusted: SignedCheckpoint | None) -> SignedCheckpoint:
        response = self._call(
            self._stub.GetCheckpoint, log_pb2.GetCheckpointRequest(witnessed=True)
        )
        signed = self._open(response.checkpoint)
        if trusted is not None:
            self.consistency_between(trusted, signed)
        self.check_witnesses(signed)
        return signed

    def check_witnesses(self, checkpoint: SignedCheckpoint) -> tuple[Cosignature, ...]:
        """Check a checkpoint against this client's witness policy; return its cosignatures.

        Raises :class:`~sealog.client.errors.WitnessPolicyError` (naming the
        missing witnesses) or InvalidSignatureError (a listed witness's line
        does not verify); returns ``()`` when the client has no policy.
        """
        if self.policy is None:
            return ()
        try:
            return self.policy.check(checkpoint.note)
        except FormatError as e:
            raise VerificationError(f"the log answered a malformed checkpoint: {e}") from e

    def add_cosignature(self, cosigned_note: bytes) -> SignedCheckpoint:
        """Give the log a witness cosignature on one of its checkpoints (AddCosignature).

        Returns the log's witnessed checkpoint afterwards, its signature
        verified (not checked against this client's policy).
        """
        response = self._call(
            self._stub.AddCosignature, log_pb2.AddCosignatureRequest(checkpoint=cosigned_note)
        )
        return self._open(response.checkpoint)

    def consistency_between(self, a: SignedCheckpoint, b: SignedCheckpoint) -> tuple[bytes, ...]:
        """Prove that two checkpoints of this log are consistent, whichever is larger.

        The smaller one must be a prefix of the larger one (equal sizes: equal
        roots). Raises :class:`InconsistentCheckpointsError` with the smaller
        checkpoint as ``old``. Returns the verified proof.
        """
        old, new = (a, b) if a.checkpoint.size <= b.checkpoint.size else (b, a)
        return self.consistency_proof(old, new)

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

    def audit_entries(
        self,
        tree: CompactRange,
        checkpoint: SignedCheckpoint,
        *,
        end: int | None = None,
        page_size: int = 0,
    ) -> Iterator[CompactRange]:
        """Download leaves ``[tree.size, end)`` and check them against ``checkpoint`` yourself.

        This is a monitor's full audit. ``tree`` is the compact range of the
        leaves ``[0, tree.size)`` the caller already verified (it is not
        changed). Each leaf is re-parsed (docs/leaf-format.md) and re-hashed
        onto a copy of ``tree``; after each page, the root of that tree is
        checked against the checkpoint's root, with the consistency proof the
        page carries (or compared directly at the checkpoint's size). The
        server's own left frontier is not used, so a server whose stored
        leaves were changed, or whose hashes lie about them, is caught at the
        first page it serves wrongly: :class:`EntriesMismatchError`, which
        carries the page, the proof and the tree before the page.

        Yields a copy of the verified tree after each page; ``end`` defaults
        to the checkpoint's size.
        """
        cp = checkpoint.checkpoint
        end = cp.size if end is None else end
        if not tree.size <= end <= cp.size:
            raise ValueError(
                f"audit of [{tree.size}, {end}) in tree size {cp.size}: "
                "want tree.size <= end <= checkpoint size"
            )
        if tree.size == end:
            verify_audited_tree(tree, checkpoint)
            return
        current = tree
        for page in self._entries_pages(tree.size, end, cp.size, page_size):
            current = verify_audit_page(
                current,
                checkpoint,
                page.start,
                tuple(page.leaves),
                tuple(page.range_proof.consistency_proof),
                end=end,
            )
            yield current.copy()
        verify_entries_complete(current.size, end)

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
        return verify_entry(signed, index, response.leaf, tuple(response.inclusion_proof))

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
        # One GetEntries call per window: a server bounds the leaves one call may ask for.
        step = self.entries_per_call
        for window in range(start, end, step):
            yield from self._entries_window(cp, window, min(end, window + step), page_size)

    def _entries_window(
        self, cp: Checkpoint, start: int, end: int, page_size: int
    ) -> Iterator[Entry]:
        expected = start
        for page in self._entries_pages(start, end, cp.size, page_size):
            proof = page.range_proof
            yield from verify_entries_page(
                cp,
                page.start,
                tuple(page.leaves),
                tuple(proof.left_frontier),
                tuple(proof.consistency_proof),
                next_index=expected,
                end=end,
            )
            expected += len(page.leaves)
        verify_entries_complete(expected, end)

    def search(
        self,
        identity: str,
        since_ms: int = 0,
        until_ms: int = 0,
        checkpoint: SignedCheckpoint | None = None,
        *,
        page_size: int = 0,
    ) -> Iterator[Entry]:
        """The entries ``identity`` appended with acceptance times in [since_ms, until_ms].

        ``until_ms = 0`` means no upper bound. Every result is checked before it
        is yielded: its inclusion proof in the checkpoint's tree, its identity
        and its time, and that results come in index order. So an index that
        returns the wrong entries is caught; one that leaves entries out is
        not (only a full read of the log can show that).
        """
        signed = self._at(checkpoint)
        cp = signed.checkpoint
        if cp.size == 0:
            return
        start = 0
        while True:
            response = self._call(
                self._stub.SearchEntries,
                log_pb2.SearchEntriesRequest(
                    identity=identity,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    tree_size=cp.size,
                    start_index=start,
                    page_size=page_size,
                ),
            )
            for r in response.results:
                entry = verify_search_result(
                    cp,
                    r.index,
                    r.leaf,
                    tuple(r.inclusion_proof),
                    identity=identity,
                    since_ms=since_ms,
                    until_ms=until_ms,
                    next_index=start,
                )
                start = r.index + 1
                yield entry
            if not response.next_start_index:
                return
            if response.next_start_index < start:
                raise VerificationError("SearchEntries next_start_index went backwards")
            start = response.next_start_index

    def reload_policy(self) -> tuple[int, int]:
        """Ask the log to re-read its access policy (admin role); returns (identities, API keys)."""
        response = self._call(self._stub.ReloadPolicy, log_pb2.ReloadPolicyRequest())
        return response.identities, response.api_keys


def _log_retry(error: grpc.RpcError, attempt: int, attempts: int, wait: float) -> None:
    log.info(
        "%s (%s); attempt %d of %d failed, retrying in %.2f s with the same request",
        error.code().name,
        escape(error.details() or ""),
        attempt,
        attempts,
        wait,
    )
