"""Serving HTTP on asyncio (aiohttp) with bounds a hostile client cannot get around.

aiohttp parses HTTP/1.1 and routes requests; this module adds what an endpoint
open to the Internet needs and aiohttp does not do by itself
(:class:`HttpLimits`):

- a connection must deliver a whole request head within ``header_timeout_s``
  of opening, or of its first byte after an idle spell; the clock is not
  reset by more bytes, so one that trickles headers (slowloris) is dropped
  as surely as one that sends nothing;
- a request body must arrive within ``body_timeout_s`` (:func:`read_body`:
  408 and the connection closed otherwise), and may not exceed the
  endpoint's size bound (413; 411 without a Content-Length);
- an idle keep-alive connection is closed after ``keepalive_timeout_s``;
- at most ``max_connections`` connections are open: one more is answered
  503 with ``Retry-After`` and closed at once, so file descriptors stay
  bounded;
- at most ``max_requests`` requests are handled at once (:class:`RequestSlots`,
  taken once the body is in, so slow uploads, bounded by their own clock, do
  not crowd out real work): more get 503 with ``Retry-After``.

Connections cost no thread: each is a protocol object on the event loop. The
timers live in a wrapper around aiohttp's protocol (:class:`_GuardedConnection`)
that uses only the public asyncio protocol interface, so they hold for every
route an :class:`~aiohttp.web.Application` serves — the witness's
add-checkpoint now, tlog-tiles later.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["HttpLimits", "HttpServer", "RequestSlots", "read_body"]

log = logging.getLogger(__name__)

TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class HttpLimits:
    """Every bound an :class:`HttpServer` enforces; the defaults suit a witness."""

    header_timeout_s: float = 10.0
    """Time to deliver a request's line and headers (from connect, or from its first byte)."""
    body_timeout_s: float = 10.0
    """Time to deliver a request body once its headers are in."""
    keepalive_timeout_s: float = 30.0
    """An idle keep-alive connection is closed after this long."""
    max_connections: int = 256
    """Open connections; one more is answered 503 and closed."""
    max_requests: int = 32
    """Requests handled at once; more are answered 503 with Retry-After."""
    retry_after_s: int = 1
    """The Retry-After of a 503."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value > 0:
                raise ValueError(f"HttpLimits.{name}: {value}, want > 0")


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s"
)


class RequestSlots:
    """At most ``limits.max_requests`` requests at work at once; beyond, 503 with Retry-After.

    ``async with slots:`` around a request's work (on the event loop's thread)
    raises :class:`aiohttp.web.HTTPServiceUnavailable` when every slot is taken.
    """

    def __init__(self, limits: HttpLimits) -> None:
        self.limits = limits
        self.in_use = 0

    async def __aenter__(self) -> None:
        if self.in_use >= self.limits.max_requests:
            raise web.HTTPServiceUnavailable(
                text=f"too many requests, retry in {self.limits.retry_after_s} s\n",
                headers={"Retry-After": str(self.limits.retry_after_s)},
            )
        self.in_use += 1

    async def __aexit__(self, *exc: object) -> None:
        self.in_use -= 1


class _GuardedConnection(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the header and keep-alive clocks.

    States: *reading* a request head (deadline ``header_timeout_s``), *handling*
    a request (no deadline here: the handler bounds its body read), *idle*
    between requests (deadline ``keepalive_timeout_s``; the first byte of the
    next request starts its header clock).
    """

    def __init__(self, server: HttpServer, inner: asyncio.Protocol) -> None:
        self._server = server
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False
        self._refused = False

    # --- asyncio.Protocol, forwarded to aiohttp -------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        limits = self._server.limits
        if len(self._server.connections) >= limits.max_connections:
            self._refused = True
            body = b"too many connections, retry in %d s\n" % limits.retry_after_s
            transport.write(_BUSY % (limits.retry_after_s, len(body), body))
            transport.close()
            return
        self._server.connections.add(self)
        self._arm(limits.header_timeout_s)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._idle:
            self._idle = False
            self._arm(self._server.limits.header_timeout_s)
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self._refused else self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._refused:
            return
        self._server.connections.discard(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    # --- the clocks -----------------------------------------------------------------------
    def request_started(self) -> None:
        """A request's head is in: its handler takes over (see :func:`read_body`)."""
        self._idle = False
        self._disarm()

    def request_finished(self) -> None:
        """The handler has returned (its short answer goes out now): idle until the next byte."""
        self._idle = True
        self._arm(self._server.limits.keepalive_timeout_s)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            log.debug("closing %s connection", "an idle" if self._idle else "a stalled")
            self._transport.abort()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request, limits: HttpLimits, max_bytes: int) -> bytes:
    """The request's body, within ``limits.body_timeout_s`` and ``max_bytes``.

    Raises an :class:`aiohttp.web.HTTPException` to answer with: 411 without a
    Content-Length, 413 above ``max_bytes``, 408 when the body does not arrive
    in time (each closes the connection, since the body is left unread).
    """
    length = request.headers.get("Content-Length")
    if length is None or not (length.isascii() and length.isdigit()):
        raise _closing(web.HTTPLengthRequired(text="Content-Length required\n"))
    if int(length) > max_bytes:
        raise _closing(
            web.HTTPRequestEntityTooLarge(max_bytes, int(length), text="request too large\n")
        )
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.content.readexactly(int(length))
    except TimeoutError:
        raise _closing(
            web.HTTPRequestTimeout(
                text=f"request body not received within {limits.body_timeout_s:g} s\n"
            )
        ) from None
    except asyncio.IncompleteReadError:
        raise _closing(
            web.HTTPBadRequest(text="request body shorter than its Content-Length\n")
        ) from None


def _closing(error: web.HTTPException) -> web.HTTPException:
    error.force_close()
    return error


class HttpServer:
    """An :class:`aiohttp.web.Application` on ``(host, port)`` under :class:`HttpLimits`.

    Runs on an event loop of its own thread (:meth:`start`, :meth:`stop`), or on the
    running loop of its caller (:meth:`open`, :meth:`close`); port 0 picks one (see
    :attr:`port`). With ``ssl_context`` it serves HTTPS; a TLS handshake must end within
    ``header_timeout_s``.
    """

    def __init__(
        self,
        app: web.Application,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: HttpLimits | None = None,
        *,
        name: str = "sealog-http",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self._ssl = ssl_context
        self.host = host
        self.limits = limits or HttpLimits()
        self.connections: set[_GuardedConnection] = set()
        """The open connections (read it on the loop, or as a snapshot count)."""
        self._requested_port = port
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.port = 0
        app.middlewares.append(self._middleware)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        connection = request.transport.get_protocol() if request.transport else None
        guard = connection if isinstance(connection, _GuardedConnection) else None
        if guard is not None:
            guard.request_started()
        try:
            return await handler(request)
        finally:
            if guard is not None:
                guard.request_finished()

    async def _open(self) -> None:
        # aiohttp's own keep-alive timer (which some versions start at connect) stays
        # on as a second line, never shorter than these clocks; lingering_time 0: a
        # body left unread closes the connection at once.
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=5.0,
            access_log=None,
            keepalive_timeout=max(self.limits.keepalive_timeout_s, self.limits.header_timeout_s),
            lingering_time=0,
        )
        await runner.setup()
        protocol = runner.server
        assert protocol is not None

        def connection() -> asyncio.Protocol:
            return _GuardedConnection(self, protocol())

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            connection,
            self.host,
            self._requested_port,
            backlog=self.limits.max_connections,
            ssl=self._ssl,
            ssl_handshake_timeout=self.limits.header_timeout_s if self._ssl else None,
        )
        self._runner = runner
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection._transport is not None:
                connection._transport.abort()
        if self._runner is not None:
            await self._runner.cleanup()

    async def open(self) -> HttpServer:
        """Listen and serve on the running event loop; return once the port is bound."""
        await self._open()
        return self

    async def close(self) -> None:
        """Undo :meth:`open`: close the listening socket and every connection."""
        await self._close()

    def start(self) -> HttpServer:
        """Listen and serve on a background thread; return once the port is bound."""
        loop = asyncio.new_event_loop()
        ready: list[BaseException | None] = []
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
                ready.append(None)
            except BaseException as e:
                ready.append(e)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._close())
                loop.run_until_complete(loop.shutdown_default_executor())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        started.wait()
        if ready[0] is not None:
            raise ready[0]
        return self

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the server's loop and return its result (for inspection)."""
        assert self._loop is not None

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def stop(self) -> None:
        """Close the listening socket and every connection, and stop the loop."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
