"""Witnesses: cosignatures through AddCosignature, witness policies, and C2SP tlog-witness."""

from __future__ import annotations

import base64
import contextlib
import io
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import OpenLog, RunningLog, run_sealog, sealog_command

from sealog.client.checkpoint import Checkpoint, sign_checkpoint
from sealog.client.cosignature import Cosigner, cosign_checkpoint, verify_cosignatures
from sealog.client.errors import InvalidSignatureError, WitnessPolicyError
from sealog.client.http_serve import HttpLimits
from sealog.client.keyfile import write_private_key_file
from sealog.client.monitor.config import LogConfig
from sealog.client.monitor.follow import LogMonitor
from sealog.client.note import Ed25519Signer, parse_note
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import (
    MAX_REQUEST_BYTES,
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    Witness,
    WitnessError,
    add_checkpoint,
)
from sealog.client.witness_policy import WitnessPolicy
from sealog.server.witness_push import WitnessPusher
from sealog.v1 import log_pb2

W1 = Cosigner.generate("w1.example/witness")
W2 = Cosigner.generate("w2.example/witness")
W3 = Cosigner.generate("w3.example/witness")
ALL = [W1.verifier(), W2.verifier(), W3.verifier()]


@pytest.fixture
def witnessed_log(open_log: OpenLog) -> RunningLog:
    """A log that accepts cosignatures from w1, w2 and w3."""
    return open_log(witnesses=ALL)


def witness_monitor(log: RunningLog, cosigner: Cosigner, tmp_path: Path) -> LogMonitor:
    key = tmp_path / f"{cosigner.name.split('.')[0]}.key"
    if not key.exists():
        write_private_key_file(key, cosigner.skey)
    config = LogConfig(
        name=cosigner.name.split(".")[0],
        target=log.target,
        vkey=log.verifier.vkey,
        state_dir=tmp_path / "state" / cosigner.name.split(".")[0],
        cosigner_key_file=key,
    )
    return LogMonitor(config, out=io.StringIO(), err=io.StringIO())


def test_two_witnesses_cosign_and_the_client_policy_decides(
    witnessed_log: RunningLog, tmp_path: Path
) -> None:
    log = witnessed_log
    log.client().append_batch([b"a", b"b", b"c"])
    w1, w2 = witness_monitor(log, W1, tmp_path), witness_monitor(log, W2, tmp_path)
    try:
        for w in (w1, w2):
            result = w.poll()
            assert result.outcome == "ok" and "cosigned 3" in result.line, result.line
        two_of_two = log.client(witnesses=[W1.verifier(), W2.verifier()])
        cp = two_of_two.checkpoint()
        assert cp.checkpoint.size == 3
        names = {c.name for c in verify_cosignatures(cp.note, ALL)}
        assert names == {W1.name, W2.name}
        # One note: the log's line first, then both cosignature lines.
        _, lines = parse_note(cp.note)
        assert [x.name for x in lines] == [log.origin, W1.name, W2.name]
        # 2-of-3 with w3 absent: still two.
        assert log.client(witnesses=ALL, witness_threshold=2).checkpoint().checkpoint.size == 3
        # All three required, w3 never cosigned: refused, and the error names w3 only.
        with pytest.raises(WitnessPolicyError) as caught:
            log.client(witnesses=ALL).checkpoint()
        assert caught.value.missing == (f"{W3.name}+{W3.key_hash:08x}",)
        assert W3.name in str(caught.value) and W2.name not in str(caught.value)

        # The log grows; only w1 has cosigned the new checkpoint so far.
        log.client().append(b"d")
        assert "cosigned 4" in w1.poll().line
        with pytest.raises(WitnessPolicyError) as caught:
            log.client(witnesses=ALL, witness_threshold=2).checkpoint()
        error = caught.value
        assert error.missing == (
            f"{W2.name}+{W2.key_hash:08x}",
            f"{W3.name}+{W3.key_hash:08x}",
        )
        assert W2.name in str(error) and W3.name in str(error) and "2" in str(error)
        with pytest.raises(WitnessPolicyError, match=W2.name):
            two_of_two.checkpoint()
        # Proofs against the witnessed checkpoint use the policy as well.
        with pytest.raises(WitnessPolicyError):
            two_of_two.inclusion_proof(0)
        assert "cosigned 4" in w2.poll().line
        assert two_of_two.checkpoint().checkpoint.size == 4
        assert two_of_two.inclusion_proof(3).checkpoint.checkpoint.size == 4
    finally:
        w1.close()
        w2.close()


@pytest.mark.slow
def test_witnessed_checkpoint_survives_a_restart(open_log: OpenLog, tmp_path: Path) -> None:
    log = open_log(witnesses=ALL)
    client = log.client()
    client.append(b"a")
    note = cosign_checkpoint(client.checkpoint().note, W1)
    assert client.add_cosignature(note).checkpoint.size == 1
    data_dir = log.data_dir
    log.stop()
    again = open_log(data_dir=data_dir, witnesses=ALL)
    cp = again.client(witnesses=[W1.verifier()]).checkpoint()
    assert cp.note == note


@pytest.mark.slow
def test_add_cosignature_checks(witnessed_log: RunningLog, open_log: OpenLog) -> None:
    log = witnessed_log
    client = log.client()
    stub = log.stub()

    def add(note: bytes) -> grpc.StatusCode:
        try:
            stub.AddCosignature(log_pb2.AddCosignatureRequest(checkpoint=note))
        except grpc.RpcError as e:
            return e.code()
        return grpc.StatusCode.OK

    # Nothing witnessed yet.
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCheckpoint(log_pb2.GetCheckpointRequest(witnessed=True))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    client.append_batch([b"a", b"b"])
    note = client.checkpoint().note
    stranger = Cosigner.generate("stranger.example/w")
    assert add(cosign_checkpoint(note, stranger)) == grpc.StatusCode.PERMISSION_DENIED
    assert add(note) == grpc.StatusCode.PERMISSION_DENIED  # no cosignature at all
    assert add(b"") == grpc.StatusCode.INVALID_ARGUMENT
    assert add(b"garbage") == grpc.StatusCode.INVALID_ARGUMENT
    # A cosignature line by w1 that does not verify (copied from another checkpoint).
    other = client.append(b"c").checkpoint.note
    line = cosign_checkpoint(other, W1).split(b"\n\n")[1].split(b"\n")[1] + b"\n"
    assert add(note + line) == grpc.StatusCode.INVALID_ARGUMENT
    # A checkpoint not signed by this log.
    forged = sign_checkpoint(
        Checkpoint(log.origin, 2, b"\x00" * 32), Ed25519Signer.generate(log.origin)
    )
    assert add(cosign_checkpoint(forged, W1)) == grpc.StatusCode.INVALID_ARGUMENT
    # Signed by the log's key, but not its tree (a fork made with the stolen key).
    fork = sign_checkpoint(Checkpoint(log.origin, 2, b"\x01" * 32), log.server.signer)
    assert add(cosign_checkpoint(fork, W1)) == grpc.StatusCode.INVALID_ARGUMENT
    beyond = sign_checkpoint(Checkpoint(log.origin, 99, b"\x01" * 32), log.server.signer)
    assert add(cosign_checkpoint(beyond, W1)) == grpc.StatusCode.OUT_OF_RANGE
    # Accepted: lines by unknown keys are dropped from what the log serves.
    accepted = cosign_checkpoint(cosign_checkpoint(other, W1), stranger)
    assert add(accepted) == grpc.StatusCode.OK
    served = stub.GetCheckpoint(log_pb2.GetCheckpointRequest(witnessed=True)).checkpoint
    assert stranger.name.encode() not in served and W1.name.encode() in served
    # A witness never goes back: an older cosignature does not replace a newer one.
    assert add(cosign_checkpoint(note, W1)) == grpc.StatusCode.OK
    served = stub.GetCheckpoint(log_pb2.GetCheckpointRequest(witnessed=True)).checkpoint
    assert served.startswith(other.split(b"\n\n")[0])
    # The witnessed checkpoint with a consistency proof, and beyond its size.
    answer = stub.GetCheckpoint(log_pb2.GetCheckpointRequest(witnessed=True, first_tree_size=2))
    assert len(answer.consistency_proof) == 1
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCheckpoint(log_pb2.GetCheckpointRequest(witnessed=True, first_tree_size=4))
    assert caught.value.code() == grpc.StatusCode.OUT_OF_RANGE
    # A log configured with no witnesses says so.
    plain = open_log().stub()
    with pytest.raises(grpc.RpcError) as caught:
        plain.AddCosignature(log_pb2.AddCosignatureRequest(checkpoint=accepted))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "--witness-vkey" in (caught.value.details() or "")


def test_witness_policy_rules() -> None:
    signer = Ed25519Signer.generate("example.com/log")
    note = sign_checkpoint(Checkpoint("example.com/log", 5, b"\x07" * 32), signer)
    both = cosign_checkpoint(cosign_checkpoint(note, W1, 1000), W2, 2000)
    policy = WitnessPolicy.from_vkeys([W1.verifier().vkey, W2.verifier().vkey])
    assert [c.name for c in policy.check(both)] == [W1.name, W2.name]
    with pytest.raises(WitnessPolicyError, match=W2.name):
        policy.check(cosign_checkpoint(note, W1))
    # Too old to count.
    fresh = WitnessPolicy.from_vkeys([W1.verifier(), W2.verifier()], 2, max_age_s=500)
    with pytest.raises(WitnessPolicyError) as caught:
        fresh.check(both, now=2400)
    assert caught.value.stale == (f"{W1.name}+{W1.key_hash:08x}",)
    assert len(fresh.check(both, now=1400)) == 2
    # A line by a listed witness that does not verify is an error, not a missing vote.
    bad = both.replace(both.split(b"\n")[-2][-8:], b"AAAAAAA=")
    with pytest.raises(InvalidSignatureError):
        policy.check(bad)
    for args in [([], 1), ([W1.verifier()], 2), ([W1.verifier()], 0), ([W1.verifier()] * 2, 1)]:
        with pytest.raises(ValueError):
            WitnessPolicy(*args)  # type: ignore[arg-type]


# --- C2SP tlog-witness --------------------------------------------------------------------------
@pytest.fixture
def http_witnesses(tmp_path: Path, witnessed_log: RunningLog) -> Iterator[list[WitnessHTTPServer]]:
    servers = []
    for w in (W1, W2):
        witness = Witness(
            w, {witnessed_log.origin: [witnessed_log.verifier]}, tmp_path / w.name.split(".")[0]
        )
        servers.append(WitnessHTTPServer(witness).start())
    yield servers
    for s in servers:
        s.stop()
        s.witness.close()


def test_tlog_witness_protocol(
    http_witnesses: list[WitnessHTTPServer], witnessed_log: RunningLog
) -> None:
    server = http_witnesses[0]
    client = witnessed_log.client()
    client.append_batch([b"a", b"b"])
    first = client.checkpoint()
    # First contact: old 0, no proof.
    lines = add_checkpoint(server.url, AddCheckpointRequest(0, (), first.note))
    assert lines.startswith("\u2014 w1.example/witness ".encode()) and lines.endswith(b"\n")
    assert verify_cosignatures(first.note + lines, [W1.verifier()])
    # The same size again needs the same root (and cosigns again).
    assert add_checkpoint(server.url, AddCheckpointRequest(2, (), first.note))
    second = client.append_batch([b"c", b"d", b"e"]).checkpoint
    # A stale old size: 409 with the witness's size.
    with pytest.raises(WitnessError) as caught:
        add_checkpoint(server.url, AddCheckpointRequest(0, (), second.note))
    assert caught.value.status == 409 and caught.value.body == b"2\n"
    assert caught.value.content_type == SIZE_CONTENT_TYPE
    # A bad proof: 422, and the witness keeps the request as possible evidence.
    proof = client.consistency_proof(first, second)
    bad = (proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:])
    with pytest.raises(WitnessError) as caught:
        add_checkpoint(server.url, AddCheckpointRequest(2, bad, second.note))
    assert caught.value.status == 422
    assert list((server.witness.state_dir / "rejected").iterdir())
    assert add_checkpoint(server.url, AddCheckpointRequest(2, proof, second.note))
    assert server.witness.latest(witnessed_log.origin) == second.note
    # Unknown origin: 404; not signed by the log: 403; old > size: 400; malformed: 400.
    other = Ed25519Signer.generate("other.example/log")
    unknown = sign_checkpoint(Checkpoint("other.example/log", 1, b"\x00" * 32), other)
    forged = sign_checkpoint(Checkpoint(witnessed_log.origin, 6, b"\x00" * 32), other)
    for request, status in [
        (AddCheckpointRequest(0, (), unknown), 404),
        (AddCheckpointRequest(5, (), forged), 403),
        (AddCheckpointRequest(9, (), second.note), 400),
    ]:
        with pytest.raises(WitnessError) as caught:
            add_checkpoint(server.url, request)
        assert caught.value.status == status, caught.value
    for body in [b"", b"old 01\n\n" + second.note, b"old 5\nnot base64\n\n" + second.note]:
        req = urllib.request.Request(server.url, data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(req, timeout=5)
        assert http_error.value.code == 400


@pytest.mark.slow
def test_log_pushes_to_tlog_witnesses(open_log: OpenLog, tmp_path: Path) -> None:
    origin = "sealog.localhost/log"
    key = Ed25519Signer.generate(origin)
    key_file = tmp_path / "log.key"
    write_private_key_file(key_file, key.skey)
    servers = [
        WitnessHTTPServer(Witness(w, {origin: [key.verifier()]}, tmp_path / w.name)).start()
        for w in (W1, W2)
    ]
    try:
        log = open_log(
            key_file=key_file,
            new_log=True,
            witnesses=[W1.verifier(), W2.verifier()],
            push_witnesses=[s.url for s in servers],
            push_witness_interval_s=0.05,
        )
        client = log.client()
        strict = log.client(witnesses=[W1.verifier(), W2.verifier()])
        for n in range(1, 4):
            client.append_batch([b"event %d" % i for i in range(n)])
            size = client.checkpoint().checkpoint.size
            deadline = time.monotonic() + 10
            while True:
                try:
                    if strict.checkpoint().checkpoint.size == size:
                        break
                except (WitnessPolicyError, grpc.RpcError):
                    pass
                assert time.monotonic() < deadline, "witnesses did not cosign in time"
                time.sleep(0.02)
        assert servers[0].witness.latest(origin) is not None
    finally:
        for s in servers:
            s.stop()
            s.witness.close()


@pytest.mark.slow
def test_witness_serve_and_keygen_cli(tmp_path: Path, witnessed_log: RunningLog) -> None:
    made = run_sealog("keygen", "w1.example/cli", "--witness", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    vkey = re.search(r"verifier key: (\S+)", made.stdout)
    assert vkey is not None and "+" in vkey.group(1)
    assert base64.b64decode(vkey.group(1).split("+", 2)[2])[0] == 0x04
    proc = subprocess.Popen(
        [
            *sealog_command(),
            "witness",
            "serve",
            "--key",
            "w1.example_cli.key",
            "--log",
            witnessed_log.verifier.vkey,
            "--state-dir",
            "wstate",
            "--listen",
            "127.0.0.1:0",
            "--header-timeout",
            "5",
            "--max-requests",
            "8",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"serving (http://\S+)", line)
        assert match, line + proc.stderr.read() if proc.stderr else line
        witnessed_log.client().append(b"hello")
        note = witnessed_log.client().checkpoint().note
        lines = add_checkpoint(match.group(1), AddCheckpointRequest(0, (), note))
        assert b"w1.example/cli" in lines
    finally:
        proc.terminate()
        proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert proc.returncode == 0


# --- witness serve and push under load and hostile clients -----------------------------------
def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.02)


def _read_until_closed(sock: socket.socket, seconds: float) -> bytes:
    """What the server sends until it closes the connection (a reset counts as closed)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _http(
    url: str, body: bytes | None, method: str = "POST"
) -> tuple[int, str, bytes, dict[str, str]]:
    """One request with urllib: status, content type, body, headers (errors too)."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return (
                response.status,
                response.headers["Content-Type"],
                response.read(),
                dict(response.headers),
            )
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read(), dict(e.headers)


class CountingWitness(Witness):
    """A witness that counts add-checkpoint calls, and can be made to hold them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self.release = threading.Event()
        self.release.set()

    def add_checkpoint(self, body: bytes) -> bytes:
        self.calls += 1
        self.release.wait(30)
        return super().add_checkpoint(body)


@pytest.mark.slow
def test_witness_serve_times_out_300_stalled_uploads(
    tmp_path: Path, witnessed_log: RunningLog
) -> None:
    """300 connections that send part of a request and stop hold no thread, and are dropped.

    The old stdlib server gave each a thread, forever (302 threads for 300).
    """
    limits = HttpLimits(header_timeout_s=3, body_timeout_s=3, max_connections=1000)
    witness = Witness(W1, {witnessed_log.origin: [witnessed_log.verifier]}, tmp_path / "w")
    server = WitnessHTTPServer(witness, limits=limits).start()
    stalled: list[tuple[socket.socket, bool]] = []
    try:
        witnessed_log.client().append(b"a")
        note = witnessed_log.client().checkpoint().note
        threads_before = threading.active_count()
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            in_body = i % 2 == 1
            if in_body:  # the whole head, and 6 of the 1,000 body bytes it announced
                sock.sendall(
                    b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 1000\r\n\r\n"
                    b"old 0\n"
                )
            else:  # half a head
                sock.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Len")
            stalled.append((sock, in_body))
        # A real request is served meanwhile, and the stalled ones cost no threads.
        assert add_checkpoint(server.url, AddCheckpointRequest(0, (), note))
        assert threading.active_count() <= threads_before + 2  # + one worker thread
        # Each is dropped once its clock runs out: a stalled body with 408.
        for sock, in_body in stalled:
            answer = _read_until_closed(sock, 30)
            if in_body:
                assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            else:
                assert answer == b""
        _wait_for(lambda: server.call(lambda: len(server.connections)) == 0, "all closed")
        assert server.in_flight == 0
    finally:
        for sock, _ in stalled:
            sock.close()
        server.stop()
        witness.close()


def test_witness_serve_bounds_connections_and_concurrent_requests(
    tmp_path: Path, witnessed_log: RunningLog
) -> None:
    limits = HttpLimits(max_connections=6, max_requests=2, retry_after_s=3)
    witness = CountingWitness(W1, {witnessed_log.origin: [witnessed_log.verifier]}, tmp_path / "w")
    server = WitnessHTTPServer(witness, limits=limits).start()
    idle: list[socket.socket] = []
    try:
        witnessed_log.client().append(b"a")
        body = AddCheckpointRequest(0, (), witnessed_log.client().checkpoint().note).to_bytes()
        # Two requests held in the witness: a third is answered 503 with Retry-After.
        witness.release.clear()
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(_http, server.url, body) for _ in range(2)]
            _wait_for(lambda: witness.calls == 2, "two requests in the witness")
            status, content_type, text, headers = _http(server.url, body)
            assert (status, headers.get("Retry-After")) == (503, "3"), (status, text)
            assert content_type == "text/plain; charset=utf-8"
            witness.release.set()
            statuses = sorted(f.result()[0] for f in held)
        # The spec's per-origin lock: one is cosigned, the other learns the new size.
        assert statuses == [200, 409]
        # Six connections open (once urllib's, closed after each request, are gone): a
        # seventh is refused with 503 at once, before it sends anything.
        for _ in range(6):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=10))
        _wait_for(lambda: server.call(lambda: len(server.connections)) == 6, "six open")
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        answer = _read_until_closed(extra, 10)
        extra.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 3\r\n" in answer
        idle.pop().close()
        _wait_for(lambda: server.call(lambda: len(server.connections)) == 5, "one closed")
        assert _http(server.url, b"garbage")[0] == 400
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        witness.close()


def test_witness_serve_answers_like_the_stdlib_server_did(
    http_witnesses: list[WitnessHTTPServer],
) -> None:
    """The statuses, bodies and content types besides the spec's are what they were."""
    server = http_witnesses[0]
    base = f"http://127.0.0.1:{server.port}"
    text = "text/plain; charset=utf-8"
    assert _http(base + "/other", b"old 0\n\n")[:3] == (404, text, b"not found\n")
    assert _http(server.url, None, "GET")[:3] == (405, text, b"use POST <prefix>/add-checkpoint\n")
    assert _http(server.url, b"x" * (MAX_REQUEST_BYTES + 1))[:3] == (
        413,
        text,
        b"request too large\n",
    )
    # No Content-Length (a chunked body): 411.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\nx\r\n0\r\n\r\n"
        )
        assert _read_until_closed(sock, 10).startswith(b"HTTP/1.1 411 ")


@pytest.mark.slow
def test_push_witness_sends_a_bounded_number_of_requests_for_300_appends(
    open_log: OpenLog, tmp_path: Path
) -> None:
    """300 appends in a second or two: a handful of requests, not one per commit (197 before).

    And the newest checkpoint is still cosigned once the interval has passed, by
    both witnesses (each round sends them the same one), so a 2-of-2 policy is met.
    """
    origin = "sealog.localhost/log"
    key = Ed25519Signer.generate(origin)
    key_file = tmp_path / "log.key"
    write_private_key_file(key_file, key.skey)
    witnesses = [
        CountingWitness(w, {origin: [key.verifier()]}, tmp_path / w.name) for w in (W1, W2)
    ]
    servers = [WitnessHTTPServer(w).start() for w in witnesses]
    interval = 1.0
    try:
        started = time.monotonic()
        log = open_log(
            key_file=key_file,
            new_log=True,
            witnesses=[W1.verifier(), W2.verifier()],
            push_witnesses=[s.url for s in servers],
            push_witness_interval_s=interval,
        )
        client = log.client()
        for i in range(300):
            client.append(b"event %d" % i)
        elapsed = time.monotonic() - started
        # A round per interval (and one at start), each of one request or two after a 409.
        rounds = 2 + elapsed / interval
        for witness in witnesses:
            assert witness.calls <= 2 * rounds, (witness.calls, elapsed)
        final = client.checkpoint()
        assert final.checkpoint.size == 300
        for witness in witnesses:

            def pushed(w: CountingWitness = witness) -> bool:
                return w.latest(origin) == final.note

            _wait_for(pushed, "size 300 pushed")
        both = log.client(witnesses=[W1.verifier(), W2.verifier()])

        def witnessed_by_both() -> bool:
            try:
                return both.checkpoint().checkpoint.size == 300
            except WitnessPolicyError:  # the second cosignature is being stored
                return False

        _wait_for(witnessed_by_both, "size 300 witnessed by both")
    finally:
        for server in servers:
            server.stop()
            server.witness.close()


@pytest.mark.slow
def test_push_witness_times_out_a_witness_that_never_answers(log: RunningLog) -> None:
    """A witness that accepts and never answers costs one timeout per round, then a retry."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/add-checkpoint"
    pusher = WitnessPusher(log.server.log, [url], interval_s=0.1, timeout_s=0.5, retry_s=0.2)
    try:
        pusher.start()
        _wait_for(lambda: pusher.requests_sent[url] >= 3, "three requests, each timed out")
    finally:
        pusher.stop()
        listener.close()
        for sock in accepted:
            sock.close()
    assert not pusher._thread.is_alive()
