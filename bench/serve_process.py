"""A ``sealog serve`` subprocess for the reliability benchmarks, and ``sealog fsck`` runs.

:class:`SealogServe` starts the real command on ``127.0.0.1:0``, parses the
address and verifier key it prints, and can be killed (``kill -9``), stopped
(SIGTERM) or measured (RSS from ``/proc``). :meth:`SealogServe.close` always
leaves the process dead and reaped; use it as a context manager.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

__all__ = [
    "SealogServe",
    "ServeFailedError",
    "child_env",
    "rss_kib",
    "run_fsck",
    "sealog_command",
]

STARTUP_TIMEOUT_S = 30.0
_ADDRESS = re.compile(r"^\s*address:\s+(\S+):(\d+)\b")
_VKEY = re.compile(r"^\s*verifier key:\s+(\S+)")
_SIZE = re.compile(r"^\s*checkpoint:\s+size (\d+),")


class ServeFailedError(RuntimeError):
    """``sealog serve`` exited (or hung) before serving; carries its output."""

    def __init__(self, message: str, returncode: int | None, stdout: str, stderr: str) -> None:
        super().__init__(f"{message}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def sealog_command() -> list[str]:
    """The installed ``sealog`` console script, or ``python -m`` the CLI module."""
    script = Path(sys.executable).parent / "sealog"
    if script.exists():
        return [str(script)]
    found = shutil.which("sealog")
    if found:
        return [found]
    return [sys.executable, "-m", "sealog.server.cli"]


def child_env() -> dict[str, str]:
    """This process's environment for a ``sealog`` child: unbuffered, and without the
    variables that would give client commands a target or key the caller did not pass."""
    env = dict(os.environ)
    env.pop("SEALOG_TARGET", None)
    env.pop("SEALOG_VKEY", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_fsck(data_dir: Path, vkey: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """Run ``sealog fsck DATA_DIR --vkey VKEY --json`` to completion."""
    return subprocess.run(
        [*sealog_command(), "fsck", str(data_dir), "--vkey", vkey, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        check=False,
    )


def rss_kib(pid: int) -> dict[str, int]:
    """``VmRSS``, ``RssAnon`` and ``RssFile`` of a process in KiB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile"):
            out[name] = int(rest.split()[0])
    return out


class SealogServe:
    """``sealog serve --data-dir DIR --listen 127.0.0.1:0 ARGS`` in a subprocess (in ``cwd``),
    run through ``launcher`` (a command that takes the command line to run) if given."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        cwd: Path | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        self.data_dir = data_dir
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self.host = ""
        self.port = 0
        self.vkey = ""
        self.size_at_start = -1
        self._ready = threading.Event()
        self.proc = subprocess.Popen(
            [
                *launcher,
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
            env=child_env(),
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            if m := _ADDRESS.match(line):
                self.host, self.port = m.group(1), int(m.group(2))
            elif m := _VKEY.match(line):
                self.vkey = m.group(1)
            elif m := _SIZE.match(line):
                self.size_at_start = int(m.group(1))
                self._ready.set()
        self._ready.set()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stdout(self) -> str:
        return "".join(self.stdout_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT_S) -> SealogServe:
        """Wait until it printed its address, key and checkpoint (the self-check passed).

        Raises :class:`ServeFailedError` if it exits first or takes too long.
        """
        if not self._ready.wait(timeout):
            self.close()
            raise ServeFailedError(
                f"sealog serve printed no address in {timeout}s", None, self.stdout, self.stderr
            )
        if not (self.port and self.vkey and self.size_at_start >= 0):
            rc = self.wait_exit(timeout)
            raise ServeFailedError(
                f"sealog serve exited with {rc} before serving", rc, self.stdout, self.stderr
            )
        return self

    def kill(self) -> int:
        """``kill -9``: no shutdown code runs. Return the exit status (-9)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        return self.wait_exit()

    def terminate(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        """SIGTERM (a clean shutdown); return the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        """Wait for the process to exit; return its exit status."""
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

    def __enter__(self) -> SealogServe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
