"""gRPC server reflection: tools such as grpcurl can list the services and their schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_support import OpenLog, Serve, tls_log_server
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pki import TestCA

from sealog.client.tls import channel_credentials
from sealog.server.app import LogServer
from sealog.server.config import Settings
from sealog.v1 import log_pb2

TIMEOUT_S = 5
INFO = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
SERVICES = {
    "sealog.v1.LogService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


def list_services(channel: grpc.Channel) -> set[str]:
    return set(ProtoReflectionDescriptorDatabase(channel).get_services())


def test_reflection_lists_the_logs_services(open_log: OpenLog) -> None:
    running = open_log()
    with grpc.insecure_channel(running.target) as channel:
        assert list_services(channel) == SERVICES


def test_reflection_resolves_the_log_service_as_the_package_defines_it(
    open_log: OpenLog,
) -> None:
    running = open_log()
    with grpc.insecure_channel(running.target) as channel:
        pool = DescriptorPool(ProtoReflectionDescriptorDatabase(channel))
        service = pool.FindServiceByName("sealog.v1.LogService")
        append = service.methods_by_name["Append"]
        assert append.input_type.full_name == "sealog.v1.AppendRequest"
        assert append.output_type.full_name == "sealog.v1.AppendResponse"
        assert pool.FindMessageTypeByName("sealog.v1.AppendRequest").fields_by_name.keys() == (
            log_pb2.AppendRequest.DESCRIPTOR.fields_by_name.keys()
        )
        packaged = log_pb2.DESCRIPTOR.services_by_name["LogService"]
        assert {
            (m.name, m.input_type.full_name, m.output_type.full_name, m.server_streaming)
            for m in service.methods
        } == {
            (m.name, m.input_type.full_name, m.output_type.full_name, m.server_streaming)
            for m in packaged.methods
        }


def test_without_reflection_the_call_is_unimplemented(open_log: OpenLog) -> None:
    running = open_log(reflection=False)
    with grpc.insecure_channel(running.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list_services(channel)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # The log itself still serves.
        assert running.client().checkpoint().checkpoint.size == 0


@pytest.mark.slow
def test_serve_no_reflection_turns_it_off(serve: Serve, tmp_path: Path) -> None:
    on = serve(tmp_path / "on")
    off = serve(tmp_path / "off", "--no-reflection")
    with grpc.insecure_channel(on.target) as channel:
        assert list_services(channel) == SERVICES
    with grpc.insecure_channel(off.target) as channel:
        with pytest.raises(grpc.RpcError) as info:
            list_services(channel)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def reflection_call(channel: grpc.Channel, *requests: bytes) -> tuple[int, grpc.StatusCode, str]:
    """Send ``requests`` as they are on one ServerReflectionInfo stream: how many answers
    came back, the status and its details."""
    answers = 0
    try:
        for _ in channel.stream_stream(INFO, None, None)(iter(requests), timeout=TIMEOUT_S):
            answers += 1
    except grpc.RpcError as e:
        return answers, e.code(), e.details() or ""
    return answers, grpc.StatusCode.OK, ""


def test_undecodable_reflection_requests_are_invalid_argument_and_leak_no_stream(
    open_log: OpenLog,
) -> None:
    running = open_log(settings=Settings(max_concurrent_streams=16))
    good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
    with grpc.insecure_channel(running.target) as channel:
        for _ in range(20):  # more than the connection's streams
            answers, code, details = reflection_call(channel, b"\xff\xff")
            assert (answers, code) == (0, grpc.StatusCode.INVALID_ARGUMENT)
            assert details == f"{INFO}: the request is not a valid protobuf message (DecodeError)"
        # A stream whose second message is undecodable answers the first, then refuses.
        assert reflection_call(channel, good, b"\xff")[:2] == (1, grpc.StatusCode.INVALID_ARGUMENT)
        assert reflection_call(channel, good, good) == (2, grpc.StatusCode.OK, "")
        # The connection still serves.
        assert list_services(channel) == SERVICES


@pytest.fixture
def tls_log(tmp_path: Path) -> Iterator[tuple[LogServer, TestCA]]:
    """A log on TLS with a second, mutual TLS port and a policy that keeps reads private."""
    policy = tmp_path / "policy.toml"
    policy.write_text('public_read = false\n[[identity]]\nname = "reader"\nroles = ["read"]\n')
    with tls_log_server(tmp_path, mtls_address="localhost:0", policy_file=policy) as served:
        yield served


def test_reflection_serves_on_both_ports_without_an_identity(
    tls_log: tuple[LogServer, TestCA],
) -> None:
    server, ca = tls_log
    anonymous = channel_credentials(ca.ca_file)
    with grpc.secure_channel(f"localhost:{server.port}", anonymous) as channel:
        assert list_services(channel) == SERVICES
        # The log's reads need the read role here; the schema does not.
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/sealog.v1.LogService/GetCheckpoint", None, None)(
                log_pb2.GetCheckpointRequest().SerializeToString(), timeout=TIMEOUT_S
            )
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    client = ca.issue("stranger", cn="stranger")
    mutual = channel_credentials(ca.ca_file, client.cert_file, client.key_file)
    assert server.mtls_port is not None
    with grpc.secure_channel(f"localhost:{server.mtls_port}", mutual) as channel:
        assert list_services(channel) == SERVICES
