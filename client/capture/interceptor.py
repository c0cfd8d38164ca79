"""A gRPC server interceptor that records every RPC a service serves as an audit event.

It hands :class:`~sealog.client.event.AuditEvent` payloads to an
:class:`~sealog.client.capture.shipper.EventShipper`, which sends them in the
background; it never waits for the network, and a failure of its own is logged,
never passed to the service. docs/capture.md shows the few lines a service adds.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import grpc

from sealog.client.capture.shipper import EventShipper
from sealog.client.event import AuditEvent, event_text
from sealog.client.identity import identity_from_certificate

__all__ = ["DEFAULT_SKIP_METHODS", "AuditServerInterceptor"]

log = logging.getLogger(__name__)

DEFAULT_SKIP_METHODS = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    }
)
"""Methods the interceptor does not record by default: probes, not actions."""

_DENIED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})


@functools.lru_cache(maxsize=256)
def _certificate_identity(pem: bytes) -> str:
    return identity_from_certificate(pem)


def _metadata_value(metadata: Any, name: str) -> str:
    for item in metadata or ():
        key, value = item[0], item[1]
        if key == name:
            return value if isinstance(value, str) else ""
    return ""


def _trace_id(traceparent: str) -> str:
    """The trace id of a W3C ``traceparent`` header (``00-<32 hex>-<16 hex>-<2 hex>``)."""
    parts = traceparent.split("-")
    if len(parts) >= 4 and len(parts[1]) == 32:
        return parts[1]
    return ""


class _Call:
    """One RPC being recorded: finished exactly once, by the handler or by termination."""

    __slots__ = (
        "_context",
        "_interceptor",
        "_method",
        "_once",
        "_request_id",
        "_started",
        "_started_ms",
        "_trace_id",
    )

    def __init__(
        self,
        interceptor: AuditServerInterceptor,
        method: str,
        context: grpc.ServicerContext,
        request_id: str,
        trace_id: str,
    ) -> None:
        self._interceptor = interceptor
        self._method = method
        self._context = context
        self._request_id = request_id
        self._trace_id = trace_id
        self._started_ms = time.time_ns() // 1_000_000
        self._started = time.monotonic()
        self._once = threading.Lock()  # held for good by the first finish()
        try:
            context.add_callback(self._terminated)
        except Exception:
            log.exception("sealog capture: cannot watch %s for cancellation", method)

    def _terminated(self) -> None:
        """The RPC ended; if the handler did not finish (a cancelled stream), record it now."""
        self.finish(None, cancelled=True)

    def finish(self, error: BaseException | None, *, cancelled: bool = False) -> None:
        if not self._once.acquire(blocking=False):
            return  # the handler and the termination callback may race
        try:
            latency_ms = (time.monotonic() - self._started) * 1000.0
            self._interceptor.record(
                self._method,
                self._context,
                _final_code(self._context, error, cancelled=cancelled),
                latency_ms,
                self._started_ms,
                self._request_id,
                self._trace_id,
                # A cancellation is recorded on gRPC's own thread: never wait there.
                block=not cancelled,
            )
        except Exception:
            log.exception("sealog capture: could not record %s", self._method)


def _final_code(
    context: grpc.ServicerContext, error: BaseException | None, *, cancelled: bool
) -> grpc.StatusCode:
    """The status the caller gets: what the handler set or aborted with, else what gRPC sends."""
    getter = getattr(context, "code", None)
    code = getter() if callable(getter) else None
    if not isinstance(code, grpc.StatusCode):
        code = None
    if cancelled:
        if code is not None and code is not grpc.StatusCode.OK:
            return code
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if error is not None:
        # context.abort() sets the code and raises; any other exception is UNKNOWN.
        return (
            code if code is not None and code is not grpc.StatusCode.OK else grpc.StatusCode.UNKNOWN
        )
    return code if code is not None else grpc.StatusCode.OK


class AuditServerInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """A gRPC server interceptor that records every call of the services it wraps.

    Each call becomes one event, submitted when the call ends:

    - ``action``: the full method name, e.g. ``/payments.v1.Billing/Charge``;
    - ``outcome``: ``success`` (OK), ``denied`` (PERMISSION_DENIED,
      UNAUTHENTICATED) or ``failure`` (any other status);
    - ``event_time_ms``: when the call started;
    - ``request_id``: the ``x-request-id`` metadata; ``trace_id``: from the
      W3C ``traceparent`` metadata;
    - ``attributes``: ``caller`` (the identity of the peer's mTLS certificate
      — its URI SAN, e.g. a SPIFFE ID, else its CN — or, without one, the
      peer address), ``caller_auth`` (``mtls``, ``custom`` or ``none``),
      ``peer``, ``code`` (the status name) and ``latency_ms``.

    ``identity_of(context)`` may name the caller instead (e.g. from the
    service's own API-key check; None or "" falls back to the above).
    ``skip_methods`` are not recorded. The RPC's behaviour — responses,
    status, metadata, streaming — is not changed, and nothing the
    interceptor does can fail the call; a streaming response is wrapped in a
    generator that passes every message through.
    """

    def __init__(
        self,
        shipper: EventShipper,
        *,
        skip_methods: Collection[str] = DEFAULT_SKIP_METHODS,
        identity_of: Callable[[grpc.ServicerContext], str | None] | None = None,
    ) -> None:
        self.shipper = shipper
        self.skip_methods = frozenset(skip_methods)
        self.identity_of = identity_of

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler[Any, Any] | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self.skip_methods:
            return handler
        try:
            metadata = handler_call_details.invocation_metadata
            ids = (
                _metadata_value(metadata, "x-request-id"),
                _trace_id(_metadata_value(metadata, "traceparent")),
            )
            return self._wrap(handler, method, ids)
        except Exception:
            log.exception("sealog capture: cannot wrap %s; serving it unrecorded", method)
            return handler

    def _wrap(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        method: str,
        ids: tuple[str, str],
    ) -> grpc.RpcMethodHandler[Any, Any]:
        kw: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary, method, ids), **kw
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streaming(handler.unary_stream, method, ids), **kw
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._unary(handler.stream_unary, method, ids), **kw
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream, method, ids), **kw
            )
        return handler

    def _unary(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Any],
        method: str,
        ids: tuple[str, str],
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        """Wrap a handler that answers one response (unary-unary or stream-unary)."""

        def recorded(request: Any, context: grpc.ServicerContext) -> Any:
            call = _Call(self, method, context, *ids)
            try:
                response = behavior(request, context)
            except BaseException as e:
                call.finish(e)
                raise
            call.finish(None)
            return response

        return recorded

    def _streaming(
        self,
        behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]],
        method: str,
        ids: tuple[str, str],
    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        """Wrap a handler that answers a stream (unary-stream or stream-stream)."""

        def recorded(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            call = _Call(self, method, context, *ids)
            try:
                responses = behavior(request, context)
            except BaseException as e:
                call.finish(e)
                raise
            return _passing_through(responses, call)

        return recorded

    def caller(self, context: grpc.ServicerContext) -> tuple[str, str]:
        """(identity, how it was established): ``mtls``, ``custom`` or ``none`` (peer address)."""
        if self.identity_of is not None:
            named = self.identity_of(context)
            if named:
                return named, "custom"
        auth: Mapping[str, Any] = context.auth_context()
        pems = auth.get("x509_pem_cert")
        if pems:
            pem = pems if isinstance(pems, bytes) else pems[0]
            identity = _certificate_identity(bytes(pem))
            if identity:
                return identity, "mtls"
        return context.peer(), "none"

    def record(
        self,
        method: str,
        context: grpc.ServicerContext,
        code: grpc.StatusCode,
        latency_ms: float,
        started_ms: int,
        request_id: str,
        trace_id: str,
        *,
        block: bool = True,
    ) -> None:
        """Submit the event of one finished call (called by the wrappers)."""
        identity, how = self.caller(context)
        if code is grpc.StatusCode.OK:
            outcome = "success"
        elif code in _DENIED:
            outcome = "denied"
        else:
            outcome = "failure"
        event = AuditEvent(
            action=event_text(method),
            outcome=outcome,
            event_time_ms=started_ms,
            request_id=event_text(request_id),
            trace_id=event_text(trace_id),
            attributes={
                "caller": event_text(identity),
                "caller_auth": how,
                "peer": event_text(context.peer()),
                "code": code.name,
                "latency_ms": f"{latency_ms:.3f}",
            },
        )
        self.shipper.submit(event, block=block)


def _passing_through(responses: Iterator[Any], call: _Call) -> Iterator[Any]:
    """Yield every response unchanged; finish the call when the stream ends, fails or is closed."""
    try:
        yield from responses
    except GeneratorExit:
        call.finish(None, cancelled=True)
        raise
    except BaseException as e:
        call.finish(e)
        raise
    call.finish(None)
