"""Idempotency keys: a retried append never makes a second leaf, and never answers wrongly."""

from __future__ import annotations

import time

import grpc
import pytest
from e2e_support import OpenLog, RunningLog, TamperInterceptor, run_threads

from sealog.client.log_client import LogClient
from sealog.server.config import Settings
from sealog.v1 import log_pb2


def size_of(client: LogClient) -> int:
    return client.checkpoint().checkpoint.size


def wait_for_size(client: LogClient, size: int, timeout: float = 10.0) -> None:
    """Poll the checkpoint until the log reaches ``size`` (the server commits on its own)."""
    deadline = time.monotonic() + timeout
    while size_of(client) < size:
        assert time.monotonic() < deadline, f"the log never reached size {size}"
        time.sleep(0.01)


def payloads_in_log(client: LogClient) -> list[bytes]:
    return [e.parse().payload for e in client.entries()]


def test_same_key_twice_is_one_leaf(log: RunningLog, client: LogClient) -> None:
    first = client.append(b"rotate cert svc/a", idempotency_key="evt-0001")
    client.append(b"something else")

    again = client.append(b"rotate cert svc/a", idempotency_key="evt-0001")

    assert not first.duplicate
    assert again.duplicate
    assert again.index == first.index == 0
    assert again.leaf == first.leaf
    assert again.checkpoint.checkpoint.size == 2  # the log did not grow
    again.verify(log.verifier)
    assert payloads_in_log(client) == [b"rotate cert svc/a", b"something else"]


def test_retry_after_a_lost_response_is_one_leaf(log: RunningLog, client: LogClient) -> None:
    """The server commits, the answer is lost (DEADLINE_EXCEEDED), the client retries."""
    client.append(b"before")
    flaky = TamperInterceptor(drop_first=["Append"])
    retrying = log.client_with(flaky)

    receipt = retrying.append(b"exactly once")

    assert flaky.calls["Append"] == 2, "the client did not retry"
    assert len(flaky.dropped) == 1
    lost = flaky.dropped[0].entries[0]
    assert not lost.duplicate  # the first attempt did append ...
    assert receipt.duplicate  # ... and the retry found it
    assert (receipt.index, receipt.leaf) == (lost.index, lost.leaf)
    receipt.verify(log.verifier)
    assert payloads_in_log(client) == [b"before", b"exactly once"]


@pytest.mark.slow
@pytest.mark.parametrize("retry_before_commit", [False, True], ids=["after", "during"])
def test_retry_after_a_client_timeout_is_one_leaf(
    open_log: OpenLog, retry_before_commit: bool
) -> None:
    """The caller's deadline passes while its append is still queued (the sequencer
    holds each batch open for 1.5 s); the server commits it anyway. Retrying with the
    same key, after or during that commit, leaves one leaf. The deadline, 0.5 s, leaves
    the request time to reach the server even on a busy machine."""
    log = open_log(settings=Settings(batch_max_wait_ms=1500))
    client = log.client()
    request = log_pb2.AppendRequest(
        entries=[log_pb2.AppendEntry(payload=b"maybe twice?", idempotency_key="deadline-1")]
    )
    with pytest.raises(grpc.RpcError) as caught:
        log.stub().Append(request, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    if not retry_before_commit:
        wait_for_size(client, 1)

    receipt = client.append(b"maybe twice?", idempotency_key="deadline-1")

    assert receipt.duplicate
    assert receipt.index == 0
    receipt.verify(log.verifier)
    assert payloads_in_log(client) == [b"maybe twice?"]


@pytest.mark.slow
def test_a_commit_slower_than_the_append_timeout(open_log: OpenLog) -> None:
    """The server gives up waiting (UNAVAILABLE, "retry with the same keys") but still
    commits; the retry with the same key is a duplicate, so the event lands once."""
    log = open_log(settings=Settings(append_timeout_s=0.05, batch_max_wait_ms=300))
    stub = log.stub()
    request = log_pb2.AppendRequest(
        entries=[log_pb2.AppendEntry(payload=b"slow commit", idempotency_key="slow-1")]
    )
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            stub.Append(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retry with the same idempotency keys" in (caught.value.details() or "")
    # The sequencer commits in order: once a later marker is in, both attempts are done.
    marker = log_pb2.AppendRequest(entries=[log_pb2.AppendEntry(payload=b"marker")])
    with pytest.raises(grpc.RpcError):
        stub.Append(marker, timeout=10)
    client = log.client()
    wait_for_size(client, 2)

    assert payloads_in_log(client) == [b"slow commit", b"marker"]


def test_keys_are_per_entry_in_a_batch(log: RunningLog, client: LogClient) -> None:
    client.append_batch([b"a", b"b"], idempotency_keys=["key-a", "key-b"])

    result = client.append_batch(
        [b"c", b"a", b"d", b"b"], idempotency_keys=["key-c", "key-a", None, "key-b"]
    )

    assert result.duplicates == (False, True, False, True)
    assert [e.index for e in result.entries] == [2, 0, 3, 1]
    for receipt in result.receipts():
        receipt.verify(log.verifier)
    assert payloads_in_log(client) == [b"a", b"b", b"c", b"d"]


def test_a_key_repeated_inside_one_request(log: RunningLog, client: LogClient) -> None:
    result = client.append_batch([b"x", b"y", b"x"], idempotency_keys=["kx", "ky", "kx"])

    assert result.duplicates == (False, False, True)
    assert [e.index for e in result.entries] == [0, 1, 0]
    assert result.entries[2].leaf == result.entries[0].leaf
    for receipt in result.receipts():
        receipt.verify(log.verifier)
    assert payloads_in_log(client) == [b"x", b"y"]


def test_a_key_reused_for_another_event_is_already_exists(client: LogClient) -> None:
    client.append(b"deploy v1", idempotency_key="release")

    with pytest.raises(grpc.RpcError) as info:
        client.append(b"deploy v2", idempotency_key="release")

    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'release'" in (info.value.details() or "")
    assert "new event needs a new key" in (info.value.details() or "")
    assert payloads_in_log(client) == [b"deploy v1"]


def test_a_key_reused_for_another_event_inside_one_request_is_already_exists(
    client: LogClient,
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        client.append_batch([b"x", b"y", b"z"], idempotency_keys=["k1", "k2", "k1"])

    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "entries[2].idempotency_key 'k1'" in (info.value.details() or "")
    assert payloads_in_log(client) == []  # the request is atomic: nothing of it landed
    result = client.append_batch([b"x", b"y", b"x"], idempotency_keys=["k1", "k2", "k1"])
    assert result.duplicates == (False, False, True)


def test_concurrent_retries_of_one_event_are_one_leaf(log: RunningLog) -> None:
    clients = [log.client() for _ in range(4)]
    answers: list[tuple[int, bytes, bool]] = []

    def work(i: int) -> None:
        r = clients[i % 4].append(b"racing retries", idempotency_key="race-1")
        answers.append((r.index, r.leaf, r.duplicate))

    run_threads(16, work)

    assert {(index, leaf) for index, leaf, _ in answers} == {answers[0][:2]}
    assert sum(not dup for _, _, dup in answers) == 1
    assert payloads_in_log(clients[0]) == [b"racing retries"]


@pytest.mark.slow
def test_keys_survive_a_restart(open_log: OpenLog) -> None:
    first = open_log()
    receipt = first.client().append(b"before restart", idempotency_key="persist-1")
    first.stop()

    again = open_log(data_dir=first.data_dir)
    retry = again.client().append(b"before restart", idempotency_key="persist-1")

    assert retry.duplicate
    assert (retry.index, retry.leaf) == (receipt.index, receipt.leaf)
    assert payloads_in_log(again.client()) == [b"before restart"]
