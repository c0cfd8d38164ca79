"""``sealog witness serve``: a C2SP tlog-witness over HTTP, on asyncio (aiohttp).

Serves ``POST <prefix>/add-checkpoint`` (c2sp.org/tlog-witness) for a
:class:`~sealog.client.witness.protocol.Witness`, under the bounds of
:class:`~sealog.client.http_serve.HttpLimits`: header, body and keep-alive
timeouts, a cap on open connections and on requests handled at once (503
with Retry-After beyond either), and bodies of at most
:data:`~sealog.client.witness.protocol.MAX_REQUEST_BYTES` (413).

The witness's work — checking signatures and the proof, writing its state
durably (``fsync``), cosigning — runs on a small thread pool
(``workers``), never on the event loop, so a slow disk delays only the
requests waiting for it. :class:`Witness` serialises each origin under its
own lock, as the spec requires.

Plain HTTP: put it behind a TLS proxy, or a c2sp.org/https-bastion, to expose
it beyond loopback.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from sealog.client.http_serve import TEXT, HttpLimits, HttpServer, RequestSlots, read_body
from sealog.client.witness.protocol import ADD_CHECKPOINT, MAX_REQUEST_BYTES, Witness, WitnessError

__all__ = ["WitnessHTTPServer", "witness_app"]

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 4
"""Threads that run the witness's checks, durable writes and signing."""


def _text(status: int, body: bytes, content_type: str = TEXT) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": content_type})


def witness_app(
    witness: Witness, executor: ThreadPoolExecutor, slots: RequestSlots, prefix: str = ""
) -> web.Application:
    """The add-checkpoint routes of ``witness``, as an application other routes can join.

    A request takes one of ``slots`` once its body is in, until answered.
    """
    path = prefix.rstrip("/") + "/" + ADD_CHECKPOINT

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await read_body(request, slots.limits, MAX_REQUEST_BYTES)
        loop = asyncio.get_running_loop()
        async with slots:
            try:
                lines = await loop.run_in_executor(executor, witness.add_checkpoint, body)
            except WitnessError as e:
                return _text(e.status, e.body, e.content_type)
            except Exception:
                log.exception("add-checkpoint failed")
                return _text(500, b"internal error\n")
        return _text(200, lines)

    async def other(request: web.Request) -> web.Response:
        if request.method == "POST":
            return _text(404, b"not found\n")
        return _text(405, b"use POST <prefix>/add-checkpoint\n")

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post(path, add_checkpoint)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


class WitnessHTTPServer(HttpServer):
    """The witness on ``(host, port)``; port 0 picks one (see :attr:`port`)."""

    def __init__(
        self,
        witness: Witness,
        host: str = "127.0.0.1",
        port: int = 0,
        prefix: str = "",
        *,
        limits: HttpLimits | None = None,
        workers: int = DEFAULT_WORKERS,
    ) -> None:
        self.witness = witness
        self.add_checkpoint_path = prefix.rstrip("/") + "/" + ADD_CHECKPOINT
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="sealog-witness")
        limits = limits or HttpLimits()
        self.slots = RequestSlots(limits)
        super().__init__(
            witness_app(witness, self._executor, self.slots, prefix),
            host,
            port,
            limits,
            name="sealog-witness-http",
        )

    @property
    def in_flight(self) -> int:
        """add-checkpoint requests at work now (their body in, not yet answered)."""
        return self.slots.in_use

    @property
    def url(self) -> str:
        """The full add-checkpoint URL."""
        return f"http://{self.host}:{self.port}{self.add_checkpoint_path}"

    def start(self) -> WitnessHTTPServer:
        """Serve on a background thread."""
        super().start()
        return self

    def stop(self) -> None:
        """Stop serving, close every connection, and finish the witness work under way."""
        super().stop()
        self._executor.shutdown(wait=True)
