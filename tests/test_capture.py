"""Drop-in capture: the event shipper, the logging handler and the gRPC interceptor.

Everything runs against real logs on loopback. "The log is down" is a stopped
server (or a port nobody listens on); "the log comes back" reopens the same
data directory on the same port, so the shipper's client sees it return.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import OpenLog, TamperInterceptor, flip
from pki import TestCA

from sealog.client.capture.handler import SealogHandler
from sealog.client.capture.interceptor import AuditServerInterceptor
from sealog.client.capture.shipper import EventShipper, FailedEvent, SpoolError
from sealog.client.event import MAX_FIELD_CHARS, AuditEvent
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer, Ed25519Verifier
from sealog.server.app import LogServer
from sealog.server.config import Settings

pytestmark = pytest.mark.slow  # stops and reopens logs under running shippers

WAIT_S = 20.0  # generous bound for anything that should happen "soon"
FAST_RETRY: dict[str, Any] = {"retry_initial_s": 0.05, "retry_max_s": 0.3}


# --- helpers ------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def quick_client(target: str, verifier: Ed25519Verifier | str, timeout: float = 5.0) -> LogClient:
    """A client whose channel reconnects within a fraction of a second once the log is back."""
    channel = grpc.insecure_channel(
        target,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 300),
        ],
    )
    return LogClient(target, verifier, channel=channel, timeout=timeout)


class PinnedLog:
    """A log on a fixed port that can be stopped and reopened (same data, same key)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.server: LogServer | None = None
        self.verifier = self.start().signer.verifier()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> LogServer:
        self.server = LogServer.open(self.data_dir, address=self.target)
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=1.0)
            self.server = None


@pytest.fixture
def pinned_log(tmp_path: Path) -> Iterator[PinnedLog]:
    log = PinnedLog(tmp_path / "pinned")
    yield log
    log.stop()


@pytest.fixture
def clients() -> Iterator[list[LogClient]]:
    """Clients to close at teardown, after the shippers using them."""
    made: list[LogClient] = []
    yield made
    for c in made:
        c.close()


def unreachable_target() -> tuple[str, str]:
    """A target nobody listens on, and some vkey (never used to verify anything)."""
    return f"127.0.0.1:{free_port()}", Ed25519Signer.generate("nobody.example/log").verifier().vkey


def shipper_for(client: LogClient, **kwargs: Any) -> EventShipper:
    kwargs.setdefault("batch_delay_s", 0.02)
    kwargs.setdefault("close_at_exit", False)
    for k, v in FAST_RETRY.items():
        kwargs.setdefault(k, v)
    return EventShipper(client, **kwargs)


def item(i: int) -> AuditEvent:
    return AuditEvent("test.item", resource=f"item/{i}", outcome="success")


def events_in(client: LogClient) -> list[AuditEvent]:
    return [AuditEvent.from_payload(e.parse().payload) for e in client.entries()]


def resources_in(client: LogClient) -> list[str]:
    return [e.resource for e in events_in(client)]


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- the logging handler ------------------------------------------------------------
@pytest.fixture
def audit_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("test.capture.audit")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger
    for h in list(logger.handlers):
        logger.removeHandler(h)


def test_handler_records_reach_the_log_in_order(
    open_log: OpenLog, audit_logger: logging.Logger
) -> None:
    log = open_log()
    shipper = shipper_for(log.client(), policy="drop")
    audit_logger.addHandler(SealogHandler(shipper))
    before_ms = int(time.time() * 1000)

    audit_logger.info("service started")
    for i in range(20):
        audit_logger.warning(
            "rotated key %d for %s",
            i,
            "svc/payments",
            extra={
                "action": "key.rotate",
                "resource": f"svc/payments/key/{i}",
                "outcome": "success",
                "request_id": f"req-{i}",
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
                "attributes": {"key_id": f"k{i}", "attempt": 1},
            },
        )
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        audit_logger.exception("deploy failed", extra={"action": "deploy", "outcome": "failure"})
    audit_logger.error("x" * 5000)

    assert shipper.flush(WAIT_S)
    events = events_in(log.client())
    assert len(events) == 23
    first, rotations, crash, long = events[0], events[1:21], events[21], events[22]

    assert first.action == "log"
    assert dict(first.attributes) == {
        "logger": "test.capture.audit",
        "level": "INFO",
        "message": "service started",
    }
    assert first.event_time_ms >= before_ms
    for i, event in enumerate(rotations):
        assert event.action == "key.rotate"
        assert event.resource == f"svc/payments/key/{i}"  # in order
        assert event.outcome == "success"
        assert event.request_id == f"req-{i}"
        assert event.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert event.attributes["message"] == f"rotated key {i} for svc/payments"
        assert event.attributes["key_id"] == f"k{i}"
        assert event.attributes["attempt"] == "1"
        assert event.attributes["level"] == "WARNING"
    assert crash.outcome == "failure"
    assert crash.attributes["message"].startswith("deploy failed\\nTraceback")  # escaped
    assert "RuntimeError: disk on fire" in crash.attributes["message"]
    assert len(long.attributes["message"]) == MAX_FIELD_CHARS
    assert long.attributes["message"].endswith("…")

    assert shipper.close(WAIT_S)
    assert not shipper.submit(item(0))  # closed: dropped and counted
    stats = shipper.stats()
    assert (stats.submitted, stats.sent, stats.dropped) == (23, 23, 1)


def test_handler_never_raises_and_skips_the_shippers_own_records(
    open_log: OpenLog, audit_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log()
    shipper = shipper_for(log.client(), policy="drop")
    handler = SealogHandler(shipper)
    handled: list[logging.LogRecord] = []
    monkeypatch.setattr(handler, "handleError", handled.append)
    audit_logger.addHandler(handler)
    own = logging.getLogger("sealog.client.capture.shipper")
    own.addHandler(handler)
    try:
        audit_logger.info("bad outcome", extra={"outcome": "maybe"})  # not an event outcome
        audit_logger.info("bad key", extra={"attributes": {"no spaces allowed": "x"}})
        own.warning("the log is unreachable")  # must not feed itself
        audit_logger.info("fine")
    finally:
        own.removeHandler(handler)

    assert [r.getMessage() for r in handled] == ["bad outcome", "bad key"]
    assert shipper.flush(WAIT_S)
    assert [e.attributes["message"] for e in events_in(log.client())] == ["fine"]
    shipper.close()


# --- the gRPC interceptor -----------------------------------------------------------
def demo_service() -> grpc.GenericRpcHandler[Any, Any]:
    """A tiny bytes-in, bytes-out service with every handler kind and a few failures."""

    def say(request: bytes, context: grpc.ServicerContext) -> bytes:
        return b"hello " + request

    def missing(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no such thing: {request.decode()}")

    def forbidden(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_code(grpc.StatusCode.PERMISSION_DENIED)
        context.set_details("not for you")
        return b""

    def broken(request: bytes, context: grpc.ServicerContext) -> bytes:
        raise RuntimeError("bug in the service")

    def count(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def forever(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        while True:
            yield b"tick"
            time.sleep(0.01)

    def total(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        return b"+".join(requests)

    def shout(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        for r in requests:
            yield r.upper()
        context.set_trailing_metadata((("x-shouted", "yes"),))

    return grpc.method_handlers_generic_handler(
        "demo.v1.Demo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Missing": grpc.unary_unary_rpc_method_handler(missing),
            "Forbidden": grpc.unary_unary_rpc_method_handler(forbidden),
            "Broken": grpc.unary_unary_rpc_method_handler(broken),
            "Count": grpc.unary_stream_rpc_method_handler(count),
            "Forever": grpc.unary_stream_rpc_method_handler(forever),
            "Total": grpc.stream_unary_rpc_method_handler(total),
            "Shout": grpc.stream_stream_rpc_method_handler(shout),
        },
    )


def serve_demo(
    interceptors: list[grpc.ServerInterceptor[Any, Any]],
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    server.add_generic_rpc_handlers((demo_service(),))
    address = "127.0.0.1:0"
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    server.start()
    return server, f"127.0.0.1:{port}"


def call_everything(channel: grpc.Channel) -> list[tuple[str, Any]]:
    """Call each method once; return what the client saw (answers, or code and details)."""
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("Say", lambda: channel.unary_unary("/demo.v1.Demo/Say", None, None)(b"bob", timeout=10)),
        (
            "Missing",
            lambda: channel.unary_unary("/demo.v1.Demo/Missing", None, None)(b"x", timeout=10),
        ),
        (
            "Forbidden",
            lambda: channel.unary_unary("/demo.v1.Demo/Forbidden", None, None)(b"", timeout=10),
        ),
        (
            "Broken",
            lambda: channel.unary_unary("/demo.v1.Demo/Broken", None, None)(b"", timeout=10),
        ),
        (
            "Count",
            lambda: list(channel.unary_stream("/demo.v1.Demo/Count", None, None)(b"3", timeout=10)),
        ),
        (
            "Total",
            lambda: channel.stream_unary("/demo.v1.Demo/Total", None, None)(
                iter([b"a", b"b"]), timeout=10
            ),
        ),
        ("Shout", lambda: shout(channel)),
    ]
    seen: list[tuple[str, Any]] = []
    for name, call in calls:
        try:
            seen.append((name, call()))
        except grpc.RpcError as e:
            seen.append((name, (e.code(), e.details())))
    return seen


def shout(channel: grpc.Channel) -> tuple[list[bytes], Any]:
    responses = channel.stream_stream("/demo.v1.Demo/Shout", None, None)(
        iter([b"hi", b"there"]), timeout=10, metadata=(("x-request-id", "req-42"),)
    )
    answers = list(responses)
    return answers, tuple(responses.trailing_metadata())


def test_interceptor_records_every_call_and_changes_no_answer(open_log: OpenLog) -> None:
    log = open_log()
    shipper = shipper_for(log.client(), policy="drop")
    plain, plain_target = serve_demo([])
    audited, audited_target = serve_demo([AuditServerInterceptor(shipper)])
    try:
        with grpc.insecure_channel(plain_target) as channel:
            expected = call_everything(channel)
        with grpc.insecure_channel(audited_target) as channel:
            seen = call_everything(channel)
            traced = channel.unary_unary("/demo.v1.Demo/Say", None, None)(
                b"eve",
                timeout=10,
                metadata=(
                    ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                ),
            )
            # A stream the client walks away from is recorded as CANCELLED.
            stream = channel.unary_stream("/demo.v1.Demo/Forever", None, None)(b"", timeout=10)
            assert next(iter(stream)) == b"tick"
            stream.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leave cancel unannotated
            wait_until(lambda: shipper.stats().submitted == 9, "the cancelled call's event")
    finally:
        plain.stop(None)
        audited.stop(None)

    assert seen == expected  # the interceptor changed nothing the client sees
    assert expected[0] == ("Say", b"hello bob")
    assert expected[1] == ("Missing", (grpc.StatusCode.NOT_FOUND, "no such thing: x"))
    assert expected[6] == ("Shout", ([b"HI", b"THERE"], (("x-shouted", "yes"),)))
    assert traced == b"hello eve"

    assert shipper.flush(WAIT_S)
    events = events_in(log.client())
    recorded = [(e.action, e.outcome, e.attributes["code"]) for e in events]
    assert recorded == [
        ("/demo.v1.Demo/Say", "success", "OK"),
        ("/demo.v1.Demo/Missing", "failure", "NOT_FOUND"),
        ("/demo.v1.Demo/Forbidden", "denied", "PERMISSION_DENIED"),
        ("/demo.v1.Demo/Broken", "failure", "UNKNOWN"),
        ("/demo.v1.Demo/Count", "success", "OK"),
        ("/demo.v1.Demo/Total", "success", "OK"),
        ("/demo.v1.Demo/Shout", "success", "OK"),
        ("/demo.v1.Demo/Say", "success", "OK"),
        ("/demo.v1.Demo/Forever", "failure", "CANCELLED"),
    ]
    for e in events:
        assert e.attributes["caller_auth"] == "none"  # no client certificate
        assert e.attributes["caller"] == e.attributes["peer"]
        assert e.attributes["peer"].startswith("ipv4:127.0.0.1:")
        assert float(e.attributes["latency_ms"]) >= 0
        assert e.event_time_ms > 0
    assert events[6].request_id == "req-42"
    assert events[7].trace_id == "0af7651916cd43dd8448eb211c80319c"
    shipper.close()


def test_interceptor_names_the_mtls_caller_by_its_certificate(
    open_log: OpenLog, tmp_path: Path
) -> None:
    ca = TestCA(tmp_path / "pki")
    server_cert = ca.issue("server", cn="demo", ips=("127.0.0.1",), server=True)
    spiffe = "spiffe://example.org/ns/payments/sa/billing"
    client_cert = ca.issue("billing", cn="billing", uri=spiffe)
    credentials = grpc.ssl_server_credentials(
        [(server_cert.key_file.read_bytes(), server_cert.cert_file.read_bytes())],
        root_certificates=ca.ca_file.read_bytes(),
        require_client_auth=True,
    )
    log = open_log()
    shipper = shipper_for(log.client(), policy="drop")
    server, target = serve_demo([AuditServerInterceptor(shipper)], credentials)
    try:
        channel_credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.ca_file.read_bytes(),
            private_key=client_cert.key_file.read_bytes(),
            certificate_chain=client_cert.cert_file.read_bytes(),
        )
        with grpc.secure_channel(target, channel_credentials) as channel:
            assert (
                channel.unary_unary("/demo.v1.Demo/Say", None, None)(b"x", timeout=10) == b"hello x"
            )
    finally:
        server.stop(None)

    assert shipper.flush(WAIT_S)
    (event,) = events_in(log.client())
    assert event.attributes["caller"] == spiffe
    assert event.attributes["caller_auth"] == "mtls"
    assert event.attributes["peer"].startswith("ipv4:127.0.0.1:")
    shipper.close()


# --- overflow policies --------------------------------------------------------------
def test_drop_policy_counts_drops_while_the_log_is_down_and_never_blocks(
    pinned_log: PinnedLog, clients: list[LogClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = quick_client(pinned_log.target, pinned_log.verifier)
    clients.append(client)
    shipper = shipper_for(client, policy="drop", max_buffered=5, batch_entries=2)
    for i in range(3):
        assert shipper.submit(item(i))
    assert shipper.flush(WAIT_S)

    pinned_log.stop()
    caplog.set_level(logging.WARNING, logger="sealog.client.capture.shipper")
    slowest = 0.0
    accepted = []
    for i in range(3, 33):
        start = time.monotonic()
        accepted.append(shipper.submit(item(i)))
        slowest = max(slowest, time.monotonic() - start)

    assert accepted == [True] * 5 + [False] * 25  # the buffer holds 5; the rest is dropped
    assert slowest < 0.5, "submit waited"
    stats = shipper.stats()
    assert (stats.submitted, stats.sent, stats.dropped, stats.buffered) == (8, 3, 25, 5)
    drop_warnings = [r for r in caplog.records if "dropped an audit event" in r.getMessage()]
    assert len(drop_warnings) == 1  # rate-limited

    pinned_log.start()
    assert shipper.flush(WAIT_S)
    assert resources_in(client) == [f"item/{i}" for i in range(8)]
    assert shipper.close(WAIT_S)
    assert shipper.stats().sent == 8


def test_block_policy_waits_with_a_bound_then_drops(clients: list[LogClient]) -> None:
    client = quick_client(*unreachable_target())
    clients.append(client)
    shipper = shipper_for(client, policy="block", max_buffered=2, block_timeout_s=0.3)
    assert shipper.submit(item(0))
    assert shipper.submit(item(1))

    start = time.monotonic()
    assert not shipper.submit(item(2))
    waited = time.monotonic() - start

    assert 0.25 <= waited < 5.0
    assert shipper.stats().dropped == 1
    assert not shipper.close(0.2)  # the log never answered
    assert shipper.stats().dropped == 3  # the two buffered events, reported lost


def test_block_policy_waits_for_the_log_to_come_back(
    pinned_log: PinnedLog, clients: list[LogClient]
) -> None:
    client = quick_client(pinned_log.target, pinned_log.verifier)
    clients.append(client)
    shipper = shipper_for(client, policy="block", max_buffered=2)
    pinned_log.stop()
    done = threading.Event()

    def produce() -> None:
        for i in range(6):
            assert shipper.submit(item(i))
        done.set()

    producer = threading.Thread(target=produce)
    producer.start()
    assert not done.wait(0.5), "submit did not block on a full buffer"
    assert shipper.stats().buffered == 2

    pinned_log.start()
    assert done.wait(WAIT_S)
    producer.join()
    assert shipper.flush(WAIT_S)
    assert resources_in(client) == [f"item/{i}" for i in range(6)]
    assert shipper.close(WAIT_S)


def test_emit_does_not_wait_for_the_network(audit_logger: logging.Logger) -> None:
    """A log that accepts connections but never answers: every append waits 1 s for nothing."""
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    target = f"127.0.0.1:{blackhole.getsockname()[1]}"
    vkey = Ed25519Signer.generate("nobody.example/log").verifier().vkey
    client = LogClient(target, vkey, timeout=1.0, max_attempts=2)
    shipper = shipper_for(client, policy="drop", batch_entries=1, batch_delay_s=0)
    audit_logger.addHandler(SealogHandler(shipper))
    try:
        audit_logger.info("first")  # the sender takes it and hangs on the network
        wait_until(lambda: shipper.stats().buffered == 1, "the first event")
        time.sleep(0.2)
        slowest = 0.0
        for i in range(50):
            start = time.monotonic()
            audit_logger.info("request %d served", i, extra={"action": "http.request"})
            slowest = max(slowest, time.monotonic() - start)

        assert slowest < 0.5, f"emit took {slowest:.3f} s: it waited for the network"
        stats = shipper.stats()
        assert (stats.buffered, stats.sent, stats.dropped) == (51, 0, 0)
    finally:
        shipper.close(0.1)
        client.close()
        blackhole.close()


# --- the spool ----------------------------------------------------------------------
def test_spool_replays_in_order_once_the_log_is_back(
    pinned_log: PinnedLog, clients: list[LogClient], tmp_path: Path
) -> None:
    client = quick_client(pinned_log.target, pinned_log.verifier)
    clients.append(client)
    spool = tmp_path / "spool" / "events"
    shipper = shipper_for(client, policy="spool", spool_path=spool, max_buffered=5, batch_entries=4)
    for i in range(3):
        shipper.submit(item(i))
    assert shipper.flush(WAIT_S)

    pinned_log.stop()
    for i in range(3, 43):
        assert shipper.submit(item(i))
    stats = shipper.stats()
    assert (stats.buffered, stats.spooled, stats.spool_pending, stats.dropped) == (5, 35, 35, 0)
    assert spool.stat().st_size > 35 * 40

    pinned_log.start()
    assert shipper.flush(WAIT_S)
    assert resources_in(client) == [f"item/{i}" for i in range(43)]  # in order, each once
    stats = shipper.stats()
    assert (stats.sent, stats.duplicates, stats.spool_pending) == (43, 0, 0)

    # Drained: new events take the fast path again.
    assert shipper.submit(item(43))
    assert shipper.flush(WAIT_S)
    assert shipper.stats().spooled == 35
    assert shipper.close(WAIT_S)
    assert resources_in(client)[-1] == "item/43"


CRASHING_SHIPPER = textwrap.dedent(
    """
    import sys, time
    from sealog.client.log_client import LogClient
    from sealog.client.capture.shipper import EventShipper

    target, vkey, spool = sys.argv[1:4]

    class HangsAfterThirdAppend(LogClient):
        appends = 0

        def append_batch(self, payloads, *, idempotency_keys=None):
            result = super().append_batch(payloads, idempotency_keys=idempotency_keys)
            HangsAfterThirdAppend.appends += 1
            if HangsAfterThirdAppend.appends == 3:
                # The log has the batch; the spool does not know yet. kill -9 here.
                print("hung", flush=True)
                time.sleep(600)
            return result

    shipper = EventShipper(
        HangsAfterThirdAppend(target, vkey),
        policy="spool", spool_path=spool, batch_entries=7, close_at_exit=False,
    )
    time.sleep(600)
    """
)


def test_spool_survives_restarts_and_a_kill_mid_replay_exactly_once(
    open_log: OpenLog, clients: list[LogClient], tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    # 1. The log is unreachable: 10 events wait in memory, 50 in the spool.
    down = quick_client(*unreachable_target())
    clients.append(down)
    first = shipper_for(down, policy="spool", spool_path=spool, max_buffered=10)
    for i in range(60):
        assert first.submit(item(i))
    assert first.stats().spooled == 50
    assert not first.close(0.2)  # gives up: the buffered 10 go to the spool, ahead
    assert first.stats().spool_pending == 60

    # 2. The log is up. A new process replays and is killed after the log took
    #    its third batch but before the spool recorded it.
    log = open_log()
    script = tmp_path / "crashing_shipper.py"
    script.write_text(CRASHING_SHIPPER)
    child = subprocess.Popen(
        [sys.executable, str(script), log.target, log.verifier.vkey, str(spool)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # blocks until the child hangs (or dies)
        assert line == "hung\n", child.stderr.read() if child.stderr else ""
        with pytest.raises(SpoolError, match="in use by another process"):
            shipper_for(down, policy="spool", spool_path=spool)
    finally:
        child.kill()
        child.wait(WAIT_S)
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    reader = log.client()
    assert len(resources_in(reader)) == 21  # three batches of 7 made it

    # 3. Another restart finishes the replay: the third batch again (a duplicate
    #    the log recognises by its keys), then the rest.
    last = shipper_for(log.client(), policy="spool", spool_path=spool)
    assert last.stats().spool_pending == 60 - 14
    assert last.flush(WAIT_S)
    assert resources_in(reader) == [f"item/{i}" for i in range(60)]  # once each, in order
    stats = last.stats()
    assert (stats.sent, stats.duplicates, stats.spool_pending) == (46, 7, 0)
    assert last.close(WAIT_S)


def test_spool_cuts_a_torn_tail_and_refuses_a_corrupt_middle(
    clients: list[LogClient], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    down = quick_client(*unreachable_target())
    clients.append(down)
    spool = tmp_path / "spool"
    writer = shipper_for(down, policy="spool", spool_path=spool, max_buffered=0)
    for i in range(3):
        assert writer.submit(item(i))  # max_buffered=0: straight to disk
    assert writer.stats().spooled == 3
    writer.close(0.1)
    whole = spool.read_bytes()

    with spool.open("ab") as f:
        f.write(b"\x00\x00\x01")  # a crash in the middle of writing a record header
    caplog.set_level(logging.WARNING, logger="sealog.client.capture.shipper")
    reopened = shipper_for(down, policy="spool", spool_path=spool, max_buffered=0)
    assert reopened.stats().spool_pending == 3
    assert any("torn record" in r.getMessage() for r in caplog.records)
    reopened.close(0.1)
    assert spool.read_bytes() == whole

    corrupt = bytearray(whole)
    corrupt[len(b"sealog-spool/v1\n") + 12] ^= 0x01  # inside the first record's body
    spool.write_bytes(bytes(corrupt))
    with pytest.raises(SpoolError, match="corrupt"):
        shipper_for(down, policy="spool", spool_path=spool)


# --- errors the log will not get over -----------------------------------------------
def test_refused_events_are_isolated_and_do_not_wedge_the_queue(open_log: OpenLog) -> None:
    log = open_log(settings=Settings(max_entry_bytes=300, max_request_entries=4))
    refused: list[FailedEvent] = []
    shipper = shipper_for(log.client(), policy="drop", batch_entries=16, on_error=refused.append)
    for i in range(5):
        shipper.submit(item(i))
    shipper.submit(b"x" * 1000, idempotency_key="too-big-1")  # over max_entry_bytes
    for i in range(5, 10):
        shipper.submit(item(i))
    assert shipper.flush(WAIT_S)

    # A batch of 11 is over max_request_entries (INVALID_ARGUMENT) and holds one
    # oversize event (RESOURCE_EXHAUSTED): halves until each refusal is alone.
    assert resources_in(log.client()) == [f"item/{i}" for i in range(10)]
    assert [(f.idempotency_key, f.code) for f in refused] == [
        ("too-big-1", grpc.StatusCode.RESOURCE_EXHAUSTED)
    ]
    assert "max entry size" in refused[0].message
    stats = shipper.stats()
    assert (stats.sent, stats.failed_permanently) == (10, 1)
    assert shipper.close(WAIT_S)


def test_a_reused_key_fails_only_its_own_event_not_its_batch(open_log: OpenLog) -> None:
    log = open_log()
    client = log.client()
    client.append(item(99).to_payload(), idempotency_key="reused-1")
    refused: list[FailedEvent] = []
    shipper = shipper_for(client, policy="drop", batch_entries=16, on_error=refused.append)
    for i in range(4):
        shipper.submit(item(i))
    shipper.submit(item(100), idempotency_key="reused-1")  # ALREADY_EXISTS
    for i in range(4, 8):
        shipper.submit(item(i))
    assert shipper.flush(WAIT_S)

    assert resources_in(log.client()) == ["item/99"] + [f"item/{i}" for i in range(8)]
    assert [(f.idempotency_key, f.code) for f in refused] == [
        ("reused-1", grpc.StatusCode.ALREADY_EXISTS)
    ]
    assert shipper.stats().failed_permanently == 1
    assert shipper.close(WAIT_S)


def test_answers_that_do_not_verify_are_retried_then_refused(open_log: OpenLog) -> None:
    log = open_log()

    def garble(response: Any) -> None:
        response.entries[0].leaf = flip(response.entries[0].leaf)

    tamper = TamperInterceptor(mutate={"Append": garble})
    refused: list[FailedEvent] = []
    shipper = shipper_for(log.client_with(tamper), policy="drop", on_error=refused.append)
    shipper.submit(item(0))
    shipper.submit(item(1))
    assert shipper.flush(WAIT_S)

    assert tamper.calls["Append"] == 3  # a garbled answer may not repeat: two retries
    assert len(refused) == 2
    assert all(f.code is None and "VerificationError" in f.message for f in refused)
    tamper.mutate.clear()  # the log behaves again; the queue was not wedged
    shipper.submit(item(2))
    assert shipper.flush(WAIT_S)
    # Three tries of the first batch with the same keys put it in the log once.
    assert resources_in(log.client()) == ["item/0", "item/1", "item/2"]
    stats = shipper.stats()
    assert (stats.sent, stats.failed_permanently) == (1, 2)
    assert shipper.close(WAIT_S)


def test_settings_are_checked(tmp_path: Path, clients: list[LogClient]) -> None:
    client = quick_client(*unreachable_target())
    clients.append(client)
    with pytest.raises(ValueError, match="policy: 'later'"):
        EventShipper(client, policy="later")
    with pytest.raises(ValueError, match="spool_path: required"):
        EventShipper(client, policy="spool")
    with pytest.raises(ValueError, match="spool_path"):
        EventShipper(client, policy="drop", spool_path=tmp_path / "s")
    with pytest.raises(ValueError, match="max_buffered: 0"):
        EventShipper(client, policy="drop", max_buffered=0)
    assert not os.path.exists(tmp_path / "s")
