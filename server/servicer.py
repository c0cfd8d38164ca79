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
from sealog.server.errors import (
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from sealog.server.log import Log
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


def _unary(
    method: Callable[[LogServicer, Any, grpc.ServicerContext], R],
) -> Callable[[LogServicer, Any, grpc.ServicerContext], R]:
    @functools.wraps(method)
    def wrapper(self: LogServicer, request: Any, context: grpc.ServicerContext) -> R:
        try:
            return method(self, request, context)
        except Exception as e:
            if isinstance(e, grpc.RpcError):  # raised by context.abort
                raise
            _abort(context, e)

    return wrapper


SERVICE_NAME = "sealog.v1.LogService"


class LogServicer(log_pb2_grpc.LogServiceServicer):
    """sealog.v1.LogService over a :class:`~sealog.server.log.Log`.

    Until :meth:`attach` gives it the opened log, every RPC answers UNAVAILABLE.
    """

    def __init__(self, log: Log | None = None) -> None:
        self._attached = log

    def attach(self, log: Log) -> None:
        """Start serving ``log`` (after its start-up self-check passed)."""
        self._attached = log

    @property
    def _log(self) -> Log:
        log = self._attached
        if log is None:
            raise UnavailableError("the log is starting up (self-check in progress)", 1.0)
        return log

    def identity(self, context: grpc.ServicerContext) -> str:
        """The authenticated identity of the caller; empty while the log has no authentication."""
        return ""

    @_unary
    def Append(  # noqa: N802 - gRPC method names
        self, request: log_pb2.AppendRequest, context: grpc.ServicerContext
    ) -> log_pb2.AppendResponse:
        items = validate.append_items(request, self._log.settings)
        out = self._log.append(items, self.identity(context))
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

    @_unary
    def GetCheckpoint(  # noqa: N802
        self, request: log_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetCheckpointResponse:
        note, proof = self._log.checkpoint(request.first_tree_size, witnessed=request.witnessed)
        return log_pb2.GetCheckpointResponse(checkpoint=note, consistency_proof=proof)

    @_unary
    def AddCosignature(  # noqa: N802
        self, request: log_pb2.AddCosignatureRequest, context: grpc.ServicerContext
    ) -> log_pb2.AddCosignatureResponse:
        validate.check_add_cosignature_request(request)
        return log_pb2.AddCosignatureResponse(
            checkpoint=self._log.add_cosignature(request.checkpoint)
        )

    @_unary
    def GetInclusionProof(  # noqa: N802
        self, request: log_pb2.GetInclusionProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetInclusionProofResponse:
        name = "GetInclusionProofRequest"
        validate.check_inclusion_request(name, request.leaf_index, request.tree_size)
        proof = self._log.inclusion_proof(request.leaf_index, request.tree_size, name)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=request.leaf_index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_unary
    def GetInclusionProofByHash(  # noqa: N802
        self, request: log_pb2.GetInclusionProofByHashRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetInclusionProofResponse:
        validate.check_inclusion_by_hash_request(request)
        index, proof = self._log.inclusion_proof_by_hash(request.leaf_hash, request.tree_size)
        return log_pb2.GetInclusionProofResponse(
            leaf_index=index, tree_size=request.tree_size, inclusion_proof=proof
        )

    @_unary
    def GetConsistencyProof(  # noqa: N802
        self, request: log_pb2.GetConsistencyProofRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetConsistencyProofResponse:
        validate.check_consistency_request(request)
        proof = self._log.consistency_proof(request.first_tree_size, request.second_tree_size)
        return log_pb2.GetConsistencyProofResponse(consistency_proof=proof)

    @_unary
    def GetEntryAndProof(  # noqa: N802
        self, request: log_pb2.GetEntryAndProofRequest, context: grpc.ServicerContext
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
