"""Running a log: storage, key and gRPC server wired together, with a clean shutdown.

The gRPC server is grpc's asyncio server, on an event loop of its own thread
(:class:`EventLoopThread`); :class:`LogServer` keeps a plain, blocking API.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection as grpc_reflection
from grpc_reflection.v1alpha import reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer  # reflection.aio's, typed

from sealog.client.cosignature import CosignatureVerifier
from sealog.client.http_serve import HttpLimits, HttpServer
from sealog.client.keyfile import read_key_file
from sealog.client.note import Ed25519Signer
from sealog.server.access_log import AccessLog
from sealog.server.auth import Authenticator
from sealog.server.config import Settings
from sealog.server.data_folder import KEY_FILE, VKEY_FILE, DataFolder
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log, StartupCheckError
from sealog.server.metrics import MetricsListener, ServerMetrics
from sealog.server.rpc_observer import RpcObserver
from sealog.server.safe_decode import add_service
from sealog.server.servicer import SERVICE_NAME, LogServicer
from sealog.server.storage import StorageCorruptError
from sealog.server.tile_http import TileService, tiles_ssl_context
from sealog.server.tls import is_loopback, server_credentials
from sealog.server.witness_push import DEFAULT_PUSH_INTERVAL_S, WitnessPusher
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = [
    "KEY_FILE",
    "VKEY_FILE",
    "EventLoopThread",
    "LogServer",
    "TlsFiles",
    "connection_limit",
    "new_grpc_server",
    "raise_fd_limit",
    "reflected_services",
]

log = logging.getLogger(__name__)

DRAIN_S = 0.3
"""How long a stopping server answers new calls UNAVAILABLE before it stops."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for serving TLS. ``client_ca_file`` makes a port mutual TLS: clients must
    present a certificate it signed (on the ``mtls_address`` port if one is given, else on
    the main port)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None


T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop running on a daemon thread of its own."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop; block until it returns (or raise what it raised)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> futures.Future[T]:
        """Start ``coro`` on the loop; don't wait."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        """Stop the loop (cancelling what still runs on it) and wait for its thread."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


FD_RESERVE = 256
"""File descriptors kept back from client connections: LMDB, the listening sockets, log
files, witness pushes, grpc's own (its event engine holds a few)."""


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, where allowed.

    Returns the soft limit in force afterwards. Every TCP connection is a file
    descriptor, taken before any authentication, so the common default of 1024
    is what lets idle connections lock clients out (docs/operations.md).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as e:  # e.g. a platform cap below the hard limit
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, e)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def connection_limit(settings: Settings, fd_limit: int) -> int:
    """``settings.max_connections``, lowered to leave :data:`FD_RESERVE` of ``fd_limit``."""
    return max(1, min(settings.max_connections, fd_limit - FD_RESERVE))


def new_grpc_server(settings: Settings, max_connections: int | None = None) -> grpc.aio.Server:
    """A gRPC asyncio server with the log's limits (call it on the loop that will run it).

    ``max_connections`` (default ``settings.max_connections``) caps the TCP
    connections grpc keeps: one over it is closed as soon as it is accepted, so
    idle connections cannot take every file descriptor. A connection still in
    its handshake after ``handshake_timeout_s``, or with no call for
    ``idle_connection_timeout_s``, is closed, and every connection after
    ``max_connection_age_s`` plus its grace; keepalive pings find peers that
    vanished while a call was open. The channel arguments are grpc core's
    (include/grpc/impl/channel_arg_names.h).
    """
    connections = settings.max_connections if max_connections is None else max_connections
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
            ("grpc.so_reuseport", 0),
            ("grpc.max_allowed_incoming_connections", connections),
            ("grpc.server_handshake_timeout_ms", _ms(settings.handshake_timeout_s)),
            ("grpc.max_connection_idle_ms", _ms(settings.idle_connection_timeout_s)),
            ("grpc.max_connection_age_ms", _ms(settings.max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(settings.max_connection_age_grace_s)),
            ("grpc.keepalive_time_ms", _ms(settings.keepalive_time_s)),
            ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout_s)),
        ],
    )


def reflected_services() -> tuple[str, ...]:
    """The services server reflection lists: the log's, health and reflection itself.

    Reflection (grpc.reflection.v1alpha.ServerReflection) answers with the schema only:
    the ``.proto`` files these services are built from, which ship in the package.
    """
    return (
        log_pb2.DESCRIPTOR.services_by_name["LogService"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        grpc_reflection.SERVICE_NAME,
    )


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _listen(server: grpc.aio.Server, address: str, tls: TlsFiles | None, *, mtls: bool) -> int:
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            ca = tls.client_ca_file if mtls else None
            port = server.add_secure_port(
                address, server_credentials(tls.cert_file, tls.key_file, ca)
            )
    except RuntimeError:  # grpcio raises where it used to return 0
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address} (in use, or not a local address?)")
    return port


def _tiles_server(
    service: TileService, address: str, tls: TlsFiles | None, settings: Settings
) -> HttpServer:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"tiles address {address!r}: want HOST:PORT")
    limits = HttpLimits(
        max_connections=settings.tiles_max_connections,
        max_requests=max(1, settings.tiles_max_connections // 4),
    )
    context = (
        tiles_ssl_context(tls.cert_file, tls.key_file, tls.client_ca_file)
        if tls is not None
        else None
    )
    return HttpServer(
        service.app(),
        host.strip("[]"),
        int(port),
        limits,
        name="sealog-tiles",
        ssl_context=context,
    )


@dataclass
class LogServer:
    """A started gRPC server for one log. Use :meth:`open`, then :meth:`stop`."""

    log: Log
    storage: LmdbStorage
    grpc_server: grpc.aio.Server
    port: int
    signer: Ed25519Signer
    health: HealthServicer
    loop: EventLoopThread
    executor: futures.ThreadPoolExecutor
    pusher: WitnessPusher | None = None
    auth: Authenticator = field(default_factory=Authenticator)
    mtls_port: int | None = None
    servicer: LogServicer | None = None
    folder: DataFolder | None = None
    """The data folder, locked while the server runs."""
    metrics: ServerMetrics | None = None
    metrics_listener: MetricsListener | None = None
    """Serves ``/metrics`` (``metrics_address``); its ``port`` is the one bound."""
    observer: RpcObserver | None = None
    tiles: HttpServer | None = None
    """The tlog-tiles listener (``tiles_address``); its ``port`` is the one bound."""
    tile_service: TileService | None = None

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
        push_witness_interval_s: float = DEFAULT_PUSH_INTERVAL_S,
        policy_file: str | Path | None = None,
        tls: TlsFiles | None = None,
        allow_insecure_remote: bool = False,
        mtls_address: str | None = None,
        extra_key_files: Sequence[str | Path] = (),
        new_log: bool = False,
        metrics_address: str | None = None,
        access_log: AccessLog | None = None,
        reflection: bool = True,
        tiles_address: str | None = None,
        tiles_prefix: str = "",
    ) -> LogServer:
        """Open the log in ``data_dir`` and serve it on ``address``.

        The folder is locked first (:class:`~sealog.server.data_folder.DataFolder`);
        a new log is created only in a folder that is missing or empty, and an
        existing folder must hold the log's storage and key, else
        :class:`~sealog.server.data_folder.DataFolderError`. A new log under a
        ``key_file`` of its own needs ``new_log`` too (the key may already sign
        a log whose folder is not mounted); ``new_log`` refuses a folder that
        holds a log.

        ``witnesses`` are the witness keys whose cosignatures AddCosignature
        accepts; ``push_witnesses`` are C2SP tlog-witness add-checkpoint URLs
        the log sends its latest checkpoint to, each at most once per
        ``push_witness_interval_s`` (docs/monitoring.md).

        The port answers as soon as it is bound: the standard gRPC health
        service says NOT_SERVING, and the log's RPCs UNAVAILABLE, until the
        start-up self-check has passed. If it fails, the server stops and the
        error (:class:`~sealog.server.log.StartupCheckError`) is raised.

        ``policy_file`` turns on access control (docs/authentication.md);
        ``tls`` serves TLS; with a client CA, mutual TLS — on ``mtls_address``
        as a second port beside a TLS-only main port (for API keys), or on
        the main port. ``extra_key_files`` add signers during a key rotation:
        every checkpoint carries each key's signature. Plaintext
        on an address that is not loopback is refused unless
        ``allow_insecure_remote``.

        ``metrics_address`` serves Prometheus metrics over HTTP at ``/metrics``
        (:mod:`sealog.server.metrics`); ``access_log`` writes a line per RPC
        (:mod:`sealog.server.access_log`). Without either, RPCs record nothing.

        ``reflection`` serves gRPC server reflection on every port, so tools
        such as grpcurl can list the services and their messages
        (:func:`reflected_services`); it reveals the schema, nothing of the log.

        ``tiles_address`` serves the log as c2sp.org/tlog-tiles over HTTP
        (:mod:`sealog.server.tile_http`, below ``tiles_prefix``) on the gRPC
        server's event loop; with ``tls`` it is HTTPS with the same certificate,
        and client certificates from the client CA are accepted (not required).
        """
        if tls is None and not allow_insecure_remote and not is_loopback(address):
            raise ValueError(
                f"refusing to serve plaintext gRPC on {address}, which is not a loopback "
                "address: give a TLS certificate and key (--tls-cert, --tls-key), or "
                "--insecure-allow-remote if something else encrypts the traffic"
            )
        if (
            tiles_address is not None
            and tls is None
            and not allow_insecure_remote
            and not is_loopback(tiles_address)
        ):
            raise ValueError(
                f"refusing to serve plaintext HTTP tiles on {tiles_address}, which is not a "
                "loopback address: give a TLS certificate and key (--tls-cert, --tls-key), "
                "or --insecure-allow-remote if something else encrypts the traffic"
            )
        folder = DataFolder.lock(data_dir)  # before anything else is opened
        try:
            return cls._open_locked(
                folder,
                address=address,
                origin=origin,
                key_file=Path(key_file) if key_file is not None else None,
                settings=settings or Settings(),
                witnesses=witnesses,
                push_witnesses=push_witnesses,
                push_witness_interval_s=push_witness_interval_s,
                policy_file=policy_file,
                tls=tls,
                mtls_address=mtls_address,
                extra_key_files=extra_key_files,
                new_log=new_log,
                metrics_address=metrics_address,
                access_log=access_log,
                reflection=reflection,
                tiles_address=tiles_address,
                tiles_prefix=tiles_prefix,
            )
        except BaseException:
            folder.release()
            raise

    @classmethod
    def _open_locked(
        cls,
        folder: DataFolder,
        *,
        address: str,
        origin: str,
        key_file: Path | None,
        settings: Settings,
        witnesses: Sequence[CosignatureVerifier],
        push_witnesses: Sequence[str],
        push_witness_interval_s: float,
        policy_file: str | Path | None,
        tls: TlsFiles | None,
        mtls_address: str | None,
        extra_key_files: Sequence[str | Path],
        new_log: bool,
        metrics_address: str | None,
        access_log: AccessLog | None,
        reflection: bool,
        tiles_address: str | None,
        tiles_prefix: str,
    ) -> LogServer:
        auth = Authenticator(policy_file)
        # Everything the folder must hold is checked before anything is created
        # or the port is bound; a new log's files are written only after that.
        folder.check_holds_a_log()
        folder.check_new_log(key_file, new_log=new_log)
        signer = folder.signer(key_file, origin)
        extra_signers = [
            Ed25519Signer.from_skey(read_key_file(path, private=True)) for path in extra_key_files
        ]
        for extra in extra_signers:
            if extra.name != signer.name or extra.key_hash == signer.key_hash:
                raise ValueError(
                    f"--extra-key-file key {extra.name}+{extra.key_hash:08x}: want another key "
                    f"with the log's key name {signer.name!r}"
                )
        if mtls_address is not None and (tls is None or tls.client_ca_file is None):
            raise ValueError("a mutual TLS port needs a TLS certificate, key and client CA")
        fd_limit = raise_fd_limit()
        connections = connection_limit(settings, fd_limit)
        if connections < settings.max_connections:
            log.warning(
                "serving at most %d connections, not max_connections %d: the open file "
                'limit is %d (raise it: docs/operations.md, "Limits")',
                connections,
                settings.max_connections,
                fd_limit,
            )
        executor = futures.ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="sealog-rpc"
        )
        metrics = ServerMetrics() if metrics_address is not None else None
        observer = (
            RpcObserver(metrics, access_log).start()
            if metrics is not None or access_log is not None
            else None
        )
        servicer = LogServicer(auth=auth, executor=executor, observer=observer)
        loop = EventLoopThread("sealog-grpc")

        async def start() -> tuple[grpc.aio.Server, HealthServicer, int, int | None]:
            server = new_grpc_server(settings, connections)
            health_servicer = HealthServicer()
            for service in ("", SERVICE_NAME):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
            add_service(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
            add_service(server, log_pb2_grpc.add_LogServiceServicer_to_server, servicer)
            if reflection:
                add_service(
                    server,
                    reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                    ReflectionServicer(reflected_services()),
                )
            port = _listen(server, address, tls, mtls=mtls_address is None)
            mtls_port = _listen(server, mtls_address, tls, mtls=True) if mtls_address else None
            await server.start()
            return server, health_servicer, port, mtls_port

        try:
            server, health_servicer, port, mtls_port = loop.run(start())
        except BaseException:
            loop.close()
            executor.shutdown()
            if observer is not None:
                observer.stop()
            raise
        storage: LmdbStorage | None = None
        the_log: Log | None = None
        try:
            if folder.new:
                folder.begin_create(signer, key_file)
            try:
                storage = LmdbStorage(folder.db, create=folder.new)
            except StorageCorruptError as e:
                raise StartupCheckError(f"storage is damaged: {e}") from e
            the_log = Log(
                storage,
                signer,
                signer.verifier(),
                origin,
                settings,
                witnesses=witnesses,
                extra_signers=extra_signers,
                create=folder.new,
            )
            if folder.new:
                folder.end_create()
            else:
                folder.check_vkey(signer, key_file)  # after the checkpoint verified with it
        except BaseException:
            loop.run(server.stop(None))
            loop.close()
            executor.shutdown()
            if observer is not None:
                observer.stop()
            if the_log is not None:
                the_log.close()
            if storage is not None:
                storage.close()
            raise
        servicer.attach(the_log)

        async def serving() -> None:
            for service in ("", SERVICE_NAME):
                await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)

        def on_clock(fault: str | None) -> None:
            # While the clock cannot be trusted appends are refused: the log
            # service says NOT_SERVING (reads still work; docs/operations.md, "Clock").
            health = health_pb2.HealthCheckResponse
            status = health.NOT_SERVING if fault is not None else health.SERVING
            loop.submit(health_servicer.set(SERVICE_NAME, status))

        pusher: WitnessPusher | None = None
        listener: MetricsListener | None = None
        tiles: HttpServer | None = None
        tile_service: TileService | None = None
        try:
            if tiles_address is not None:  # bound before the health service says SERVING
                tile_service = TileService(
                    the_log,
                    auth,
                    prefix=tiles_prefix,
                    cache_bytes=settings.tiles_cache_bytes,
                    executor=executor,
                    observer=observer,
                )
                tiles = _tiles_server(tile_service, tiles_address, tls, settings)
                try:
                    loop.run(tiles.open())
                except OSError as e:
                    raise OSError(
                        f"cannot serve tiles on {tiles_address}: {e.strerror or e}"
                    ) from e
            if metrics is not None:  # bound before the health service says SERVING
                assert metrics_address is not None
                metrics.watch(the_log, storage)
                try:
                    listener = MetricsListener.start(metrics_address, metrics)
                except OSError as e:
                    raise OSError(
                        f"cannot serve metrics on {metrics_address}: {e.strerror or e}"
                    ) from e
            loop.run(serving())
            the_log.watch_clock(on_clock)
            if push_witnesses:
                pusher = WitnessPusher(
                    the_log, list(push_witnesses), interval_s=push_witness_interval_s
                ).start()
                if metrics is not None:
                    metrics.watch_pusher(pusher)
        except BaseException:
            # Nothing of a server that failed to start may outlive it: the folder's
            # lock is released by the caller, so its writer must be gone first.
            if listener is not None:
                listener.stop()
            if tiles is not None:
                loop.run(tiles.close())
            if pusher is not None:
                pusher.stop()
            loop.run(server.stop(None))
            loop.close()
            executor.shutdown()
            if observer is not None:
                observer.stop()
            the_log.close()
            storage.close()
            raise
        return cls(
            the_log,
            storage,
            server,
            port,
            signer,
            health_servicer,
            loop,
            executor,
            pusher,
            auth,
            mtls_port,
            servicer,
            folder,
            metrics,
            listener,
            observer,
            tiles=tiles,
            tile_service=tile_service,
        )

    def enter_graceful_shutdown(self) -> None:
        """Make the health service answer NOT_SERVING from now on (load balancers drain)."""
        self.loop.run(self.health.enter_graceful_shutdown())

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking RPCs, commit and answer queued appends, close storage.

        Health turns NOT_SERVING first, so load balancers drain the server; for
        a moment new calls are answered UNAVAILABLE (which clients retry), so
        that calls already accepted are not cut off as CANCELLED when the gRPC
        server stops.
        """
        self.enter_graceful_shutdown()
        if self.metrics_listener is not None:
            self.metrics_listener.stop()  # no scrape reads the log once it closes
        if self.tiles is not None:
            self.loop.run(self.tiles.close())  # nor a tile request
        if self.servicer is not None:
            self.servicer.drain()
            time.sleep(DRAIN_S)
        if self.pusher is not None:
            self.pusher.stop()
        stopped = self.loop.submit(self.grpc_server.stop(grace))
        # Appends still queued are committed and their callers answered while
        # the server waits for its calls to finish.
        self.log.close()
        try:
            stopped.result(grace + 1)
        except futures.TimeoutError:
            log.warning("gRPC server did not stop within %.1f s; cancelling its calls", grace + 1)
        self.loop.close()
        self.executor.shutdown(cancel_futures=True)  # a bulk read still running finishes first
        if self.observer is not None:
            self.observer.stop()  # the calls' last access lines
        self.storage.close()
        if self.folder is not None:
            self.folder.release()
