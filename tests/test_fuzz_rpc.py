"""Random requests to every RPC of the service, as declared in the proto, never break the server.

Beyond tests/test_server_errors.py (hand-written strategies per RPC): requests
are built from the service descriptor, so an RPC added to the proto is fuzzed
without touching this file; many threads fire them at once; messages go over
the size limit; and malformed protobuf bytes are sent. No request may end in
INTERNAL, UNKNOWN, DATA_LOSS or a hang (a deadline miss), and afterwards the
server is healthy, appends still verify and the stored log passes fsck.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import RunningLog, recompute_root
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sealog.server.config import Settings
from sealog.server.fsck import fsck
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.servicer import SERVICE_NAME
from sealog.v1 import log_pb2

pytestmark = pytest.mark.slow  # random requests to a running server

SIZE = 40
LIMITS = Settings(
    max_entry_bytes=1024,
    max_request_entries=10,
    max_idempotency_key_bytes=32,
    max_page_size=50,
    default_page_size=7,
    max_entries_per_request_range=100,
    max_message_bytes=256 * 1024,
)
FORBIDDEN = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
}
TIMEOUT_S = 10.0
METHODS: list[MethodDescriptor] = list(log_pb2.DESCRIPTOR.services_by_name["LogService"].methods)


@pytest.fixture(scope="module")
def fuzzed_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLog]:
    running = RunningLog(tmp_path_factory.mktemp("fuzz-rpc") / "log", settings=LIMITS)
    try:
        running.client().append_batch([f"seed {i}".encode() for i in range(10)])
        for _ in range(3):
            running.client().append_batch([f"more {i}".encode() for i in range(10)])
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def channel(fuzzed_log: RunningLog) -> Iterator[grpc.Channel]:
    options = [("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(fuzzed_log.target, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def samples(fuzzed_log: RunningLog) -> list[bytes]:
    """Real values to mix in: leaf hashes, leaves and the checkpoint note."""
    client = fuzzed_log.client()
    cp = client.checkpoint()
    entries = list(client.entries(checkpoint=cp))
    return [cp.note] + [e.leaf_hash for e in entries[:5]] + [e.leaf for e in entries[:3]]


# --- requests from the descriptor -------------------------------------------------------------
_U64_EDGES = [0, 1, 2, SIZE - 1, SIZE, SIZE + 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]


def _scalar(field: FieldDescriptor, samples: list[bytes]) -> st.SearchStrategy[Any]:
    t = field.type
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.one_of(
            st.integers(0, SIZE + 5), st.sampled_from(_U64_EDGES), st.integers(0, 2**64 - 1)
        )
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.one_of(st.integers(0, 60), st.sampled_from([0, 1, 50, 51, 2**32 - 1]))
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.integers(-(2**63), 2**63 - 1)
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.integers(-(2**31), 2**31 - 1)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_BYTES:
        return st.one_of(
            st.binary(max_size=40),
            st.binary(min_size=32, max_size=32),
            st.binary(min_size=1000, max_size=1100),
            st.sampled_from(samples),
            st.sampled_from(samples).flatmap(
                lambda s: st.integers(0, len(s) - 1).map(
                    lambda i: s[:i] + bytes([s[i] ^ 1]) + s[i + 1 :]
                )
            ),
        )
    if t == FieldDescriptor.TYPE_STRING:
        return st.one_of(
            st.just(""),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
            st.text(max_size=40),
        )
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values])
    raise AssertionError(f"no strategy for {field.full_name} (type {t})")


def message_strategy(desc: Descriptor, samples: list[bytes], depth: int = 0) -> Any:
    cls = message_factory.GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2:
                continue
            assert field.message_type is not None
            one: st.SearchStrategy[Any] = message_strategy(field.message_type, samples, depth + 1)
        else:
            one = _scalar(field, samples)
        fields[field.name] = st.lists(one, max_size=12) if field.is_repeated else one
    return st.fixed_dictionaries({}, optional=fields).map(lambda kw: cls(**kw))


def call(channel: grpc.Channel, method: MethodDescriptor, request: bytes) -> grpc.StatusCode:
    """Send serialized ``request`` to ``method``; drain a stream; return the status code."""
    path = f"/{SERVICE_NAME}/{method.name}"
    try:
        if method.server_streaming:
            for _ in channel.unary_stream(path, None, None)(request, timeout=TIMEOUT_S):
                pass
        else:
            channel.unary_unary(path, None, None)(request, timeout=TIMEOUT_S)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def _requests(samples: list[bytes]) -> Any:
    return st.one_of(
        *(
            st.tuples(st.just(m), message_strategy(m.input_type, samples))
            for m in METHODS
            if not m.client_streaming
        )
    )


def test_every_rpc_is_fuzzed() -> None:
    names = {m.name for m in METHODS}
    assert {"Append", "GetEntries", "GetCheckpoint", "GetConsistencyProof"} <= names
    assert not [m.name for m in METHODS if m.client_streaming], "add client streams here"


def test_random_requests_to_every_rpc(
    channel: grpc.Channel, samples: list[bytes], fuzzed_log: RunningLog
) -> None:
    seen: Counter[str] = Counter()

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_requests(samples))
    def one(method_and_request: tuple[MethodDescriptor, Message]) -> None:
        method, request = method_and_request
        code = call(channel, method, request.SerializeToString())
        seen[f"{method.name} {code.name}"] += 1
        event(f"{method.name} {code.name}")
        assert code not in FORBIDDEN, f"{method.name}({request}) -> {code.name}"

    one()

    print(f"\nrandom requests: {sum(seen.values())} tried, 0 failures; {dict(seen)}")
    tried = {key.split()[0] for key in seen}
    assert tried == {m.name for m in METHODS}, "some RPC was never called"


def _random_message(rng: random.Random, desc: Descriptor, samples: list[bytes]) -> Message:
    """A random message without hypothesis (for many threads at once)."""
    msg = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if rng.random() < 0.2:
            continue
        count = rng.randrange(0, 12) if field.is_repeated else 1
        for _ in range(count):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                assert field.message_type is not None
                value: Any = _random_message(rng, field.message_type, samples)
            elif field.type == FieldDescriptor.TYPE_BYTES:
                value = rng.choice([rng.randbytes(rng.randrange(0, 1100)), rng.choice(samples)])
            elif field.type == FieldDescriptor.TYPE_STRING:
                value = rng.choice(["", f"key-{rng.randrange(50)}", "caf\u00e9", "x" * 40])
            elif field.type == FieldDescriptor.TYPE_BOOL:
                value = rng.random() < 0.5
            elif field.type in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
                value = rng.choice([rng.randrange(0, 60), 2**32 - 1])
            else:
                value = rng.choice([rng.randrange(0, SIZE + 5), rng.choice(_U64_EDGES)])
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                box = getattr(msg, field.name)
                (box.add() if field.is_repeated else box).CopyFrom(value)
            elif field.is_repeated:
                getattr(msg, field.name).append(value)
            else:
                setattr(msg, field.name, value)
    return msg


def test_many_threads_of_random_requests(channel: grpc.Channel, samples: list[bytes]) -> None:
    threads, per_thread = 8, 400
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        rng = random.Random(6962 + t)
        methods = [m for m in METHODS if not m.client_streaming]
        for _ in range(per_thread):
            method = rng.choice(methods)
            request = _random_message(rng, method.input_type, samples)
            code = call(channel, method, request.SerializeToString())
            with lock:
                outcomes[code.name] += 1
                if code in FORBIDDEN:
                    failures.append(f"{method.name}({request}) -> {code.name}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(work, t) for t in range(threads)]:
            future.result(timeout=300)

    print(f"\nconcurrent random requests: {threads * per_thread} tried, {len(failures)} failures")
    assert not failures, failures[:5]
    assert sum(outcomes.values()) == threads * per_thread


@pytest.mark.parametrize(
    "method", [m for m in METHODS if not m.client_streaming], ids=lambda m: m.name
)
def test_a_message_over_the_size_limit_is_resource_exhausted(
    channel: grpc.Channel, method: MethodDescriptor
) -> None:
    bulk = LIMITS.max_message_bytes + 1  # in an unknown field: any request type can carry it
    oversize = _varint((2047 << 3) | 2) + _varint(bulk) + b"\0" * bulk

    assert call(channel, method, oversize) == grpc.StatusCode.RESOURCE_EXHAUSTED


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@pytest.mark.parametrize(
    "method", [m for m in METHODS if not m.client_streaming], ids=lambda m: m.name
)
def test_malformed_protobuf_is_invalid_argument(
    fuzzed_log: RunningLog, method: MethodDescriptor
) -> None:
    codes: Counter[str] = Counter()

    @given(data=st.binary(min_size=1, max_size=200))
    @settings(
        max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def one(data: bytes) -> None:
        codes[call(own_channel, method, data).name] += 1

    # A channel of its own: what this does to a connection must not reach the other tests.
    with grpc.insecure_channel(fuzzed_log.target) as own_channel:
        one()

    # Bytes that do not decode are INVALID_ARGUMENT; bytes that happen to decode to a
    # valid request are answered like any request (a size beyond the log, a missing hash).
    assert set(codes) <= {"OK", "INVALID_ARGUMENT", "OUT_OF_RANGE", "NOT_FOUND"}, codes


def test_malformed_requests_do_not_use_up_a_connection(tmp_path: Path) -> None:
    """Each undecodable request leaks a stream: after max_concurrent_streams, all are refused."""
    running = RunningLog(tmp_path / "log", settings=Settings(max_concurrent_streams=16))
    try:
        with grpc.insecure_channel(running.target) as own_channel:
            get_checkpoint = METHODS[[m.name for m in METHODS].index("GetCheckpoint")]
            for _ in range(20):
                call(own_channel, get_checkpoint, b"\xff\xff")
            good = log_pb2.GetCheckpointRequest().SerializeToString()

            assert call(own_channel, get_checkpoint, good) == grpc.StatusCode.OK
    finally:
        running.stop()


def test_client_entries_reads_a_log_longer_than_one_get_entries_call(
    fuzzed_log: RunningLog,
) -> None:
    client = fuzzed_log.client(entries_per_call=LIMITS.max_entries_per_request_range)
    # The fuzzing above grows this log only when it ran in this worker: top it up.
    size = client.checkpoint().checkpoint.size
    while size <= LIMITS.max_entries_per_request_range:
        batch = [b"filler %d" % (size + i) for i in range(LIMITS.max_request_entries)]
        size = client.append_batch(batch).checkpoint.checkpoint.size
    latest = client.checkpoint()
    assert latest.checkpoint.size > LIMITS.max_entries_per_request_range
    assert len(list(client.entries(checkpoint=latest))) == latest.checkpoint.size


def test_after_the_fuzzing_the_log_is_healthy_and_intact(
    fuzzed_log: RunningLog, channel: grpc.Channel
) -> None:
    """Runs last in this module: whatever was sent above, the log serves and verifies."""
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT_S
    )
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    client = fuzzed_log.client()
    receipt = client.append(b"after the fuzzing")
    latest = client.checkpoint()
    assert receipt.index == latest.checkpoint.size - 1
    size = latest.checkpoint.size
    window = LIMITS.max_entries_per_request_range
    entries = [
        e
        for start in range(0, size, window)
        for e in client.entries(start, min(size, start + window), latest)
    ]
    assert recompute_root(entries) == (size, latest.checkpoint.root_hash)
    data_dir: Path = fuzzed_log.data_dir
    fuzzed_log.stop()
    storage = LmdbStorage(data_dir / "db", readonly=True)
    try:
        with storage.read() as snap:
            report = fsck(snap, fuzzed_log.verifier, progress=False)
    finally:
        storage.close()
    assert report.ok, report.problems
    assert report.size == latest.checkpoint.size
