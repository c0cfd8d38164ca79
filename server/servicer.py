"""The gRPC LogService: validate, call the log, convert the answer. Nothing else.

Domain errors map to status codes in one place, :func:`_status_of`. Nothing a
client can send ends in INTERNAL: that code means a bug or a broken disk.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from sealog.client.errors import InvalidProofError
from sealog.server import validate
from sealog.server.auth import Authenticator, Principal
from sealog.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from sealog.server.log import Log
from sealog.server.policy import PolicyError
from sealog.server.quota import AppendQuota
from sealog.server.storage import StorageCorruptError
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = ["LogServicer"]

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidProofError, grpc.StatusCode.INVALID_ARGUMENT),
    (OutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (PolicyError, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (UnavailableError, grpc.StatusCode.UNAVAILABLE),
    (concurrent.futures.TimeoutError, grpc.StatusCode.UNAVAILABLE),
    (StorageCorruptError, grpc.StatusCode.DATA_LOSS),
)


def _status_of(error: BaseException) -> tuple[grpc.StatusCode, str]:
    for kind, code in _CODES:
        if isinstance(error, kind):
            if isinstance(error, concurrent.futures.TimeoutError):
                return code, "append not committed in time; retry with the same idempotency keys"
            return code, str(error)
    log.exception("internal error", exc_info=error)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def _abort(context: grpc.ServicerContext, error: BaseException) -> NoReturn:
    code, message = _status_of(error)
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is None:
        context.abort(code, message)
    else:
        # google.rpc.RetryInfo in the status details says when to come back.
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromTimedelta(datetime.timedelta(seconds=retry_after))
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
        context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable")  # context.abort raises


R = TypeVar("R")
Handler = Callable[["LogServicer", Any, grpc.ServicerContext, Principal], R]


def _rpc(
    role: str,
) -> Callable[[Handler[R]], Callable[[LogServicer, Any, grpc.ServicerContext], R]]:
    """Authenticate the caller, check it holds ``role``, run the handler, map errors."""

    def decorate(method: Handler[R]) -> Callable[[LogServicer, Any, grpc.ServicerContext], R]:
        action = method.__name__

        @functools.wraps(method)
        def wrapper(self: LogServicer, request: Any, context: grpc.ServicerContext) -> R:
            try:
                if self._draining:
                    raise UnavailableError("the log is shutting down; retry shortly", 1.0)
                principal = self._auth.authenticate(context)
                self._auth.authorize(principal, role, action)
                return method(self, request, context, principal)
            except Exception as e:
                if isinstance(e, grpc.RpcError):  # raised by context.abort
                    raise
                _abort(context, e)

        return wrapper

    return decorate


SERVICE_NAME = "sealog.v1.LogService"


class LogServicer(log_pb2_grpc.LogServiceServicer):
    """sealog.v1.LogService over a :class:`~sealog.server.log.Log`.

    Until :meth:`attach` gives it the opened log, every RPC answers UNAVAILABLE.
    """

    def __init__(
        self,
        log: Log | None = None,
        auth: Authenticator | None = None,
        quota: AppendQuota | None = None,
    ) -> None:
        self._attached = log
        self._draining = False
        self._auth = auth if auth is not None else Authenticator()
        self._quota = quota if quota is not None else AppendQuota()

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

    def _check_quota(self, principal: Principal, count: int) -> None:
        policy = self._auth.policy
        entry = policy.identities.get(principal.identity) if policy is not None else None
        if entry is not None and entry.appends_per_second is not None:
            self._quota.take(principal.identity, count, entry.appends_per_second, entry.burst)

    @_rpc("append")
    def Append(  # noqa: N802 - gRPC method names
        self, request: log_pb2.AppendRequest, context: grpc.ServicerContext, principal: Principal
    ) -> log_pb2.AppendResponse:
        items = validate.append_items(request, self._log.settings)
        self._check_quota(principal, len(items))
        out = self._log.append(items, principal.identity)
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
    def GetCheckpoint(  # noqa: N802
        self,
        request: log_pb2.GetCheckpointRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.GetCheckpointResponse:
        note, proof = self._log.checkpoint(request.first_tree_size, witnessed=request.witnessed)
        return log_pb2.GetCheckpointResponse(checkpoint=note, consistency_proof=proof)

    @_rpc("witness")
    def AddCosignature(  # noqa: N802
        self,
        request: log_pb2.AddCosignatureRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.AddCosignatureResponse:
        validate.check_add_cosignature_request(request)
        return log_pb2.AddCosignatureResponse(
            checkpoint=self._log.add_cosignature(request.checkpoint)
        )

    @_rpc("read")
    def GetInclusionProof(  # noqa: N802
        self,
        request: log_pb2.GetInclusionProofRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.GetInclusionProofResponse:
        name = "GetInclusionProofRequest"
        validate.check_inclusion_request(name, request.leaf_index, request.tree_size)
        proof = self._log.inclusion_proof(request.leaf_index, request.tree_size, name)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=request.leaf_index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_rpc("read")
    def GetInclusionProofByHash(  # noqa: N802
        self,
        request: log_pb2.GetInclusionProofByHashRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.GetInclusionProofResponse:
        validate.check_inclusion_by_hash_request(request)
        index, proof = self._log.inclusion_proof_by_hash(request.leaf_hash, request.tree_size)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_rpc("read")
    def GetConsistencyProof(  # noqa: N802
        self,
        request: log_pb2.GetConsistencyProofRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.GetConsistencyProofResponse:
        validate.check_consistency_request(request)
        proof = self._log.consistency_proof(request.first_tree_size, request.second_tree_size)
        return log_pb2.GetConsistencyProofResponse(consistency_proof=proof)

    @_rpc("read")
    def GetEntryAndProof(  # noqa: N802
        self,
        request: log_pb2.GetEntryAndProofRequest,
        context: grpc.ServicerContext,
        principal: Principal,
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

    def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> Iterator[log_pb2.EntriesPage]:
        try:
            if self._draining:
                raise UnavailableError("the log is shutting down; retry shortly", 1.0)
            self._auth.authorize(self._auth.authenticate(context), "read", "GetEntries")
            page_size = validate.check_entries_request(request, self._log.settings)
            pages = self._log.entries(request.start, request.end, request.tree_size, page_size)
            for page in pages:
                if not context.is_active():
                    return
                yield log_pb2.EntriesPage(
                    start=page.start,
                    leaves=page.leaves,
                    range_proof=log_pb2.RangeProof(
                        left_frontier=page.left_frontier,
                        consistency_proof=page.consistency_proof,
                    ),
                )
        except Exception as e:
            if isinstance(e, grpc.RpcError):
                raise
            _abort(context, e)

    @_rpc("read")
    def SearchEntries(  # noqa: N802
        self,
        request: log_pb2.SearchEntriesRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.SearchEntriesResponse:
        limit = validate.check_search_request(request, self._log.settings)
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
    def ReloadPolicy(  # noqa: N802
        self,
        request: log_pb2.ReloadPolicyRequest,
        context: grpc.ServicerContext,
        principal: Principal,
    ) -> log_pb2.ReloadPolicyResponse:
        policy = self._auth.reload()
        if policy is None:
            raise InvalidArgumentError("ReloadPolicy: this log runs without a policy file")
        log.info("policy reloaded by %r: %d identities", principal.identity, len(policy.identities))
        return log_pb2.ReloadPolicyResponse(
            identities=len(policy.identities), api_keys=len(policy.api_keys)
        )
