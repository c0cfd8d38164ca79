"""Every bad request gets the right gRPC status and a message naming field, value and rule.

These go through the raw generated stub, so nothing on the client side
filters or rewrites what the server answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import OpenLog, RunningLog
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sealog.client.hashing import leaf_hash
from sealog.server.config import Settings
from sealog.v1 import log_pb2

SIZE = 6  # leaves in the log under test
LIMITS = Settings(
    max_entry_bytes=1024,
    max_request_entries=10,
    max_idempotency_key_bytes=32,
    max_page_size=50,
    default_page_size=4,
    max_entries_per_request_range=100,
)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


def _make_log(data_dir: Path) -> RunningLog:
    running = RunningLog(data_dir, settings=LIMITS)
    try:
        running.client().append_batch([f"e{i}".encode() for i in range(SIZE)])
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLog]:
    """A log of SIZE leaves with small limits, shared by the read-only tests of this module."""
    running = _make_log(tmp_path_factory.mktemp("errors"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(small_log: RunningLog) -> Any:
    return small_log.stub()


@pytest.fixture(scope="module")
def fuzz_stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A log of its own for random requests (their appends must not disturb the others)."""
    running = _make_log(tmp_path_factory.mktemp("fuzz"))
    yield running.stub()
    running.stop()


@pytest.fixture(scope="module")
def leaf_hashes(small_log: RunningLog) -> list[bytes]:
    return [e.leaf_hash for e in small_log.client().entries()]


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """Run a call (draining a stream) that must fail; return its error."""
    with pytest.raises(grpc.RpcError) as caught:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    return caught.value


def expect(call: Callable[[], object], code: grpc.StatusCode, *fragments: str) -> str:
    error = rpc_error(call)
    details = error.details() or ""
    assert error.code() == code, f"{error.code()} {details!r}"
    for fragment in fragments:
        assert fragment in details, f"{fragment!r} not in {details!r}"
    return details


# --- proofs by index ---------------------------------------------------------------
@pytest.mark.parametrize("rpc", ["GetInclusionProof", "GetEntryAndProof"])
def test_tree_size_zero(stub: Any, rpc: str) -> None:
    request = getattr(log_pb2, f"{rpc}Request")(leaf_index=0, tree_size=0)
    expect(
        lambda: getattr(stub, rpc)(request, timeout=10),
        INVALID,
        f"{rpc}Request.tree_size",
        "tree_size: 0, want > 0",
    )


@pytest.mark.parametrize("rpc", ["GetInclusionProof", "GetEntryAndProof"])
@pytest.mark.parametrize(("index", "size"), [(3, 3), (4, 3), (2**64 - 1, 5)])
def test_leaf_index_not_below_tree_size(stub: Any, rpc: str, index: int, size: int) -> None:
    request = getattr(log_pb2, f"{rpc}Request")(leaf_index=index, tree_size=size)
    expect(
        lambda: getattr(stub, rpc)(request, timeout=10),
        INVALID,
        f"{rpc}Request.leaf_index: {index}, want < tree_size {size}",
    )


@pytest.mark.parametrize("rpc", ["GetInclusionProof", "GetEntryAndProof"])
def test_tree_size_beyond_the_log(stub: Any, rpc: str) -> None:
    request = getattr(log_pb2, f"{rpc}Request")(leaf_index=0, tree_size=SIZE + 1)
    expect(
        lambda: getattr(stub, rpc)(request, timeout=10),
        OUT_OF_RANGE,
        f"{rpc}Request.tree_size: {SIZE + 1}",
        f"the log's size is {SIZE}",
    )


@pytest.mark.parametrize("rpc", ["GetInclusionProof", "GetEntryAndProof"])
def test_tree_size_beyond_any_log(stub: Any, rpc: str) -> None:
    request = getattr(log_pb2, f"{rpc}Request")(leaf_index=0, tree_size=2**64 - 1)
    expect(
        lambda: getattr(stub, rpc)(request, timeout=10),
        INVALID,
        f"{rpc}Request.tree_size: {2**64 - 1}, want < 2^63",
    )


# --- proofs by hash ----------------------------------------------------------------
def test_unknown_leaf_hash(stub: Any) -> None:
    unknown = leaf_hash(b"never logged")
    request = log_pb2.GetInclusionProofByHashRequest(leaf_hash=unknown, tree_size=SIZE)
    expect(
        lambda: stub.GetInclusionProofByHash(request, timeout=10),
        grpc.StatusCode.NOT_FOUND,
        unknown.hex(),
        f"tree of size {SIZE}",
    )


def test_leaf_hash_beyond_the_tree_size_asked_is_not_found(
    stub: Any, leaf_hashes: list[bytes]
) -> None:
    request = log_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf_hashes[4], tree_size=4)
    expect(lambda: stub.GetInclusionProofByHash(request, timeout=10), grpc.StatusCode.NOT_FOUND)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_leaf_hash_of_wrong_length(stub: Any, length: int) -> None:
    request = log_pb2.GetInclusionProofByHashRequest(leaf_hash=b"\x07" * length, tree_size=SIZE)
    expect(
        lambda: stub.GetInclusionProofByHash(request, timeout=10),
        INVALID,
        f"GetInclusionProofByHashRequest.leaf_hash: {length} bytes, want 32 bytes",
    )


def test_by_hash_tree_size_zero_and_beyond(stub: Any, leaf_hashes: list[bytes]) -> None:
    zero = log_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf_hashes[0], tree_size=0)
    expect(
        lambda: stub.GetInclusionProofByHash(zero, timeout=10),
        INVALID,
        "GetInclusionProofByHashRequest.tree_size: 0, want > 0",
    )
    beyond = log_pb2.GetInclusionProofByHashRequest(leaf_hash=leaf_hashes[0], tree_size=SIZE + 9)
    expect(
        lambda: stub.GetInclusionProofByHash(beyond, timeout=10),
        OUT_OF_RANGE,
        f"GetInclusionProofByHashRequest.tree_size: {SIZE + 9}",
        f"the log's size is {SIZE}",
    )


# --- consistency and checkpoints ------------------------------------------------------
def test_consistency_first_tree_size_zero(stub: Any) -> None:
    request = log_pb2.GetConsistencyProofRequest(first_tree_size=0, second_tree_size=3)
    expect(
        lambda: stub.GetConsistencyProof(request, timeout=10),
        INVALID,
        "GetConsistencyProofRequest.first_tree_size: 0, want > 0",
    )


def test_consistency_first_above_second(stub: Any) -> None:
    request = log_pb2.GetConsistencyProofRequest(first_tree_size=5, second_tree_size=3)
    expect(
        lambda: stub.GetConsistencyProof(request, timeout=10),
        INVALID,
        "GetConsistencyProofRequest.first_tree_size: 5, want <= second_tree_size 3",
    )


def test_consistency_second_beyond_the_log(stub: Any) -> None:
    request = log_pb2.GetConsistencyProofRequest(first_tree_size=2, second_tree_size=SIZE + 1)
    expect(
        lambda: stub.GetConsistencyProof(request, timeout=10),
        OUT_OF_RANGE,
        f"GetConsistencyProofRequest.second_tree_size: {SIZE + 1}",
        f"the log's size is {SIZE}",
    )


def test_checkpoint_first_tree_size_beyond_the_log(stub: Any) -> None:
    request = log_pb2.GetCheckpointRequest(first_tree_size=SIZE + 1)
    expect(
        lambda: stub.GetCheckpoint(request, timeout=10),
        OUT_OF_RANGE,
        f"GetCheckpointRequest.first_tree_size: {SIZE + 1}",
        f"the log's size is {SIZE}",
    )


# --- entries --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "end", "tree_size", "page_size", "code", "message"),
    [
        (3, 3, SIZE, 0, INVALID, "GetEntriesRequest.start: 3, want < end 3"),
        (4, 2, SIZE, 0, INVALID, "GetEntriesRequest.start: 4, want < end 2"),
        (0, 0, 0, 0, INVALID, "GetEntriesRequest.start: 0, want < end 0"),
        (0, 5, 4, 0, INVALID, "GetEntriesRequest.end: 5, want <= tree_size 4"),
        (0, 2, SIZE, 51, INVALID, "GetEntriesRequest.page_size: 51, want <= 50"),
        (0, 2, 2**63, 0, INVALID, f"GetEntriesRequest.tree_size: {2**63}, want < 2^63"),
        (0, 2, SIZE + 1, 0, OUT_OF_RANGE, f"GetEntriesRequest.tree_size: {SIZE + 1}"),
        (
            0,
            101,
            200,
            0,
            INVALID,
            "GetEntriesRequest.end - start: 101, want <= 100 leaves per call",
        ),
    ],
    ids=[
        "empty-range",
        "reversed-range",
        "all-zero",
        "end-beyond-tree-size",
        "page-too-big",
        "tree-size-2^63",
        "tree-size-beyond-log",
        "too-many-leaves",
    ],
)
def test_get_entries_bad_request(
    stub: Any,
    start: int,
    end: int,
    tree_size: int,
    page_size: int,
    code: grpc.StatusCode,
    message: str,
) -> None:
    request = log_pb2.GetEntriesRequest(
        start=start, end=end, tree_size=tree_size, page_size=page_size
    )
    expect(lambda: stub.GetEntries(request, timeout=10), code, message)


# --- appends --------------------------------------------------------------------------
def _append(stub: Any, *entries: log_pb2.AppendEntry) -> Callable[[], object]:
    return lambda: stub.Append(log_pb2.AppendRequest(entries=entries), timeout=10)


def _size(stub: Any) -> int:
    note = stub.GetCheckpoint(log_pb2.GetCheckpointRequest(), timeout=10).checkpoint
    return int(note.split(b"\n")[1])


def test_append_without_entries(stub: Any) -> None:
    expect(_append(stub), INVALID, "AppendRequest.entries: 0 entries, want >= 1")


def test_append_too_many_entries(stub: Any) -> None:
    entries = [log_pb2.AppendEntry(payload=b"x") for _ in range(11)]
    expect(_append(stub, *entries), INVALID, "AppendRequest.entries: 11 entries, want <= 10")
    assert _size(stub) == SIZE


def test_append_oversize_payload(stub: Any) -> None:
    ok = log_pb2.AppendEntry(payload=b"a" * 1024)
    too_big = log_pb2.AppendEntry(payload=b"b" * 1025)
    expect(
        _append(stub, ok, too_big),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "AppendRequest.entries[1].payload: 1025 bytes, want <= 1024",
        "max entry size",
    )
    assert _size(stub) == SIZE, "a rejected request appended part of its batch"


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("k" * 33, "AppendRequest.entries[1].idempotency_key: 33 characters, want <= 32"),
        ("tab\there", "AppendRequest.entries[1].idempotency_key: 'tab\\there', want printable"),
        ("new\nline", "want printable ASCII"),
        ("caf\u00e9", "AppendRequest.entries[1].idempotency_key: 'café', want printable ASCII"),
        ("nul\x00", "want printable ASCII"),
    ],
    ids=["too-long", "tab", "newline", "non-ascii", "nul"],
)
def test_append_bad_idempotency_key(stub: Any, key: str, message: str) -> None:
    good = log_pb2.AppendEntry(payload=b"ok", idempotency_key="fine-key")
    bad = log_pb2.AppendEntry(payload=b"x", idempotency_key=key)
    expect(_append(stub, good, bad), INVALID, message)
    assert _size(stub) == SIZE


def test_longest_allowed_key_and_empty_payload_are_accepted(tmp_path: Path) -> None:
    running = _make_log(tmp_path / "log")
    try:
        entry = log_pb2.AppendEntry(payload=b"", idempotency_key="~" * 32)
        response = running.stub().Append(log_pb2.AppendRequest(entries=[entry]), timeout=10)
        assert [e.index for e in response.entries] == [SIZE]
    finally:
        running.stop()


@pytest.mark.slow
def test_append_when_the_sequencer_queue_is_full(open_log: OpenLog) -> None:
    """Two requests of 8 entries against a queue of 10 (held open 300 ms): one must wait."""
    log = open_log(settings=Settings(max_queued_entries=10, batch_max_wait_ms=300))
    stub = log.stub()
    requests = [
        log_pb2.AppendRequest(
            entries=[log_pb2.AppendEntry(payload=f"r{r} e{i}".encode()) for i in range(8)]
        )
        for r in range(2)
    ]
    calls = [stub.Append.future(request, timeout=10) for request in requests]

    errors = [c.exception() for c in calls]

    refused = [e for e in errors if e is not None]
    assert len(refused) == 1, errors
    assert refused[0].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "sequencer queue is full" in refused[0].details()
    assert "limit 10" in refused[0].details()
    # The status carries google.rpc.RetryInfo: when to come back.
    status = rpc_status.from_call(refused[0])
    assert status is not None
    infos = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert info.retry_delay.ToTimedelta().total_seconds() > 0
    assert [e.parse().payload for e in log.client().entries()] == [
        e.payload for e in requests[errors.index(None)].entries
    ]


# --- random requests never reach INTERNAL ------------------------------------------------
_U64_EDGES = [0, 1, 2, SIZE - 1, SIZE, SIZE + 1, 2**63 - 1, 2**63, 2**64 - 1]
u64 = st.one_of(st.integers(0, SIZE + 3), st.sampled_from(_U64_EDGES), st.integers(0, 2**64 - 1))
u32 = st.one_of(st.integers(0, 60), st.sampled_from([0, 1, 50, 51, 2**32 - 1]))
hashes = st.one_of(st.binary(max_size=40), st.binary(min_size=32, max_size=32))
keys = st.one_of(
    st.just(""),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    st.text(st.characters(codec="utf-8"), max_size=40),
)
entries = st.lists(
    st.builds(log_pb2.AppendEntry, payload=st.binary(max_size=1100), idempotency_key=keys),
    max_size=12,
)
requests = st.one_of(
    st.builds(log_pb2.GetCheckpointRequest, first_tree_size=u64),
    st.builds(log_pb2.GetInclusionProofRequest, leaf_index=u64, tree_size=u64),
    st.builds(log_pb2.GetInclusionProofByHashRequest, leaf_hash=hashes, tree_size=u64),
    st.builds(log_pb2.GetConsistencyProofRequest, first_tree_size=u64, second_tree_size=u64),
    st.builds(log_pb2.GetEntryAndProofRequest, leaf_index=u64, tree_size=u64),
    st.builds(log_pb2.GetEntriesRequest, start=u64, end=u64, tree_size=u64, page_size=u32),
    st.builds(log_pb2.AppendRequest, entries=entries),
)
_CONTRACT = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,  # an idempotency key drawn again with another payload
}
_FIELD_VALUE_RULE = re.compile(r"^[A-Za-z]+Request\.[^:]+: .+, (want|but) .+")


@pytest.mark.slow
@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(request=requests)
def test_random_requests_get_a_contract_status(fuzz_stub: Any, request: Any) -> None:
    name = type(request).__name__.removesuffix("Request")
    method = getattr(fuzz_stub, name)
    try:
        result = method(request, timeout=10)
        if name == "GetEntries":
            list(result)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    event(f"{name} {code.name}")
    assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), details
    assert code in _CONTRACT, f"{code}: {details}"
    if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        assert _FIELD_VALUE_RULE.match(details), f"message names no field/value/rule: {details}"
