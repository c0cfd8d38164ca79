"""Helpers for the end-to-end tests: the CLI, tampering, and a `sealog serve` subprocess
(:class:`bench.serve_process.SealogServe`, shared with the reliability benchmarks).

Fixtures live in ``conftest.py``; this module holds the classes they return so
that test modules can import them for type hints.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from pki import TestCA

from bench.serve_process import SealogServe as ServeProcess
from bench.serve_process import child_env, sealog_command
from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.log_client import Entry, LogClient
from sealog.client.note import Ed25519Verifier
from sealog.server.app import LogServer, TlsFiles
from sealog.server.config import Settings
from sealog.v1 import log_pb2_grpc

__all__ = [
    "DroppedResponseError",
    "OpenLog",
    "RunningLog",
    "Serve",
    "ServeProcess",
    "TamperInterceptor",
    "flip",
    "recompute_root",
    "run_sealog",
    "run_threads",
    "sealog_command",
    "tls_log_server",
]

OpenLog = Callable[..., "RunningLog"]
"""The ``open_log`` fixture: ``open_log(data_dir=None, settings=None, **LogServer.open kwargs)``."""
Serve = Callable[..., "ServeProcess"]
"""The ``serve`` fixture: ``serve(data_dir, *serve_args, wait=True)``."""


def run_sealog(
    *args: str,
    cwd: Path,
    stdin: bytes | str | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``sealog ARGS`` to completion and return its (text) output."""
    data = stdin.decode("utf-8") if isinstance(stdin, bytes) else stdin
    return subprocess.run(
        [*sealog_command(), *args],
        cwd=cwd,
        input=data,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def run_threads(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for i in range(count) on their own threads; re-raise the first failure."""
    start = threading.Barrier(count)

    def body(i: int) -> None:
        start.wait(timeout=30)
        work(i)

    with ThreadPoolExecutor(max_workers=count) as pool:
        for future in [pool.submit(body, i) for i in range(count)]:
            future.result(timeout=120)


def recompute_root(entries: Iterable[Entry]) -> tuple[int, bytes]:
    """Hash downloaded entries into a tree: ``(size, root)``, as a monitor would."""
    tree = CompactRange()
    for expected, entry in enumerate(entries):
        assert entry.index == expected, f"entry {entry.index} where {expected} was due"
        tree.append(leaf_hash(entry.leaf))
    return tree.size, tree.root()


# --- client interceptors ---------------------------------------------------------------
class FinishedCall(grpc.RpcError, grpc.Call):
    """An RPC error for a call that is over: a test's stand-in for what grpc raises."""

    def code(self) -> grpc.StatusCode:
        raise NotImplementedError

    def details(self) -> str:
        raise NotImplementedError

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


class DroppedResponseError(FinishedCall):
    """What the client sees when a response was lost: DEADLINE_EXCEEDED."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "response dropped by the test"


class _Outcome:
    """A finished unary call whose response the interceptor replaced."""

    def __init__(self, response: Any, call: Any) -> None:
        self._response = response
        self._call = call

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> None:
        return None

    def traceback(self, timeout: float | None = None) -> None:
        return None

    def done(self) -> bool:
        return True

    def running(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class TamperInterceptor(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg]
):
    """Lets a test play a lying (or flaky) server without touching the real one.

    ``mutate[method]`` edits a copy of each response of that RPC in place
    (``method`` is the short name, e.g. ``"GetEntryAndProof"``);
    ``drop_first`` names RPCs whose first response is discarded after the
    server answered, and DEADLINE_EXCEEDED raised instead, as if it was lost.
    """

    def __init__(
        self,
        mutate: dict[str, Callable[[Any], None]] | None = None,
        drop_first: Iterable[str] = (),
    ) -> None:
        self.mutate = dict(mutate or {})
        self.drop_first = set(drop_first)
        self.calls: dict[str, int] = {}
        self.dropped: list[Any] = []
        self._lock = threading.Lock()

    def _count(self, details: grpc.ClientCallDetails) -> tuple[str, int]:
        name = details.method.rsplit("/", 1)[-1]  # "/sealog.v1.LogService/Append"
        with self._lock:
            n = self.calls.get(name, 0) + 1
            self.calls[name] = n
        return name, n

    def _edit(self, name: str, response: Any) -> Any:
        mutate = self.mutate.get(name)
        if mutate is None:
            return response
        copy = type(response)()
        copy.CopyFrom(response)
        mutate(copy)
        return copy

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        name, n = self._count(client_call_details)
        outcome = continuation(client_call_details, request)
        if name in self.drop_first and n == 1:
            self.dropped.append(outcome.result())  # the server did answer (and commit)
            raise DroppedResponseError()
        if name not in self.mutate:
            return outcome
        try:
            response = outcome.result()
        except grpc.RpcError:
            return outcome
        return _Outcome(self._edit(name, response), outcome)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        name, _ = self._count(client_call_details)
        responses = continuation(client_call_details, request)
        if name not in self.mutate:
            return responses

        def edited() -> Iterator[Any]:
            for response in responses:
                yield self._edit(name, response)

        return edited()


def flip(data: bytes, pos: int = -1) -> bytes:
    """``data`` with one bit changed at ``pos``."""
    b = bytearray(data)
    b[pos] ^= 0x01
    return bytes(b)


# --- an in-process log --------------------------------------------------------------
class RunningLog:
    """A :class:`LogServer` on ``127.0.0.1:0`` in this process, and clients of it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        settings: Settings | None = None,
        origin: str = "sealog.localhost/log",
        key_file: Path | None = None,
        **server_options: Any,
    ) -> None:
        self.data_dir = data_dir
        self.origin = origin
        self.server = LogServer.open(
            data_dir, origin=origin, key_file=key_file, settings=settings, **server_options
        )
        self.verifier: Ed25519Verifier = self.server.signer.verifier()
        self._closeables: list[LogClient | grpc.Channel] = []
        self._stopped = False

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def settings(self) -> Settings:
        return self.server.log.settings

    def client(self, **kwargs: Any) -> LogClient:
        """A verifying client (closed when the log is stopped)."""
        kwargs.setdefault("timeout", 30.0)
        c = LogClient(self.target, kwargs.pop("verifier", self.verifier), **kwargs)
        self._closeables.append(c)
        return c

    def client_with(self, interceptor: TamperInterceptor, **kwargs: Any) -> LogClient:
        """A verifying client whose channel goes through ``interceptor``."""
        channel = grpc.intercept_channel(grpc.insecure_channel(self.target), interceptor)
        self._closeables.append(channel)
        return self.client(channel=channel, **kwargs)

    def stub(self) -> log_pb2_grpc.LogServiceStub:
        """The raw generated stub: no verification, no retries."""
        channel = grpc.insecure_channel(self.target)
        self._closeables.append(channel)
        return log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Close every client, then stop the server (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for c in self._closeables:
            c.close()
        self.server.stop(grace=2.0)


@contextlib.contextmanager
def tls_log_server(
    tmp_path: Path, *, ips: tuple[str, ...] = ("127.0.0.1",), **options: Any
) -> Iterator[tuple[LogServer, TestCA]]:
    """A log on ``localhost:0`` serving TLS with a certificate of a new CA (for
    localhost and ``ips``); that CA also signs client certificates for mutual TLS
    (on ``mtls_address`` if given, else on the main port). Stopped on exit."""
    ca = TestCA(tmp_path / "pki")
    cert = ca.issue("server", cn="localhost", dns=("localhost",), ips=ips, server=True)
    server = LogServer.open(
        tmp_path / "data",
        address="localhost:0",
        tls=TlsFiles(cert.cert_file, cert.key_file, ca.ca_file),
        **options,
    )
    try:
        yield server, ca
    finally:
        server.stop()
