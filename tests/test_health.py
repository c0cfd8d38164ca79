"""The standard gRPC health service tells load balancers when the log can serve."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sealog.server.app import LogServer
from sealog.server.servicer import SERVICE_NAME, LogServicer
from sealog.v1 import log_pb2


def test_health_is_serving_once_open_and_not_after_shutdown(tmp_path: Path) -> None:
    server = LogServer.open(tmp_path / "data")
    stopped = False
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", SERVICE_NAME):
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert answer.status == health_pb2.HealthCheckResponse.SERVING
            server.enter_graceful_shutdown()
            answer = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            server.stop()
            stopped = True
            with pytest.raises(grpc.RpcError) as info:
                stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if not stopped:
            server.stop()


class _Context:
    """Enough of grpc.ServicerContext to see what an RPC aborts with."""

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _AbortedError(code, details)

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise _AbortedError(status.code, status.details)


class _AbortedError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


def test_rpcs_are_unavailable_until_the_self_check_has_passed() -> None:
    servicer = LogServicer()  # not attached to a log yet
    with pytest.raises(_AbortedError) as info:
        asyncio.run(
            servicer.GetCheckpoint(log_pb2.GetCheckpointRequest(), _Context())  # type: ignore[arg-type]
        )
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert "starting up" in str(info.value)
