"""Undecodable requests get INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request whose bytes are not a valid protobuf message with
INTERNAL ("Exception deserializing request!") and, worse, leaves its HTTP/2
stream open: after ``max_concurrent_streams`` such requests the connection
refuses every call. This interceptor makes decoding never raise: a failure
becomes a marker the handler turns into INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["SafeDeserializer"]


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _guard(behaviour: Callable[[Any, Any], Any], method: str) -> Callable[[Any, Any], Any]:
    def guarded(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{method}: the request is not a valid protobuf message ({request.error})",
            )
        return behaviour(request, context)

    return guarded


if TYPE_CHECKING:  # generic only in the type stubs
    _Interceptor = grpc.ServerInterceptor[Any, Any]
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Interceptor = grpc.ServerInterceptor
    _Handler = grpc.RpcMethodHandler


class SafeDeserializer(_Interceptor):
    """A server interceptor; pass it to ``grpc.server(..., interceptors=[...])``."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], _Handler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer
        method = str(handler_call_details.method)

        def safe(data: bytes) -> Any:
            try:
                return decode(data)
            except Exception as e:  # any decoding failure is the client's bad input
                return _Undecodable(type(e).__name__)

        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard(handler.unary_unary, method),
                request_deserializer=safe,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _guard(handler.unary_stream, method),
                request_deserializer=safe,
                response_serializer=handler.response_serializer,
            )
        return handler
