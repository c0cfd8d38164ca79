"""The client honours the log's RetryInfo: over a quota, every event lands, once.

The log answers an over-quota append RESOURCE_EXHAUSTED with a
google.rpc.RetryInfo saying when to come back (server/servicer.py, ``_abort``).
The client waits that long (plus jitter), within its bounds, and sends the same
request again, so the idempotency keys make a retry of a committed append a
duplicate and never a second copy.
"""

from __future__ import annotations

import datetime
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from dishonest_log import FakeLog, FakeLogServer, make_leaves
from e2e_support import FinishedCall, OpenLog, RunningLog, run_sealog
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.retry import RetryPolicy, retry_delay
from sealog.server.policy import hash_api_key, new_api_key
from sealog.v1 import log_pb2


# --- errors as a log sends them --------------------------------------------------------
class StatusError(FinishedCall):
    """An RPC error with a status code and, optionally, a RetryInfo in its details."""

    def __init__(self, code: grpc.StatusCode, retry_after_s: float | None = None) -> None:
        self._code = code
        self._details = f"{code.name} from the test"
        self._trailers: tuple[tuple[str, bytes], ...] = ()
        if retry_after_s is not None:
            info = error_details_pb2.RetryInfo()
            info.retry_delay.FromTimedelta(datetime.timedelta(seconds=retry_after_s))
            detail = any_pb2.Any()
            detail.Pack(info)
            status = status_pb2.Status(code=code.value[0], message=self._details, details=[detail])
            self._trailers = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> Any:
        return self._trailers


def test_retry_delay_reads_the_retry_info_a_log_sends() -> None:
    assert retry_delay(StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.25)) == 1.25
    assert retry_delay(StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED)) is None
    assert grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] == code_pb2.RESOURCE_EXHAUSTED


# --- the policy ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_a_retry_never_comes_back_sooner_than_the_log_asked(seed: int) -> None:
    policy = RetryPolicy()
    rng = random.Random(seed)
    for code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        wait = policy.wait_before_retry(StatusError(code, 2.0), 1, 0.0, rng)
        assert wait is not None
        assert 2.0 <= wait <= 2.0 * (1 + policy.jitter)


def test_waits_have_jitter() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    asked = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, 1.0)
    backoff = StatusError(grpc.StatusCode.UNAVAILABLE)
    assert len({policy.wait_before_retry(asked, 1, 0.0, rng) for _ in range(10)}) == 10
    assert len({policy.wait_before_retry(backoff, 1, 0.0, rng) for _ in range(10)}) == 10


def test_resource_exhausted_without_retry_info_is_not_retried() -> None:
    # An oversize entry or a request over the quota's burst: waiting does not help.
    policy = RetryPolicy()
    assert policy.wait_before_retry(StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED), 1, 0.0) is None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.DATA_LOSS,
    ],
)
def test_errors_waiting_cannot_fix_are_not_retried(code: grpc.StatusCode) -> None:
    assert RetryPolicy().wait_before_retry(StatusError(code, 1.0), 1, 0.0) is None


def test_retrying_is_bounded_by_attempts_delay_and_total_time() -> None:
    policy = RetryPolicy(max_attempts=3, max_delay_s=10.0, max_total_s=15.0)
    asked = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, 6.0)
    assert policy.wait_before_retry(asked, 1, 0.0) is not None
    assert policy.wait_before_retry(asked, 3, 0.0) is None  # the third attempt was the last
    assert policy.wait_before_retry(asked, 2, 9.0) is None  # would wait past 15 s in all
    too_long = StatusError(grpc.StatusCode.RESOURCE_EXHAUSTED, 11.0)
    assert policy.wait_before_retry(too_long, 1, 0.0) is None  # over max_delay_s: raise now
    assert RetryPolicy.never().wait_before_retry(asked, 1, 0.0) is None


def test_backoff_without_retry_info_grows_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=20, jitter=0.0, max_total_s=1000)
    waits = [
        policy.wait_before_retry(StatusError(grpc.StatusCode.UNAVAILABLE), n, 0.0)
        for n in range(1, 10)
    ]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_attempts": 0},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 6.0, "max_backoff_s": 5.0},
        {"max_delay_s": -1},
        {"jitter": 1.5},
    ],
)
def test_a_policy_out_of_bounds_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**bad)  # type: ignore[arg-type]


# --- against a real log with a quota -----------------------------------------------------
def quota_log(
    open_log: OpenLog, tmp_path: Path, rate: float, burst: float
) -> tuple[RunningLog, str]:
    """A log whose identity ``ci-bot`` (an API key) may append ``rate`` entries/s."""
    token = new_api_key()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'public_read = true\n[[identity]]\nname = "ci-bot"\nroles = ["append", "read"]\n'
        f"appends_per_second = {rate}\nburst = {burst}\n"
        f'[[api_key]]\nidentity = "ci-bot"\nsha256 = "{hash_api_key(token)}"\n'
    )
    return open_log(policy_file=policy), token


def payloads_in(log: RunningLog) -> list[bytes]:
    with log.client() as client:
        return [e.parse().payload for e in client.entries()]


@pytest.mark.slow
def test_cli_append_over_a_quota_waits_as_told_and_lands_every_event_once(
    open_log: OpenLog, tmp_path: Path
) -> None:
    # The reproduction: 1 append/s, three one-event requests. It appended one event
    # and exited 1 (RESOURCE_EXHAUSTED).
    log, token = quota_log(open_log, tmp_path, rate=1, burst=1)

    result = run_sealog(
        "append", "--batch", "1", "--json", "--target", log.target, "--vkey", log.verifier.vkey,
        "--api-key", token, stdin="a\nb\nc\n", cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert payloads_in(log) == [b"a", b"b", b"c"]


@pytest.mark.slow
def test_log_client_over_a_quota_lands_every_event_once(open_log: OpenLog, tmp_path: Path) -> None:
    log, token = quota_log(open_log, tmp_path, rate=4, burst=2)
    events = [f"event {i}".encode() for i in range(8)]

    with log.client(api_key=token) as client:
        receipts = [client.append(e) for e in events[:2]]
        receipts += client.append_batch(events[2:4]).receipts()  # a whole burst at once
        receipts += [client.append(e) for e in events[4:]]

    assert [r.index for r in receipts] == list(range(8))
    assert not any(r.duplicate for r in receipts)
    assert payloads_in(log) == events


def test_a_retry_delay_over_the_client_maximum_is_raised_not_waited(
    open_log: OpenLog, tmp_path: Path
) -> None:
    log, token = quota_log(open_log, tmp_path, rate=0.01, burst=1)  # next token in 100 s
    with log.client(api_key=token) as client:
        client.append(b"the only one for a while")
        with pytest.raises(grpc.RpcError) as caught:
            client.append(b"too soon")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert payloads_in(log) == [b"the only one for a while"]


class _UnavailableAfterCommit(grpc.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """The first Append reaches the log and commits; its answer is replaced by UNAVAILABLE
    with a RetryInfo, as when a commit outlasts the server's append timeout."""

    def __init__(self) -> None:
        self.appends = 0

    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        outcome = continuation(client_call_details, request)
        if client_call_details.method.endswith("/Append"):
            self.appends += 1
            if self.appends == 1:
                outcome.result()  # committed
                raise StatusError(grpc.StatusCode.UNAVAILABLE, 0.2)
        return outcome


@pytest.mark.slow
def test_a_retry_after_a_lost_answer_is_a_duplicate_not_a_second_copy(log: RunningLog) -> None:
    interceptor = _UnavailableAfterCommit()
    channel = grpc.intercept_channel(grpc.insecure_channel(log.target), interceptor)
    try:
        client = LogClient(log.target, log.verifier, channel=channel, timeout=10)
        result = client.append_batch([b"one", b"two"])
    finally:
        channel.close()

    assert interceptor.appends == 2
    assert result.duplicates == (True, True)
    assert [e.index for e in result.entries] == [0, 1]
    assert payloads_in(log) == [b"one", b"two"]


# --- GetEntries streams ------------------------------------------------------------------
class FlakyStreamLog(FakeLog):
    """Fails the first GetEntries stream with UNAVAILABLE (and a RetryInfo) after two pages."""

    def __init__(self, signer: Ed25519Signer, leaves: list[bytes]) -> None:
        super().__init__(signer, leaves)
        self.requests: list[tuple[int, int]] = []

    def GetEntries(  # noqa: N802
        self, request: log_pb2.GetEntriesRequest, context: grpc.ServicerContext
    ) -> Any:
        self.requests.append((request.start, request.end))
        for n, page in enumerate(super().GetEntries(request, context)):
            if len(self.requests) == 1 and n == 2:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the log restarts")
            yield page


@pytest.fixture
def flaky() -> Iterator[tuple[FakeLogServer, FlakyStreamLog, str]]:
    signer = Ed25519Signer.generate("flaky.example/log")
    fake = FlakyStreamLog(signer, make_leaves([f"event {i}".encode() for i in range(30)]))
    server = FakeLogServer(fake)
    try:
        yield server, fake, signer.verifier().vkey
    finally:
        server.stop()


def test_entries_resume_after_a_failed_stream_without_skipping_or_repeating(
    flaky: tuple[FakeLogServer, FlakyStreamLog, str],
) -> None:
    server, fake, vkey = flaky
    with LogClient(server.target, vkey, timeout=10) as client:
        indices = [e.index for e in client.entries(0, 30)]

    assert indices == list(range(30))
    assert fake.requests == [(0, 30), (14, 30)]  # resumed after the two pages taken (7 each)
