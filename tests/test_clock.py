"""The acceptance time comes from a clock the log can trust, or no entry is stamped.

Within ``clock_tolerance_ms`` behind the last stamp the log keeps its times
monotonic; further behind it fails closed (UNAVAILABLE, an ERROR line, health
NOT_SERVING for the log service) until the clock catches up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Signer
from sealog.server import sequencer as sequencer_module
from sealog.server.app import LogServer
from sealog.server.config import Settings
from sealog.server.errors import UnavailableError
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem
from sealog.server.servicer import SERVICE_NAME

pytestmark = pytest.mark.slow  # logs whose clock is behind, until it catches up

ORIGIN = "sealog.localhost/log"
SIGNER = Ed25519Signer.generate(ORIGIN)
T0 = 1_700_000_000_000
HOUR = 3_600_000


class Clock:
    """A settable wall clock (ms)."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class States:
    """What the log told its clock listener, in order."""

    def __init__(self) -> None:
        self.seen: list[str | None] = []
        self.changed = threading.Condition()

    def __call__(self, fault: str | None) -> None:
        with self.changed:
            self.seen.append(fault)
            self.changed.notify_all()

    def wait_for(self, ok: bool) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: (self.seen[-1] is None) == ok, 10)


def open_log(path: Path, clock: Clock) -> tuple[Log, LmdbStorage]:
    storage = LmdbStorage(path)
    return Log(storage, SIGNER, SIGNER.verifier(), ORIGIN, Settings(), clock_ms=clock), storage


@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[Log, Clock]]:
    clock = Clock()
    log, storage = open_log(tmp_path / "db", clock)
    try:
        yield log, clock
    finally:
        log.close()
        storage.close()


def stamp(log: Log, payload: bytes) -> int:
    outcome = log.submit([AppendItem(payload)], "svc").result(10)
    return Leaf.parse(outcome.entries[0].leaf).accepted_at_ms


def test_a_clock_far_behind_the_last_stamp_fails_closed_until_it_catches_up(
    clocked: tuple[Log, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    log, clock = clocked
    states = States()
    log.watch_clock(states)
    assert stamp(log, b"before") == T0
    clock.now = T0 + HOUR  # the clock jumps forward ...
    assert stamp(log, b"in the future") == T0 + HOUR
    clock.now = T0 + 1000  # ... and is put right

    with caplog.at_level(logging.ERROR), pytest.raises(UnavailableError) as refused:
        stamp(log, b"after the correction")

    assert "clock is 3599000 ms behind" in str(refused.value)
    assert refused.value.retry_after_s == 60.0
    assert any(
        r.levelno == logging.ERROR and "clock fault" in r.getMessage() for r in caplog.records
    )
    states.wait_for(ok=False)
    with pytest.raises(UnavailableError):  # refused at once while the fault lasts
        log.submit([AppendItem(b"still refused")], "svc")
    clock.now = T0 + HOUR - 400  # within the tolerance again: noticed without an append
    states.wait_for(ok=True)
    assert stamp(log, b"caught up") == T0 + HOUR  # monotonic: the last stamp again
    clock.now = T0 + HOUR + 5
    assert stamp(log, b"later") == T0 + HOUR + 5
    assert states.seen == [None, states.seen[1], None]


def test_within_the_tolerance_times_stay_monotonic(clocked: tuple[Log, Clock]) -> None:
    log, clock = clocked
    assert stamp(log, b"a") == T0
    clock.now = T0 - 900  # a small step back (NTP): absorbed
    assert stamp(log, b"b") == T0
    clock.now = T0 + 1
    assert stamp(log, b"c") == T0 + 1


def test_a_log_opened_with_its_clock_behind_refuses_appends(tmp_path: Path) -> None:
    clock = Clock(T0 + HOUR)
    log, storage = open_log(tmp_path / "db", clock)
    stamp(log, b"stamped an hour ahead")
    log.close()
    storage.close()

    clock.now = T0
    log, storage = open_log(tmp_path / "db", clock)
    try:
        with pytest.raises(UnavailableError, match="behind the time of its last entry"):
            log.submit([AppendItem(b"x")], "svc")
        clock.now = T0 + HOUR
        states = States()
        log.watch_clock(states)
        states.wait_for(ok=True)
        assert stamp(log, b"y") == T0 + HOUR
    finally:
        log.close()
        storage.close()


def test_health_says_not_serving_while_the_clock_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr(sequencer_module, "_system_ms", clock)
    server = LogServer.open(tmp_path / "data")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        health = health_pb2_grpc.HealthStub(channel)

        def status() -> int:
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            return int(health.Check(request, timeout=5).status)

        states = States()
        server.log.watch_clock(states)
        assert status() == health_pb2.HealthCheckResponse.SERVING
        server.log.submit([AppendItem(b"a")], "").result(10)
        clock.now = T0 - HOUR
        with pytest.raises(UnavailableError):
            server.log.submit([AppendItem(b"b")], "").result(10)
        states.wait_for(ok=False)
        for _ in range(100):  # the health service is updated on its own event loop
            if status() == health_pb2.HealthCheckResponse.NOT_SERVING:
                break
            threading.Event().wait(0.05)
        assert status() == health_pb2.HealthCheckResponse.NOT_SERVING
        clock.now = T0
        states.wait_for(ok=True)
        for _ in range(100):
            if status() == health_pb2.HealthCheckResponse.SERVING:
                break
            threading.Event().wait(0.05)
        assert status() == health_pb2.HealthCheckResponse.SERVING
    finally:
        channel.close()
        server.stop()


def test_serve_takes_the_clock_tolerance_from_its_flag(tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"
    serve = [sys.executable, "-m", "sealog.server.cli", "serve", "--data-dir", str(data)]
    done = subprocess.run(
        [*serve, "--listen", "127.0.0.1:0", "--clock-tolerance-ms", "-5"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "clock_tolerance_ms: -5.0, want > 0" in done.stderr
    assert not data.exists()  # refused before anything was created
