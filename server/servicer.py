"""The gRPC LogService: validate, call the log, convert the answer. Nothing else.

The service runs on grpc's asyncio server. RPCs with a small, bounded cost —
checkpoints and single proofs, which read O(log n) pages — run on the event
loop itself; an append waits there for the sequencer's commit without holding
a thread; the bulk ones (entry pages, searches) and the ones that write or
read files (cosignatures, policy reloads) run on a thread pool, so a slow one
never stalls the loop.

Domain errors map to status codes in one place, :func:`_status_of`. Nothing a
client can send ends in INTERNAL: that code means a bug or a broken disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, cast

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sealog.server import validate
from sealog.server.auth import Authenticator, Principal
from sealog.server.config import Settings
from sealog.server.entry_streams import EntryStreams, StalledStreamError, peer_address
from sealog.server.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ProofPreconditionError,
    QuotaExceededError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from sealog.server.log import Log
from sealog.server.policy import PolicyError
from sealog.server.quota import AppendQuota
from sealog.server.rpc_observer import RpcObserver
from sealog.server.sequencer import AppendOutcome
from sealog.server.storage import StorageCorruptError
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = ["LogServicer"]

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (ProofPreconditionError, grpc.StatusCode.INVALID_ARGUMENT),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (concurrent.futures.TimeoutError, grpc.StatusCode.UNAVAILABLE),
    (StorageCorruptError, grpc.StatusCode.DATA_LOSS),
    (StalledStreamError, grpc.StatusCode.DEADLINE_EXCEEDED),
)


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(error, kind):
            if isinstance(error, concurrent.futures.TimeoutError):
                return code, "append not committed in time; retry with the same idempotency keys"
            return code, str(error)
    log.exception("internal error", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


Context = grpc.aio.ServicerContext[Any, Any]


def _rejection(error: BaseException) -> str:
    """Why a call was refused, as the metrics count it ("" for other errors)."""
    if isinstance(error, UnauthenticatedError):
        return "unauthenticated"
    if isinstance(error, PermissionDeniedError):
        return "permission_denied"
    if isinstance(error, QuotaExceededError):
        return "quota"
    return ""


async def _abort(
    context: Context, error: BaseException, status: tuple[grpc.StatusCode, str] | None = None
) -> NoReturn:
    code, message = _status_of(error) if status is None else status
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is None:
        await context.abort(code, message)
    else:
        # google.rpc.RetryInfo in the status details says when to come back.
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromTimedelta(datetime.timedelta(seconds=retry_after))
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        await context.abort_with_status(  # type: ignore[attr-defined]  # missing from the stubs
            rpc_status.to_status(status)
        )
    raise AssertionError("unreachable")  # context.abort raises


R = TypeVar("R")
Handler = Callable[["LogServicer", Any, Principal], Awaitable[R]]


_NOBODY = Principal("", "anonymous")


class _Outcome:
    """How one observed call is going: who called, and the status it ends with."""

    __slots__ = ("code", "principal", "rejection", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.principal = _NOBODY
        self.code = "CANCELLED"  # unless it ends otherwise
        self.rejection = ""

    def failed(self, context: Context, error: Exception) -> tuple[grpc.StatusCode, str] | None:
        """Note why the call failed: the status to abort with, or None if the handler
        aborted it itself (``context.abort``'s AbortError, to be raised on)."""
        if isinstance(error, grpc.aio.AbortError):
            code = context.code()
            self.code = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
            return None
        status = _status_of(error)
        self.code = status[0].name
        self.rejection = _rejection(error)
        return status

    def record(
        self,
        observer: RpcObserver,
        kind: str,
        method: str,
        context: Context,
        request: Any,
        response: Any,
    ) -> None:
        observer.record(
            self.started,
            kind,
            method,
            self.code,
            context.peer(),
            self.principal.identity,
            self.principal.method,
            self.rejection,
            request,
            response,
        )


def _rpc(
    role: str,
) -> Callable[[Handler[R]], Callable[[LogServicer, Any, Context], Awaitable[R]]]:
    """Authenticate the caller, check it holds ``role``, run the handler, map errors.

    With an observer (metrics or the access log), the call's outcome is recorded
    when it ends (:mod:`sealog.server.rpc_observer`); without one, nothing is.
    """

    def decorate(method: Handler[R]) -> Callable[[LogServicer, Any, Context], Awaitable[R]]:
        action = method.__name__

        @functools.wraps(method)
        async def wrapper(self: LogServicer, request: Any, context: Context) -> R:
            observer = self._observer
            if observer is None:
                try:
                    principal = self._admit(context, role, action)
                    return await method(self, request, principal)
                except Exception as e:
                    if isinstance(e, grpc.aio.AbortError):  # raised by context.abort
                        raise
                    await _abort(context, e)
            outcome = _Outcome()
            response: R | None = None
            try:
                principal = self._admit(context, role, action, outcome)
                response = await method(self, request, principal)
                outcome.code = "OK"
                return response
            except Exception as e:
                status = outcome.failed(context, e)
                if status is None:
                    raise
                await _abort(context, e, status)
            finally:
                outcome.record(observer, "unary", action, context, request, response)

        return wrapper

    return decorate


SERVICE_NAME = "sealog.v1.LogService"

_WRITE_FAILED: tuple[type[Exception], ...] = (grpc.aio.InternalError,)
"""What a write raises once the call is gone (the client cancelled or disconnected): grpc's
``ExecuteBatchError``, public as its base class."""


async def _write_page(context: Context, message: log_pb2.EntriesPage, stall_s: float) -> None:
    """Write ``message``; it returns once the transport took it (HTTP/2 flow control).

    A reader that took nothing for ``stall_s`` gets no further page: once the
    transport takes this one (the client reads again), the stream ends with
    DEADLINE_EXCEEDED. The write is never cancelled: grpc cannot take a message
    back, nor queue a status beside it.
    """
    write = asyncio.ensure_future(context.write(message))
    write.add_done_callback(_retrieve)
    try:
        done, _ = await asyncio.wait({write}, timeout=stall_s)
        if not done:
            await write
            raise StalledStreamError(
                f"GetEntries: the client took no page for {stall_s:g} s "
                "(entry_stream_stall_s); read the stream steadily, or ask for fewer leaves"
            )
        write.result()
    finally:
        write.cancel()  # when the call itself was cancelled meanwhile; else a no-op


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a write's outcome seen: the caller reports it, or is gone and need not."""
    if not task.cancelled():
        task.exception()


def _time_out(waiter: asyncio.Future[AppendOutcome]) -> None:
    if not waiter.done():
        waiter.set_exception(concurrent.futures.TimeoutError())


class _Handoff:
    """Passes committed appends from the sequencer's thread to the event loop.

    The sequencer answers a whole batch at once; this wakes the loop once for
    all of it rather than once per request.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: list[
            tuple[asyncio.Future[AppendOutcome], concurrent.futures.Future[AppendOutcome]]
        ] = []

    def add(
        self,
        waiter: asyncio.Future[AppendOutcome],
        done: concurrent.futures.Future[AppendOutcome],
    ) -> None:
        """Called on any thread when ``done`` completes."""
        with self._lock:
            self._ready.append((waiter, done))
            if len(self._ready) > 1:
                return  # a delivery is already scheduled
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
        for waiter, done in ready:
            if waiter.done():  # the caller went away, or timed out
                continue
            error = done.exception()
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())


class LogServicer(log_pb2_grpc.LogServiceServicer):
    """sealog.v1.LogService over a :class:`~sealog.server.log.Log`.

    Until :meth:`attach` gives it the opened log, every RPC answers UNAVAILABLE.
    ``executor`` runs the RPCs that may take long (see the module docstring).
    """

    def __init__(
        self,
        log: Log | None = None,
        auth: Authenticator | None = None,
        quota: AppendQuota | None = None,
        executor: concurrent.futures.Executor | None = None,
        observer: RpcObserver | None = None,
    ) -> None:
        """``observer``, if given, is told of every RPC (the metrics and the access log)."""
        self._attached = log
        self._observer = observer
        self._draining = False
        self._auth = auth if auth is not None else Authenticator()
        self._quota = quota if quota is not None else AppendQuota()
        self._executor = executor
        self._handoff: _Handoff | None = None
        self._streams: EntryStreams | None = None

    def drain(self) -> None:
        """Answer every new call UNAVAILABLE (with RetryInfo): the server is stopping."""
        self._draining = True

    def attach(self, log: Log) -> None:
        """Start serving ``log`` (after its start-up self-check passed)."""
        self._attached = log

    @property
    def _log(self) -> Log:
        log = self._attached
        if log is None:
            raise UnavailableError("the log is starting up (self-check in progress)", 1.0)
        return log

    def _admit(
        self, context: Context, role: str, action: str, outcome: _Outcome | None = None
    ) -> Principal:
        """Who is calling, if they may ``action``; raise otherwise (or while stopping).

        Once authenticated, the caller is noted in ``outcome`` even if not authorized.
        """
        if self._draining:
            raise UnavailableError("the log is shutting down; retry shortly", 1.0)
        principal = self._auth.authenticate(context)
        if outcome is not None:
            outcome.principal = principal
        self._auth.authorize(principal, role, action)
        return principal

    async def _in_thread(self, work: Callable[[], R]) -> R:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def _committed(
        self, submitted: concurrent.futures.Future[AppendOutcome], settings: Settings
    ) -> AppendOutcome:
        """Wait for the sequencer to commit; UNAVAILABLE after ``append_timeout_s``.

        A caller that goes away does not take its entries out of the batch: the
        sequencer commits them anyway (a retry with the same keys finds them).
        """
        loop = asyncio.get_running_loop()
        if self._handoff is None:
            self._handoff = _Handoff(loop)
        waiter: asyncio.Future[AppendOutcome] = loop.create_future()
        handoff = self._handoff
        submitted.add_done_callback(lambda done: handoff.add(waiter, done))
        timer = loop.call_later(settings.append_timeout_s, _time_out, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()

    def _check_quota(self, principal: Principal, count: int) -> None:
        policy = self._auth.policy
        entry = policy.identities.get(principal.identity) if policy is not None else None
        if entry is not None and entry.appends_per_second is not None:
            self._quota.take(principal.identity, count, entry.appends_per_second, entry.burst)

    @_rpc("append")
    async def Append(  # noqa: N802 - gRPC method names
        self, request: log_pb2.AppendRequest, principal: Principal
    ) -> log_pb2.AppendResponse:
        log = self._log
        items = validate.append_items(request, log.settings)
        self._check_quota(principal, len(items))
        out = await self._committed(log.submit(items, principal.identity), log.settings)
        return log_pb2.AppendResponse(
            checkpoint=out.checkpoint,
            entries=[
                log_pb2.AppendedEntry(
                    index=e.index,
                    leaf=e.leaf,
                    duplicate=e.duplicate,
                    inclusion_proof=e.inclusion_proof,
                )
                for e in out.entries
            ],
            start=max(out.start, 0),
            end=max(out.end, 0),
            range_proof=log_pb2.RangeProof(
                left_frontier=out.left_frontier, consistency_proof=out.consistency_proof
            ),
        )

    @_rpc("read")
    async def GetCheckpoint(  # noqa: N802
        self, request: log_pb2.GetCheckpointRequest, principal: Principal
    ) -> log_pb2.GetCheckpointResponse:
        note, proof = self._log.checkpoint(request.first_tree_size, witnessed=request.witnessed)
        return log_pb2.GetCheckpointResponse(checkpoint=note, consistency_proof=proof)

    @_rpc("witness")
    async def AddCosignature(  # noqa: N802
        self, request: log_pb2.AddCosignatureRequest, principal: Principal
    ) -> log_pb2.AddCosignatureResponse:
        validate.check_add_cosignature_request(request)
        log = self._log
        note = await self._in_thread(lambda: log.add_cosignature(request.checkpoint))
        return log_pb2.AddCosignatureResponse(checkpoint=note)

    @_rpc("read")
    async def GetInclusionProof(  # noqa: N802
        self, request: log_pb2.GetInclusionProofRequest, principal: Principal
    ) -> log_pb2.GetInclusionProofResponse:
        name = "GetInclusionProofRequest"
        validate.check_inclusion_request(name, request.leaf_index, request.tree_size)
        proof = self._log.inclusion_proof(request.leaf_index, request.tree_size, name)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=request.leaf_index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_rpc("read")
    async def GetInclusionProofByHash(  # noqa: N802
        self, request: log_pb2.GetInclusionProofByHashRequest, principal: Principal
    ) -> log_pb2.GetInclusionProofResponse:
        validate.check_inclusion_by_hash_request(request)
        index, proof = self._log.inclusion_proof_by_hash(request.leaf_hash, request.tree_size)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_rpc("read")
    async def GetConsistencyProof(  # noqa: N802
        self, request: log_pb2.GetConsistencyProofRequest, principal: Principal
    ) -> log_pb2.GetConsistencyProofResponse:
        validate.check_consistency_request(request)
        proof = self._log.consistency_proof(request.first_tree_size, request.second_tree_size)
        return log_pb2.GetConsistencyProofResponse(consistency_proof=proof)

    @_rpc("read")
    async def GetEntryAndProof(  # noqa: N802
        self, request: log_pb2.GetEntryAndProofRequest, principal: Principal
    ) -> log_pb2.GetEntryAndProofResponse:
        name = "GetEntryAndProofRequest"
        validate.check_inclusion_request(name, request.leaf_index, request.tree_size)
        leaf, proof = self._log.entry_and_proof(request.leaf_index, request.tree_size)
        return log_pb2.GetEntryAndProofResponse(
            leaf_index=request.leaf_index,
            tree_size=request.tree_size,
            leaf=leaf,
            inclusion_proof=proof,
        )

    def _entry_streams(self, settings: Settings) -> EntryStreams:
        if self._streams is None:
            self._streams = EntryStreams(
                settings.max_entry_streams, settings.max_entry_streams_per_peer
            )
        return self._streams

    async def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: Context
    ) -> None:
        """Pages of leaves, each written only once the transport took the one before.

        So an unread stream holds one page (bounded by ``max_page_bytes``) and
        no more; the number of open streams is capped by :class:`EntryStreams`.
        A page nobody takes for ``entry_stream_stall_s`` ends the stream with
        DEADLINE_EXCEEDED, queued behind it. A client that goes away ends it
        too, which is normal: logged at debug.
        """
        outcome = _Outcome()
        sent = 0
        try:
            self._admit(context, "read", "GetEntries", outcome)
            the_log = self._log
            settings = the_log.settings
            page_size = validate.check_entries_request(request, settings)
            streams, peer = self._entry_streams(settings), peer_address(context.peer())
            streams.enter(peer)
            # The slot is given back when grpc is done with the call, not when this
            # handler returns: a page the client never took stays queued in the
            # transport (and counted) until the client reads, cancels or disconnects.
            context.add_done_callback(
                cast("grpc.aio.DoneCallback[Any, Any]", lambda _: streams.leave(peer))
            )
            pages = the_log.entries(
                request.start, request.end, request.tree_size, page_size, settings.max_page_bytes
            )
            while (page := await self._in_thread(lambda: next(pages, None))) is not None:
                message = log_pb2.EntriesPage(
                    start=page.start,
                    leaves=page.leaves,
                    range_proof=log_pb2.RangeProof(
                        left_frontier=page.left_frontier,
                        consistency_proof=page.consistency_proof,
                    ),
                )
                del page  # the message holds the leaves now; keep one copy per stream
                if self._observer is not None:
                    sent += message.ByteSize()
                await _write_page(context, message, settings.entry_stream_stall_s)
            outcome.code = "OK"
        except asyncio.CancelledError:
            log.debug("GetEntries from %s cancelled", context.peer())
            raise
        except Exception as e:
            aborted = isinstance(e, grpc.aio.AbortError)
            if not aborted and (context.cancelled() or isinstance(e, _WRITE_FAILED)):
                log.debug("GetEntries to %s ended: the client went away", context.peer())
                return
            status = outcome.failed(context, e)
            if status is None:
                raise
            await _abort(context, e, status)
        finally:
            if self._observer is not None:
                outcome.record(
                    self._observer, "server_stream", "GetEntries", context, request, sent
                )

    @_rpc("read")
    async def SearchEntries(  # noqa: N802
        self, request: log_pb2.SearchEntriesRequest, principal: Principal
    ) -> log_pb2.SearchEntriesResponse:
        limit = validate.check_search_request(request, self._log.settings)
        return await self._in_thread(lambda: self._search(request, limit))

    def _search(
        self, request: log_pb2.SearchEntriesRequest, limit: int
    ) -> log_pb2.SearchEntriesResponse:
        until = request.until_ms or (1 << 64) - 1
        found = self._log.find_by_identity(
            request.identity,
            request.since_ms,
            until,
            request.start_index - 1,
            request.tree_size,
            limit + 1,
        )
        page, more = found[:limit], len(found) > limit
        results = [
            log_pb2.SearchResult(
                index=index,
                leaf=leaf,
                inclusion_proof=self._log.inclusion_proof(
                    index, request.tree_size, "SearchEntriesRequest"
                ),
            )
            for index, leaf in page
        ]
        return log_pb2.SearchEntriesResponse(
            results=results, next_start_index=page[-1][0] + 1 if more else 0
        )

    @_rpc("admin")
    async def ReloadPolicy(  # noqa: N802
        self, request: log_pb2.ReloadPolicyRequest, principal: Principal
    ) -> log_pb2.ReloadPolicyResponse:
        policy = await self._in_thread(self._auth.reload)
        if policy is None:
            raise InvalidArgumentError("ReloadPolicy: this log runs without a policy file")
        log.info("policy reloaded by %r: %d identities", principal.identity, len(policy.identities))
        return log_pb2.ReloadPolicyResponse(
            identities=len(policy.identities), api_keys=len(policy.api_keys)
        )
