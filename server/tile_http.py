"""The log as c2sp.org/tlog-tiles over HTTP: ``checkpoint``, hash tiles, entry bundles.

Paths below an optional prefix (docs/tiles.md)::

    checkpoint                      the latest signed checkpoint (text/plain)
    tile/<L>/<N>[.p/<W>]            hash tiles (application/octet-stream)
    tile/entries/<N>[.p/<W>]        entry bundles (application/octet-stream)

Every answer is read in one storage snapshot, so a tile never mixes two trees.
Tiles and bundles of a given path never change (a partial tile of width ``W``
is the prefix of every wider one), so they are sent as immutable; the checkpoint
may be cached for :data:`CHECKPOINT_MAX_AGE_S` only; errors not at all.

Access follows the gRPC API's (:mod:`sealog.server.auth`): the checkpoint and
hash tiles hold no identity or payload and are public; an entry bundle holds
whole leaves and needs the ``read`` role GetEntries needs, unless the policy
makes reads public. The caller authenticates as on gRPC: ``Authorization:
Bearer <API key>``, or a client certificate when the listener has a client CA.

Full hash tiles are kept in a bounded cache (:class:`TileCache`): a hot tile
costs a dictionary lookup, no storage read. Hash tiles and the checkpoint are
read on the event loop (a tile is at most 256 point reads, like a proof);
entry bundles, up to 256 leaves, on the server's thread pool.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import ssl
import time
from pathlib import Path

from aiohttp import web

from sealog.client.tiles import TileFormatError, TileID, parse_path
from sealog.server.auth import Authenticator, Principal
from sealog.server.errors import NotFoundError, PermissionDeniedError, UnauthenticatedError
from sealog.server.log import Log
from sealog.server.rpc_observer import RpcObserver
from sealog.server.storage import StorageCorruptError
from sealog.server.tiles import EntriesPrunedError, read_bundle, read_tile

__all__ = [
    "CHECKPOINT_MAX_AGE_S",
    "IMMUTABLE_MAX_AGE_S",
    "MAX_PATH_BYTES",
    "TileCache",
    "TileService",
    "normalize_prefix",
    "tiles_ssl_context",
]

log = logging.getLogger(__name__)

CHECKPOINT_MAX_AGE_S = 5
"""How long a cache may keep the checkpoint (c2sp.org/tlog-tiles: "a few seconds")."""
IMMUTABLE_MAX_AGE_S = 365 * 24 * 3600
"""How long a cache may keep a tile or an entry bundle: a year, and ``immutable``."""
MAX_PATH_BYTES = 256
"""Longer request paths are answered 404 without being parsed (the longest tile path
below the prefix is under 40 bytes)."""

OCTETS = "application/octet-stream"
TEXT = "text/plain; charset=utf-8"
_PUBLIC_IMMUTABLE = f"public, max-age={IMMUTABLE_MAX_AGE_S}, immutable"
_PRIVATE_IMMUTABLE = f"private, max-age={IMMUTABLE_MAX_AGE_S}, immutable"
_CHECKPOINT_CACHE = f"public, max-age={CHECKPOINT_MAX_AGE_S}"
_NO_STORE = "no-store"


class TileCache:
    """The full hash tiles served last, at most ``max_bytes`` of them (least recently
    used out first). Used on the event loop's thread only."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._tiles: collections.OrderedDict[TileID, bytes] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._tiles)

    def get(self, tile: TileID) -> bytes | None:
        data = self._tiles.get(tile)
        if data is not None:
            self._tiles.move_to_end(tile)
        return data

    def put(self, tile: TileID, data: bytes) -> None:
        """Keep ``data``, the bytes of full tile ``tile``."""
        if not tile.is_full or len(data) > self.max_bytes or tile in self._tiles:
            return
        self._tiles[tile] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, old = self._tiles.popitem(last=False)
            self.bytes -= len(old)


def normalize_prefix(prefix: str) -> str:
    """``prefix`` as a URL path that starts and ends with ``/`` (``/`` for none).

    Raises :class:`ValueError` for a prefix with ``..``, ``.``, empty segments, a
    query, a fragment or characters outside printable ASCII.
    """
    parts = [p for p in prefix.strip("/").split("/")] if prefix.strip("/") else []
    for part in parts:
        if (
            part in ("", ".", "..")
            or not part.isascii()
            or not part.isprintable()
            or any(c in part for c in "?#% ")
        ):
            raise ValueError(
                f"tiles prefix {prefix!r}: want path segments of printable ASCII, "
                "without '.', '..', empty segments, spaces, '?', '#' or '%'"
            )
    return "/" + "".join(p + "/" for p in parts)


def tiles_ssl_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None
) -> ssl.SSLContext:
    """The TLS context of the tiles listener: the gRPC server's certificate; with a client
    CA, client certificates it signed are asked for but optional (public tiles need none)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        context.load_verify_locations(cafile=client_ca_file)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def _client_certificate(request: web.Request) -> bytes | None:
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return ssl.DER_cert_to_PEM_cert(der).encode("ascii") if der else None


def _error(status: int, text: str, headers: dict[str, str] | None = None) -> web.Response:
    response = web.Response(status=status, text=text + "\n", content_type="text/plain")
    response.headers["Cache-Control"] = _NO_STORE
    if headers:
        response.headers.update(headers)
    return response


def _resource(tile: TileID) -> str:
    """The metric and access-log name of a kind of resource (never the path itself)."""
    return "tile/entries" if tile.is_entries else f"tile/{tile.level}"


class TileService:
    """The tlog-tiles routes of one log, as an :class:`aiohttp.web.Application`.

    ``executor`` reads entry bundles (the event loop's default one if None);
    ``observer`` is told of every request (metrics and the access log), as of RPCs.
    """

    def __init__(
        self,
        the_log: Log,
        auth: Authenticator,
        *,
        prefix: str = "",
        cache_bytes: int = 32 * 1024 * 1024,
        executor: concurrent.futures.Executor | None = None,
        observer: RpcObserver | None = None,
        max_bundle_reads: int = 16,
    ) -> None:
        self.log = the_log
        self.auth = auth
        self.prefix = normalize_prefix(prefix)
        self.cache = TileCache(cache_bytes)
        self._executor = executor
        self._observer = observer
        self._bundle_reads = max_bundle_reads
        self._bundles_in_flight = 0

    def app(self) -> web.Application:
        """A new application serving these routes (every other path: 404; methods other
        than GET and HEAD: 405)."""
        app = web.Application(handler_args={"max_line_size": 1024, "max_field_size": 8190})
        app.router.add_get("/{path:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        principal = Principal("", "anonymous")
        resource = "other"
        rejection = ""
        response: web.StreamResponse
        try:
            path = request.raw_path.split("?", 1)[0]
            if len(path) > MAX_PATH_BYTES or not path.startswith(self.prefix):
                response = _error(404, "not found")
            else:
                rest = path[len(self.prefix) :]
                if rest == "checkpoint":
                    resource = "checkpoint"
                    response = self._checkpoint()
                elif rest.startswith("tile/"):
                    try:
                        tile = parse_path(rest)
                    except TileFormatError as e:
                        response = _error(400, f"invalid tile path: {e}")
                    else:
                        resource = _resource(tile)
                        if tile.is_entries:
                            principal, rejection, response = await self._bundle(request, tile)
                        else:
                            response = self._tile(tile)
                else:
                    response = _error(404, "not found")
        except StorageCorruptError as e:
            log.error("tiles: %s: storage is damaged: %s", request.raw_path[:MAX_PATH_BYTES], e)
            response = _error(500, "internal error; see the server log")
        if self._observer is not None:
            body = response.body if isinstance(response, web.Response) else None
            self._observer.record(
                started,
                "http",
                resource,
                str(response.status),
                request.remote or "",
                principal.identity,
                principal.method,
                rejection,
                None,
                len(body) if isinstance(body, bytes) else 0,
            )
        return response

    # --- resources ---------------------------------------------------------------------
    def _checkpoint(self) -> web.Response:
        with self.log.storage.read() as snap:
            note = snap.checkpoint()
        assert note is not None  # a log being served has its first checkpoint
        response = web.Response(body=note, headers={"Content-Type": TEXT})
        response.headers["Cache-Control"] = _CHECKPOINT_CACHE
        return response

    def _tile(self, tile: TileID) -> web.Response:
        data = self.cache.get(tile) if tile.is_full else None
        if data is None:
            try:
                with self.log.storage.read() as snap:
                    data = read_tile(snap, tile)
            except NotFoundError as e:
                return _error(404, str(e))
            self.cache.put(tile, data)
        return self._immutable(data, public=True)

    async def _bundle(
        self, request: web.Request, bundle: TileID
    ) -> tuple[Principal, str, web.Response]:
        principal = Principal("", "anonymous")
        try:
            authorization = request.headers.getall("Authorization", [])
            if len(authorization) > 1:
                raise UnauthenticatedError("more than one Authorization header")
            principal = self.auth.authenticate_credentials(
                authorization[0] if authorization else None,
                None if authorization else _client_certificate(request),
            )
            self.auth.authorize(principal, "read", "read entry bundles")
        except UnauthenticatedError as e:
            response = _error(401, str(e), {"WWW-Authenticate": 'Bearer realm="sealog"'})
            return principal, "unauthenticated", response
        except PermissionDeniedError as e:
            return principal, "permission_denied", _error(403, str(e))
        if self._bundles_in_flight >= self._bundle_reads:
            busy = _error(503, "too many entry bundles being read; retry", {"Retry-After": "1"})
            return principal, "", busy
        self._bundles_in_flight += 1
        try:
            data = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._read_bundle, bundle
            )
        except NotFoundError as e:
            return principal, "", _error(404, str(e))
        except EntriesPrunedError as e:
            return principal, "", _error(410, str(e))
        except TileFormatError as e:  # a stored leaf longer than a bundle can hold
            log.error("tiles: cannot serve %s: %s", bundle.path, e)
            return principal, "", _error(500, f"{bundle.path} cannot be served; see the server log")
        finally:
            self._bundles_in_flight -= 1
        policy = self.auth.policy
        public = policy is None or policy.public_read
        response = self._immutable(data, public=public)
        if "gzip" in request.headers.get("Accept-Encoding", "").lower():
            response.enable_compression(web.ContentCoding.gzip)
        response.headers["Vary"] = "Accept-Encoding, Authorization"
        return principal, "", response

    def _read_bundle(self, bundle: TileID) -> bytes:
        with self.log.storage.read() as snap:
            return read_bundle(snap, bundle)

    @staticmethod
    def _immutable(data: bytes, *, public: bool) -> web.Response:
        response = web.Response(body=data, headers={"Content-Type": OCTETS})
        response.headers["Cache-Control"] = _PUBLIC_IMMUTABLE if public else _PRIVATE_IMMUTABLE
        return response
