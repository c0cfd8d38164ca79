"""Presenting an API key: the ``authorization: Bearer ...`` metadata on every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

__all__ = ["with_api_key"]


class _Details(grpc.ClientCallDetails):
    """The call's details with one more metadata pair."""

    def __init__(self, details: Any, extra: tuple[str, str]) -> None:
        self.method = details.method
        self.timeout = details.timeout
        self.metadata = (*(details.metadata or ()), extra)
        self.credentials = details.credentials
        self.wait_for_ready = details.wait_for_ready
        self.compression = details.compression


if TYPE_CHECKING:  # generic only in the type stubs
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.UnaryStreamClientInterceptor


class _BearerInterceptor(_UnaryUnary, _UnaryStream):
    def __init__(self, api_key: str) -> None:
        self._header = ("authorization", f"Bearer {api_key}")

    def _details(self, details: Any) -> _Details:
        return _Details(details, self._header)

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], grpc.CallIterator[Any]],
        details: grpc.ClientCallDetails,
        request: Any,
    ) -> grpc.CallIterator[Any]:
        return continuation(self._details(details), request)

    def __repr__(self) -> str:  # never show the key
        return "_BearerInterceptor(<api key>)"


def with_api_key(channel: grpc.Channel, api_key: str) -> grpc.Channel:
    """Wrap ``channel`` so that every call presents ``api_key``."""
    if not api_key or any(c.isspace() for c in api_key):
        raise ValueError("an API key is one non-empty token without spaces")
    return grpc.intercept_channel(channel, _BearerInterceptor(api_key))
