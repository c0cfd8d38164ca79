"""Fixtures for the end-to-end tests: in-process logs, `sealog serve` subprocesses, clients.

Everything listens on 127.0.0.1 with a port the kernel picks, keeps its data
under ``tmp_path``, and is stopped at teardown even when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import OpenLog, RunningLog, Serve, ServeProcess
from hypothesis import settings as hypothesis_settings
from s3_support import S3Server

from sealog.client.log_client import LogClient
from sealog.server.config import Settings

# .ci/run sets SEALOG_HYPOTHESIS_PROFILE=ci: the property tests then draw the same
# examples on every run, so a landing never depends on luck. A plain
# `python -m pytest` draws new ones each time, and python -m bench.fuzz_parsers
# explores for as long as it is given.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("SEALOG_HYPOTHESIS_PROFILE"):
    hypothesis_settings.load_profile(os.environ["SEALOG_HYPOTHESIS_PROFILE"])


@pytest.fixture
def open_log(tmp_path: Path) -> Iterator[OpenLog]:
    """A factory of in-process logs: ``open_log(data_dir=None, settings=None, ...)``.

    Each call opens a :class:`RunningLog`; all of them are stopped at teardown.
    Passing the ``data_dir`` of a stopped log reopens it.
    """
    logs: list[RunningLog] = []
    counter = 0

    def factory(
        data_dir: Path | None = None, settings: Settings | None = None, **kwargs: Any
    ) -> RunningLog:
        nonlocal counter
        if data_dir is None:
            counter += 1
            data_dir = tmp_path / f"log{counter}"
        running = RunningLog(data_dir, settings=settings, **kwargs)
        logs.append(running)
        return running

    yield factory
    for running in reversed(logs):
        running.stop()


@pytest.fixture
def log(open_log: OpenLog) -> RunningLog:
    """One in-process log with default settings."""
    return open_log()


@pytest.fixture
def client(log: RunningLog) -> LogClient:
    """A verifying client of :func:`log`."""
    return log.client()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """A factory of ``sealog serve`` subprocesses: ``serve(data_dir, *args, wait=True)``.

    With ``wait`` (the default) it returns once the server printed its address;
    every process is killed and reaped at teardown.
    """
    procs: list[ServeProcess] = []
    workdir = tmp_path / "cwd"
    workdir.mkdir(exist_ok=True)

    def factory(data_dir: Path, *args: str, wait: bool = True) -> ServeProcess:
        proc = ServeProcess(data_dir, *args, cwd=workdir)
        procs.append(proc)
        if wait:
            proc.wait_ready()
        return proc

    yield factory
    for proc in procs:
        proc.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3-compatible server (SeaweedFS) on loopback, one per test worker; give
    each test its own bucket (``s3_server.make_bucket()``)."""
    server = S3Server.start(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()
