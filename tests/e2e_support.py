"""Helpers for the end-to-end tests: a `sealog serve` subprocess, the CLI, tampering.

Fixtures live in ``conftest.py``; this module holds the classes they return so
that test modules can import them for type hints.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from sealog.client.compact import CompactRange
from sealog.client.hashing import leaf_hash
from sealog.client.log_client import Entry, LogClient
from sealog.client.note import Ed25519Verifier
from sealog.server.app import LogServer
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
]

STARTUP_TIMEOUT_S = 30.0

OpenLog = Callable[..., "RunningLog"]
"""The ``open_log`` fixture: ``open_log(data_dir=None, settings=None, **LogServer.open kwargs)``."""
Serve = Callable[..., "ServeProcess"]
"""The ``serve`` fixture: ``serve(data_dir, *serve_args, wait=True)``."""
_ADDRESS = re.compile(r"^\s*address:\s+(\S+):(\d+)\b")
_VKEY = re.compile(r"^\s*verifier key:\s+(\S+)")


def sealog_command() -> list[str]:
    """The installed ``sealog`` console script, or ``python -m`` the CLI module."""
    script = Path(sys.executable).parent / "sealog"
    if script.exists():
        return [str(script)]
    found = shutil.which("sealog")
    if found:
        return [found]
    return [sys.executable, "-m", "sealog.server.cli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Client commands must only use what the test passes.
    env.pop("SEALOG_TARGET", None)
    env.pop("SEALOG_VKEY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


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
        env=_env(),
        check=False,
    )


class ServeProcess:
    """``sealog serve`` in a subprocess on a port the kernel picks (``--listen 127.0.0.1:0``).

    :meth:`wait_ready` blocks until the server printed its address line (or
    exited). :meth:`close` always leaves the process dead and reaped.
    """

    def __init__(self, data_dir: Path, *args: str, cwd: Path) -> None:
        self.data_dir = data_dir
        self.args = args
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.host = ""
        self.port = 0
        self.vkey = ""
        self._changed = threading.Event()
        self.proc = subprocess.Popen(
            [
                *sealog_command(),
                "serve",
                "--data-dir",
                str(data_dir),
                "--listen",
                "127.0.0.1:0",
                *args,
            ],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    # --- output -----------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            if m := _ADDRESS.match(line):
                self.host, self.port = m.group(1), int(m.group(2))
            elif m := _VKEY.match(line):
                self.vkey = m.group(1)
                self._changed.set()
        self._changed.set()  # EOF: the process is gone (or closed stdout)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> ServeProcess:
        """Wait for the address and verifier key lines; raise if the server exits first."""
        if not self._changed.wait(timeout):
            raise TimeoutError(
                f"sealog serve printed no address in {timeout}s\nstdout:\n{self.stdout}"
                f"\nstderr:\n{self.stderr}"
            )
        if not (self.port and self.vkey):
            rc = self.proc.wait(timeout)
            for t in self._readers:
                t.join(timeout)
            raise RuntimeError(
                f"sealog serve exited with {rc} before serving\nstdout:\n{self.stdout}"
                f"\nstderr:\n{self.stderr}"
            )
        return self

    # --- stopping -----------------------------------------------------------
    def kill(self) -> None:
        """``kill -9``: no shutdown code runs."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(STARTUP_TIMEOUT_S)

    def terminate(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        """SIGTERM (a clean shutdown); return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return rc

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        """Wait for the process to exit by itself; return its exit status."""
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(timeout)
        return rc

    def close(self) -> None:
        """Make sure the process is dead and reaped, whatever state it is in."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(STARTUP_TIMEOUT_S)
        finally:
            for t in self._readers:
                t.join(5)
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


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
class DroppedResponseError(grpc.RpcError, grpc.Call):
    """What the client sees when a response was lost: DEADLINE_EXCEEDED."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "response dropped by the test"

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
