"""A server process for :mod:`bench.server`: a sealog log, or a trivial echo service.

Run as ``python -m bench.server_runner {log,echo} [--data-dir DIR]``. It listens
on a free loopback port and prints one JSON line, ``{"port": ..., "pid": ...}``
(plus ``"vkey"`` for a log), then serves until its stdin is closed or it gets
SIGTERM/SIGINT; it then stops the server (a log commits what is queued) and
exits. Closing stdin on exit means the server never outlives the benchmark.

The echo service is served exactly as :meth:`sealog.server.app.LogServer.open`
serves the log (grpc's asyncio server on an event loop of its own thread, with
the same channel options), so the two differ only in what the handler does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from sealog.server.access_log import AccessLog
from sealog.server.app import EventLoopThread, LogServer, new_grpc_server
from sealog.server.config import Settings
from sealog.server.log_format import configure_logging

__all__ = ["ECHO_METHOD", "ECHO_SERVICE", "main"]

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


def _start_echo(address: str, settings: Settings) -> tuple[Callable[[], None], int]:
    loop = EventLoopThread("echo-grpc")

    async def start() -> tuple[grpc.aio.Server, int]:
        server = new_grpc_server(settings)
        handler = grpc.unary_unary_rpc_method_handler(_echo)  # bytes in, bytes out
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(ECHO_SERVICE, {"Echo": handler}),)
        )
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        await server.start()
        return server, port

    server, port = loop.run(start())

    def stop() -> None:
        loop.run(server.stop(5.0))
        loop.close()

    return stop, port


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.server_runner")
    parser.add_argument("mode", choices=("log", "echo"))
    parser.add_argument("--data-dir", help="the log's data folder (mode log)")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument(
        "--max-workers", type=int, help="RPC threads (default: Settings().max_workers)"
    )
    parser.add_argument("--cpus", help="run on these CPUs only, e.g. 0 or 0,1")
    parser.add_argument(
        "--observe",
        metavar="FILE",
        help="mode log: serve metrics on a free port and write JSON logs with an access line "
        "per RPC to FILE, as `sealog serve --metrics-listen ... --log-format json` does",
    )
    args = parser.parse_args(argv)
    if args.cpus:  # before any thread starts, so every thread inherits it
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})

    settings = Settings() if args.max_workers is None else Settings(max_workers=args.max_workers)
    info: dict[str, Any] = {"pid": os.getpid()}
    stop_server: Callable[[], None]
    if args.mode == "log":
        if not args.data_dir:
            parser.error("mode log needs --data-dir")
        access_log: AccessLog | None = None
        if args.observe:
            out = open(args.observe, "a", encoding="utf-8")  # noqa: SIM115 - until exit
            access_log = AccessLog(configure_logging("json", logging.INFO, out), "json")
        log_server = LogServer.open(
            args.data_dir,
            address=args.listen,
            settings=settings,
            metrics_address="127.0.0.1:0" if args.observe else None,
            access_log=access_log,
        )
        info.update(port=log_server.port, vkey=log_server.signer.verifier().vkey)
        if log_server.metrics_listener is not None:
            info.update(metrics_port=log_server.metrics_listener.port)
        stop_server = log_server.stop
    else:
        stop_server, port = _start_echo(args.listen, settings)
        info.update(port=port)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    def watch_stdin() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        finally:
            stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    print(json.dumps(info), flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        stop_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
