"""Running a log: storage, key and gRPC server wired together, with a clean shutdown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sealog.client.cosignature import CosignatureVerifier
from sealog.client.keyfile import read_key_file, write_private_key_file
from sealog.client.note import Ed25519Signer
from sealog.server.config import Settings
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.servicer import SERVICE_NAME, LogServicer
from sealog.server.witness_push import WitnessPusher
from sealog.v1 import log_pb2_grpc

__all__ = ["LogServer", "load_or_create_signer"]

log = logging.getLogger(__name__)

KEY_FILE = "log.key"
VKEY_FILE = "log.vkey"


def load_or_create_signer(data_dir: Path, key_file: Path | None, origin: str) -> Ed25519Signer:
    """Read the signing key, or (with no key file given) create one in ``data_dir``."""
    if key_file is not None:
        return Ed25519Signer.from_skey(read_key_file(key_file, private=True))
    path = data_dir / KEY_FILE
    if path.exists():
        return Ed25519Signer.from_skey(read_key_file(path, private=True))
    data_dir.mkdir(parents=True, exist_ok=True)
    signer = Ed25519Signer.generate(origin)
    write_private_key_file(path, signer.skey)
    (data_dir / VKEY_FILE).write_text(signer.verifier().vkey + "\n")
    log.info("generated a new signing key in %s", path)
    return signer


@dataclass
class LogServer:
    """A started gRPC server for one log. Use :meth:`open`, then :meth:`stop`."""

    log: Log
    storage: LmdbStorage
    grpc_server: grpc.Server
    port: int
    signer: Ed25519Signer
    health: health.HealthServicer
    pusher: WitnessPusher | None = None

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        *,
        address: str = "127.0.0.1:0",
        origin: str = "sealog.localhost/log",
        key_file: str | Path | None = None,
        settings: Settings | None = None,
        witnesses: Sequence[CosignatureVerifier] = (),
        push_witnesses: Sequence[str] = (),
    ) -> LogServer:
        """Open (or create) the log in ``data_dir`` and serve it on ``address``.

        ``witnesses`` are the witness keys whose cosignatures AddCosignature
        accepts; ``push_witnesses`` are C2SP tlog-witness add-checkpoint URLs
        the log sends each new checkpoint to (docs/monitoring.md).

        The port answers as soon as it is bound: the standard gRPC health
        service says NOT_SERVING, and the log's RPCs UNAVAILABLE, until the
        start-up self-check has passed. If it fails, the server stops and the
        error (:class:`~sealog.server.log.StartupCheckError`) is raised.
        """
        settings = settings or Settings()
        data_dir = Path(data_dir)
        signer = load_or_create_signer(
            data_dir, Path(key_file) if key_file is not None else None, origin
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=settings.max_workers, thread_name_prefix="sealog-rpc"
            ),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
                ("grpc.so_reuseport", 0),
            ],
        )
        health_servicer = health.HealthServicer()
        for service in ("", SERVICE_NAME):
            health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        servicer = LogServicer()
        log_pb2_grpc.add_LogServiceServicer_to_server(  # type: ignore[no-untyped-call]
            servicer, server
        )
        try:
            port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises where it used to return 0
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on {address} (in use, or not a local address?)")
        server.start()
        storage = LmdbStorage(data_dir / "db")
        try:
            the_log = Log(storage, signer, signer.verifier(), origin, settings, witnesses=witnesses)
        except BaseException:
            server.stop(None)
            storage.close()
            raise
        servicer.attach(the_log)
        for service in ("", SERVICE_NAME):
            health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        pusher = WitnessPusher(the_log, list(push_witnesses)).start() if push_witnesses else None
        return cls(the_log, storage, server, port, signer, health_servicer, pusher)

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking RPCs, commit and answer queued appends, close storage.

        Health turns NOT_SERVING first, so load balancers drain the server.
        """
        self.health.enter_graceful_shutdown()
        if self.pusher is not None:
            self.pusher.stop()
        done: threading.Event = self.grpc_server.stop(grace)
        self.log.close()
        done.wait(grace + 1)
        self.storage.close()
