"""Undecodable requests get INVALID_ARGUMENT, not INTERNAL.

grpcio answers a request whose bytes are not a valid protobuf message with
INTERNAL ("Exception deserializing request!") and, worse, can leave its HTTP/2
stream open: after ``max_concurrent_streams`` such requests the connection
refuses every call. :func:`add_service` registers a service's handlers with
a request decoder that never raises: a failure becomes a marker that the
handler turns into INVALID_ARGUMENT. The handlers are wrapped once, when the
service is added, so a call pays nothing for it but a type check.

A bidirectional stream (server reflection's ServerReflectionInfo) gets the same
decoder: the first undecodable message in the stream ends the call with
INVALID_ARGUMENT before the handler sees it. (grpcio itself would end it with
UNKNOWN and the decoder's exception text; the stream is not leaked either way.)
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["add_service"]


class _Undecodable:
    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


if TYPE_CHECKING:  # generic only in the type stubs
    _Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _Handler = grpc.RpcMethodHandler


def _safe_decoder(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def safe(data: bytes) -> Any:
        try:
            return decode(data)
        except Exception as e:  # any decoding failure is the client's bad input
            return _Undecodable(type(e).__name__)

    return safe


async def _refuse(
    request: _Undecodable, context: grpc.aio.ServicerContext[Any, Any], method: str
) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{method}: the request is not a valid protobuf message ({request.error})",
    )


def _guard(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Wrap an async unary or server-streaming behaviour, keeping its kind."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if isinstance(request, _Undecodable):
                await _refuse(request, context, method)
            async for response in behaviour(request, context):
                yield response

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await _refuse(request, context, method)
        return await behaviour(request, context)

    return call


def _guard_requests(behaviour: Callable[..., Any], method: str) -> Callable[..., Any]:
    """Wrap an async bidirectional-streaming behaviour: refuse its first undecodable request."""

    async def bidi(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async def decoded() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    await _refuse(request, context, method)
                yield request

        async for response in behaviour(decoded(), context):
            yield response

    return bidi


def _safe(handler: _Handler, method: str) -> _Handler:
    if handler.request_deserializer is None:
        return handler
    decode = _safe_decoder(handler.request_deserializer)
    if handler.request_streaming:
        if handler.stream_stream is None or not inspect.isasyncgenfunction(handler.stream_stream):
            return handler  # no such service here: client streams answered once
        return grpc.stream_stream_rpc_method_handler(
            _guard_requests(handler.stream_stream, method),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _guard(handler.unary_unary, method),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _guard(handler.unary_stream, method),
            request_deserializer=decode,
            response_serializer=handler.response_serializer,
        )
    return handler


class _Recorder:
    """Stands in for a server to collect what a generated ``add_*_to_server`` registers."""

    def __init__(self) -> None:
        self.services: dict[str, Mapping[str, _Handler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: every generated registration also calls the method below."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, _Handler]
    ) -> None:
        self.services[service] = handlers


def add_service(
    server: grpc.aio.Server, register: Callable[[Any, Any], None], servicer: object
) -> None:
    """Add ``servicer`` to ``server`` as the generated ``register(servicer, server)`` would,
    with requests that fail to decode answered INVALID_ARGUMENT."""
    recorder = _Recorder()
    register(servicer, recorder)
    if not recorder.services:
        raise ValueError(f"{register.__name__} registered no service")
    for service, handlers in recorder.services.items():
        safe = {name: _safe(h, f"/{service}/{name}") for name, h in handlers.items()}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, safe),))
        server.add_registered_method_handlers(service, safe)  # type: ignore[attr-defined]
