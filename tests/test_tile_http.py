"""The tlog-tiles HTTP listener of ``sealog serve``: routes, bytes, caching, access control.

What a reader of c2sp.org/tlog-tiles relies on: each path holds the hashes the
spec's formula gives (checked against RFC 6962 written out in
``tests/rfc6962_reference.py`` at more than 10^4 leaves), paths have one form,
what is not in the tree is 404, what never changes says so to caches, and
entry bundles are only given to callers the read policy admits.
"""

from __future__ import annotations

import http.client as httplib
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from e2e_support import RunningLog
from pki import Issued, TestCA
from rfc6962_reference import ReferenceTree

from sealog.client.checkpoint import open_checkpoint
from sealog.client.hashing import leaf_hash
from sealog.client.http_serve import HttpLimits, HttpServer
from sealog.client.leaf import LEAF_FIXED_BYTES, MAX_IDENTITY_BYTES, Leaf
from sealog.client.log_client import LogClient
from sealog.client.tiles import (
    MAX_BUNDLE_LEAF_BYTES,
    TileID,
    decode_bundle,
    decode_tile,
    tiles_for_size,
)
from sealog.server.app import TlsFiles
from sealog.server.auth import Authenticator
from sealog.server.config import MAX_ENTRY_BYTES, Settings
from sealog.server.policy import hash_api_key, new_api_key
from sealog.server.storage import ReadSnapshot
from sealog.server.tile_http import (
    CHECKPOINT_MAX_AGE_S,
    TileService,
    normalize_prefix,
)

IMMUTABLE = "public, max-age=31536000, immutable"


class Http:
    """Plain HTTP/1.1 requests to one listener (keep-alive, like a tile reader)."""

    def __init__(self, port: int, context: ssl.SSLContext | None = None) -> None:
        self.port = port
        self.context = context

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self.context is None:
            conn: httplib.HTTPConnection = httplib.HTTPConnection(
                "127.0.0.1", self.port, timeout=10
            )
        else:
            conn = httplib.HTTPSConnection("localhost", self.port, timeout=10, context=self.context)
        try:
            conn.request(method, path, headers=headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def get(self, path: str, **kwargs: Any) -> bytes:
        status, _, body = self.request(path, **kwargs)
        assert status == 200, (path, status, body)
        return body


def fill(client: LogClient, count: int, batch: int = 1000) -> list[bytes]:
    """Append ``count`` entries; return their leaves in order."""
    leaves: list[bytes] = []
    done = 0
    while done < count:
        n = min(batch, count - done)
        result = client.append_batch([b"event %d" % (done + i) for i in range(n)])
        leaves += [e.leaf for e in result.entries]
        done += n
    return leaves


# --- one log of more than 10^4 entries, shared by the read-only tests ----------------
SIZE = 10_241  # 40 full level-0 tiles and a partial one of width 1


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningLog, list[bytes]]]:
    running = RunningLog(
        tmp_path_factory.mktemp("big") / "data",
        tiles_address="127.0.0.1:0",
        tiles_prefix="/logs/a/",
    )
    try:
        yield running, fill(running.client(), SIZE)
    finally:
        running.stop()


@pytest.fixture
def http(big: tuple[RunningLog, list[bytes]]) -> Http:
    assert big[0].server.tiles is not None
    return Http(big[0].server.tiles.port)


def test_every_tile_of_a_tree_of_10k_leaves_holds_the_rfc6962_hashes(
    big: tuple[RunningLog, list[bytes]], http: Http
) -> None:
    running, leaves = big
    cp = open_checkpoint(http.get("/logs/a/checkpoint"), running.verifier).checkpoint
    assert cp.size == SIZE
    reference = ReferenceTree(leaves)
    assert reference.mth(0, SIZE) == cp.root_hash
    tiles = list(tiles_for_size(SIZE))
    assert [t.path for t in tiles if not t.is_full] == [
        "tile/0/040.p/1",
        "tile/1/000.p/40",
    ]
    for tile in tiles:
        hashes = decode_tile(tile, http.get("/logs/a/" + tile.path))
        span = 256**tile.level
        for i, h in enumerate(hashes):
            first = (tile.index * 256 + i) * span
            assert h == reference.mth(first, first + span), (tile.path, i)
    for n in range(SIZE // 256 + 1):
        width = min(256, SIZE - 256 * n)
        bundle = TileID(-1, n, width)
        got = decode_bundle(bundle, http.get("/logs/a/" + bundle.path))
        assert got == leaves[256 * n : 256 * n + width]


def test_headers_say_what_caches_may_keep(http: Http) -> None:
    status, headers, _ = http.request("/logs/a/checkpoint")
    assert (status, headers["content-type"]) == (200, "text/plain; charset=utf-8")
    assert headers["cache-control"] == f"public, max-age={CHECKPOINT_MAX_AGE_S}"
    for path in ("tile/0/000", "tile/0/040.p/1", "tile/1/000.p/40", "tile/entries/007"):
        status, headers, _body = http.request("/logs/a/" + path)
        assert status == 200
        assert headers["content-type"] == "application/octet-stream"
        assert headers["cache-control"] == IMMUTABLE
    status, headers, _ = http.request("/logs/a/tile/0/041")
    assert (status, headers["cache-control"]) == (404, "no-store")


def test_head_answers_the_headers_of_get_without_a_body(http: Http) -> None:
    for path in ("checkpoint", "tile/0/003", "tile/entries/003.p/9", "tile/0/999"):
        got = http.request("/logs/a/" + path)
        head = http.request("/logs/a/" + path, method="HEAD")
        assert head[0] == got[0]
        assert head[2] == b""
        assert head[1]["content-length"] == str(len(got[2]))
        assert head[1]["cache-control"] == got[1]["cache-control"]


def test_a_partial_tile_of_a_width_the_tree_passed_is_the_full_tiles_prefix(
    http: Http,
) -> None:
    full = http.get("/logs/a/tile/0/002")
    for width in (1, 17, 255):
        assert http.get(f"/logs/a/tile/0/002.p/{width}") == full[: 32 * width]
    bundle = http.get("/logs/a/tile/entries/002")
    partial = http.get("/logs/a/tile/entries/002.p/3")
    assert bundle.startswith(partial)
    level1 = http.get("/logs/a/tile/1/000.p/40")
    assert http.get("/logs/a/tile/1/000.p/39") == level1[: 32 * 39]


def test_what_the_tree_does_not_have_is_404(http: Http) -> None:
    for path in (
        "tile/0/041",  # past the last leaf
        "tile/0/040.p/2",  # wider than the tree's partial tile
        "tile/0/040",  # the full tile of the partial one
        "tile/1/000",  # level 1 has 40 hashes, not 256
        "tile/2/000.p/1",  # the tree has no level 2
        "tile/entries/040.p/2",
        "tile/entries/x001/000",
    ):
        status, _headers, body = http.request("/logs/a/" + path)
        assert status == 404, path
        assert b"not in the tree of size 10241" in body


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/x000/002",  # a leading zero group
        "tile/0/2",  # not three digits
        "tile/0/0002",
        "tile/0/002.p/256",  # a full tile is not partial
        "tile/0/002.p/0",
        "tile/0/002.p/07",
        "tile/8/000",  # past the levels a 64-bit tree has
        "tile/00/000",
        "tile/entries/002/",
        "tile/0/x002",
        "tile/data/000",
        "tile/0/%30%30%32",
    ],
)
def test_a_tile_path_not_in_its_one_canonical_form_is_400(http: Http, path: str) -> None:
    status, headers, body = http.request("/logs/a/" + path)
    assert status == 400, (path, body)
    assert body.startswith(b"invalid tile path")
    assert headers["cache-control"] == "no-store"


def test_paths_outside_the_routes_are_404_and_other_methods_405(http: Http) -> None:
    for path in ("/checkpoint", "/logs/a/", "/logs/a/checkpoint/", "/logs/b/checkpoint", "/"):
        assert http.request(path)[0] == 404, path
    assert http.request("/logs/a/tile/0/" + "x000/" * 100 + "001")[0] == 404  # too long to parse
    status, headers, _ = http.request("/logs/a/checkpoint", method="POST")
    assert status == 405
    assert "GET" in headers["allow"]


def test_a_request_line_too_long_is_refused_before_routing(http: Http) -> None:
    status, _, body = http.request("/logs/a/" + "x" * 5000)
    assert status == 400
    assert b"Got more than 1024 bytes" in body
    status, _, _ = http.request("/checkpoint", headers={"X-Big": "y" * 9000})
    assert status == 400


def test_full_tiles_are_served_from_memory_once_read(
    big: tuple[RunningLog, list[bytes]], http: Http
) -> None:
    service = big[0].server.tile_service
    assert service is not None
    first = http.get("/logs/a/tile/0/010")
    assert service.cache.get(TileID(0, 10)) == first
    http.get("/logs/a/tile/0/010.p/5")
    assert service.cache.get(TileID(0, 10, 5)) is None  # only full tiles are kept
    assert http.get("/logs/a/tile/0/010") == first


def test_the_tile_cache_stays_within_its_bound() -> None:
    from sealog.server.tile_http import TileCache

    cache = TileCache(3 * 8192)
    for n in range(10):
        cache.put(TileID(0, n), bytes([n]) * 8192)
        assert cache.bytes <= 3 * 8192
    assert len(cache) == 3
    assert cache.get(TileID(0, 9)) == bytes([9]) * 8192
    assert cache.get(TileID(0, 0)) is None


def test_entry_bundles_are_gzipped_for_readers_that_accept_it(http: Http) -> None:
    import gzip

    plain = http.get("/logs/a/tile/entries/001")
    status, headers, body = http.request(
        "/logs/a/tile/entries/001", headers={"Accept-Encoding": "gzip"}
    )
    assert (status, headers["content-encoding"]) == (200, "gzip")
    assert "Accept-Encoding" in headers["vary"]
    assert gzip.decompress(body) == plain


def test_tile_prefixes_are_checked() -> None:
    assert normalize_prefix("") == "/"
    assert normalize_prefix("/a/b") == "/a/b/"
    for bad in ("/a/../b", "a//b", "/a b/", "/a?x", "/%2e/"):
        with pytest.raises(ValueError, match="tiles prefix"):
            normalize_prefix(bad)


# --- access control -----------------------------------------------------------------
def _policy(path: Path, *, public_read: bool, keys: dict[str, str], roles: dict[str, str]) -> Path:
    text = f"public_read = {'true' if public_read else 'false'}\n"
    for name, role_list in roles.items():
        text += f'[[identity]]\nname = "{name}"\nroles = [{role_list}]\n'
    for identity, token in keys.items():
        text += f'[[api_key]]\nidentity = "{identity}"\nsha256 = "{hash_api_key(token)}"\n'
    path.write_text(text)
    return path


def test_bundles_need_the_read_role_and_hash_tiles_do_not(tmp_path: Path) -> None:
    reader, writer = new_api_key(), new_api_key()
    policy = _policy(
        tmp_path / "policy.toml",
        public_read=False,
        keys={"reader": reader, "writer": writer},
        roles={"reader": '"read"', "writer": '"append"'},
    )
    running = RunningLog(tmp_path / "data", tiles_address="127.0.0.1:0", policy_file=policy)
    try:
        fill(running.client(api_key=writer), 300)
        assert running.server.tiles is not None
        web = Http(running.server.tiles.port)
        for path in ("/checkpoint", "/tile/0/000", "/tile/0/001.p/44", "/tile/1/000.p/1"):
            assert web.request(path)[0] == 200, path
        status, headers, body = web.request("/tile/entries/000")
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert b"needs an identity" in body
        status, _, body = web.request(
            "/tile/entries/000", headers={"Authorization": "Bearer sealog_wrong"}
        )
        assert (status, body) == (401, b"the API key is not valid for this log\n")
        status, _, body = web.request("/tile/entries/000", headers={"Authorization": "Basic x"})
        assert status == 401
        status, _, body = web.request(
            "/tile/entries/000", headers={"Authorization": f"Bearer {writer}"}
        )
        assert status == 403
        assert b"needs role 'read'" in body
        status, headers, body = web.request(
            "/tile/entries/000", headers={"Authorization": f"Bearer {reader}"}
        )
        assert status == 200
        assert headers["cache-control"] == "private, max-age=31536000, immutable"
        assert len(decode_bundle(TileID(-1, 0), body)) == 256
        # A revoked key is refused from the next request on (SIGHUP, Reload).
        _policy(policy, public_read=False, keys={}, roles={"reader": '"read"'})
        running.server.auth.reload()
        status, _, _ = web.request(
            "/tile/entries/000", headers={"Authorization": f"Bearer {reader}"}
        )
        assert status == 401
    finally:
        running.stop()


def test_public_reads_make_bundles_public(tmp_path: Path) -> None:
    writer = new_api_key()
    policy = _policy(
        tmp_path / "policy.toml",
        public_read=True,
        keys={"writer": writer},
        roles={"writer": '"append"'},
    )
    running = RunningLog(tmp_path / "data", tiles_address="127.0.0.1:0", policy_file=policy)
    try:
        fill(running.client(api_key=writer), 1)
        assert running.server.tiles is not None
        web = Http(running.server.tiles.port)
        status, headers, _ = web.request("/tile/entries/000.p/1")
        assert (status, headers["cache-control"]) == (200, IMMUTABLE)
    finally:
        running.stop()


def _client_context(ca: TestCA, cert: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


def test_over_tls_client_certificates_authenticate_bundle_reads(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server_cert = ca.issue("server", cn="localhost", dns=("localhost",), server=True)
    reader = ca.issue("reader", cn="reader", uri="spiffe://example.org/reader")
    other = ca.issue("other", cn="other", uri="spiffe://example.org/other")
    policy = _policy(
        tmp_path / "policy.toml",
        public_read=False,
        keys={},
        roles={"spiffe://example.org/reader": '"read", "append"', "spiffe://example.org/other": ""},
    )
    running = RunningLog(
        tmp_path / "data",
        address="localhost:0",
        tls=TlsFiles(server_cert.cert_file, server_cert.key_file, ca.ca_file),
        tiles_address="localhost:0",
        policy_file=policy,
    )
    try:
        assert running.server.tiles is not None
        port = running.server.tiles.port
        anonymous = Http(port, _client_context(ca, None))
        assert anonymous.request("/tile/0/000.p/1")[0] == 404  # an empty log
        assert anonymous.request("/checkpoint")[0] == 200
        assert anonymous.request("/tile/entries/000.p/1")[0] == 401
        with pytest.raises(ssl.SSLError):
            Http(port, ssl.create_default_context()).request("/checkpoint")  # not our CA
        cp = open_checkpoint(anonymous.get("/checkpoint"), running.verifier).checkpoint
        assert cp.size == 0
        # Entries appended over gRPC with the reader's certificate, read back over HTTPS.
        import grpc

        creds = grpc.ssl_channel_credentials(
            ca.ca_file.read_bytes(), reader.key_file.read_bytes(), reader.cert_file.read_bytes()
        )
        target = f"localhost:{running.server.port}"
        with LogClient(target, running.verifier, credentials=creds) as client:
            client.append_batch([b"a", b"b", b"c"])
        body = Http(port, _client_context(ca, reader)).get("/tile/entries/000.p/3")
        leaves = decode_bundle(TileID(-1, 0, 3), body)
        assert [Leaf.parse(x).identity for x in leaves] == ["spiffe://example.org/reader"] * 3
        status, _, body = Http(port, _client_context(ca, other)).request("/tile/entries/000.p/3")
        assert status == 403
        assert b"spiffe://example.org/other" in body
    finally:
        running.stop()


def test_plaintext_tiles_on_a_remote_address_are_refused(tmp_path: Path) -> None:
    from sealog.server.app import LogServer

    with pytest.raises(ValueError, match="plaintext HTTP tiles"):
        LogServer.open(tmp_path / "data", tiles_address="0.0.0.0:0")
    assert not (tmp_path / "data").exists()


# --- what storage may hold: pruned leaves, leaves too long for a bundle --------------
class _Snapshot:
    def __init__(self, inner: ReadSnapshot, pruned_below: int, long_leaf: int | None) -> None:
        self._inner = inner
        self._pruned = pruned_below
        self._long = long_leaf

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def pruned_below(self) -> int:
        return self._pruned

    def leaves(self, start: int, end: int) -> Iterator[bytes]:
        for i, leaf in enumerate(self._inner.leaves(start, end), start):
            yield b"\0" * (MAX_BUNDLE_LEAF_BYTES + 1) if i == self._long else leaf


class _Storage:
    def __init__(self, inner: Any, pruned_below: int, long_leaf: int | None = None) -> None:
        self._inner = inner
        self._args = (pruned_below, long_leaf)

    def read(self) -> AbstractContextManager[Any]:
        import contextlib

        @contextlib.contextmanager
        def snap() -> Iterator[Any]:
            with self._inner.read() as s:
                yield _Snapshot(s, *self._args)

        return snap()


class _Log:
    def __init__(self, storage: _Storage) -> None:
        self.storage = storage


def _serve(service: TileService, limits: HttpLimits | None = None) -> HttpServer:
    return HttpServer(service.app(), limits=limits).start()


def test_a_pruned_bundle_is_410_and_its_hash_tile_still_served(
    big: tuple[RunningLog, list[bytes]], caplog: pytest.LogCaptureFixture
) -> None:
    running, leaves = big
    fake = _Log(_Storage(running.server.storage, pruned_below=600, long_leaf=1000))
    server = _serve(TileService(fake, Authenticator()))  # type: ignore[arg-type]
    try:
        web = Http(server.port)
        for path in ("/tile/entries/000", "/tile/entries/002", "/tile/entries/002.p/100"):
            status, headers, body = web.request(path)
            assert status == 410, path
            assert b"pruned by the retention policy" in body
            assert headers["cache-control"] == "no-store"
        assert decode_tile(TileID(0, 0), web.get("/tile/0/000"))[5] == leaf_hash(leaves[5])
        assert web.get("/tile/entries/004") == b"".join(
            len(x).to_bytes(2, "big") + x for x in leaves[1024:1280]
        )
        status, _, body = web.request("/tile/entries/003")  # holds leaf 1000
        assert status == 500
        assert b"see the server log" in body
        assert "does not fit an entry bundle" in caplog.text
    finally:
        server.stop()


def test_every_leaf_the_server_accepts_fits_an_entry_bundle(tmp_path: Path) -> None:
    assert MAX_ENTRY_BYTES + LEAF_FIXED_BYTES + MAX_IDENTITY_BYTES == MAX_BUNDLE_LEAF_BYTES
    assert Settings().max_entry_bytes == MAX_ENTRY_BYTES
    with pytest.raises(ValueError, match=r"max_entry_bytes: 64497, want <= 64496"):
        Settings(max_entry_bytes=MAX_ENTRY_BYTES + 1)
    # The longest identity a certificate may carry and the largest payload: 65,535 bytes.
    ca = TestCA(tmp_path / "pki")
    server_cert = ca.issue("server", cn="localhost", dns=("localhost",), server=True)
    uri = "spiffe://example.org/" + "a" * (MAX_IDENTITY_BYTES - len("spiffe://example.org/"))
    longest = ca.issue("longest", cn="x", uri=uri)
    running = RunningLog(
        tmp_path / "data",
        address="localhost:0",
        tls=TlsFiles(server_cert.cert_file, server_cert.key_file, ca.ca_file),
        tiles_address="localhost:0",
    )
    try:
        import grpc

        creds = grpc.ssl_channel_credentials(
            ca.ca_file.read_bytes(), longest.key_file.read_bytes(), longest.cert_file.read_bytes()
        )
        target = f"localhost:{running.server.port}"
        with LogClient(target, running.verifier, credentials=creds) as client:
            leaf = client.append(b"p" * MAX_ENTRY_BYTES).leaf
        assert len(leaf) == MAX_BUNDLE_LEAF_BYTES
        assert running.server.tiles is not None
        body = Http(running.server.tiles.port, _client_context(ca, None)).get(
            "/tile/entries/000.p/1"
        )
        assert decode_bundle(TileID(-1, 0, 1), body) == [leaf]
    finally:
        running.stop()


# --- hostile clients ----------------------------------------------------------------
@pytest.mark.slow
def test_a_client_that_trickles_its_request_is_dropped(
    big: tuple[RunningLog, list[bytes]],
) -> None:
    service = TileService(big[0].server.log, Authenticator())
    limits = HttpLimits(header_timeout_s=0.5, keepalive_timeout_s=0.5)
    server = _serve(service, limits)
    try:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        started = time.monotonic()
        closed = False
        for ch in b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.send(bytes([ch]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            sock.settimeout(5)
            try:
                closed = sock.recv(100) == b""
            except OSError:
                closed = True
        assert closed
        assert time.monotonic() - started < 3
        # Meanwhile, and after, others are served.
        assert Http(server.port).request("/checkpoint")[0] == 200
    finally:
        server.stop()


def test_tile_requests_are_counted_by_resource_and_status(tmp_path: Path) -> None:
    import urllib.request

    running = RunningLog(
        tmp_path / "data", tiles_address="127.0.0.1:0", metrics_address="127.0.0.1:0"
    )
    try:
        fill(running.client(), 3)
        assert running.server.tiles is not None and running.server.metrics_listener is not None
        web = Http(running.server.tiles.port)
        web.get("/checkpoint")
        web.get("/tile/0/000.p/3")
        web.get("/tile/0/000.p/3")
        web.request("/tile/1/000")
        web.request("/nope")
        deadline = time.monotonic() + 5
        url = f"http://127.0.0.1:{running.server.metrics_listener.port}/metrics"
        want = [
            'sealog_tile_requests_total{code="200",resource="checkpoint"} 1.0',
            'sealog_tile_requests_total{code="200",resource="tile/0"} 2.0',
            'sealog_tile_requests_total{code="404",resource="tile/1"} 1.0',
            'sealog_tile_requests_total{code="404",resource="other"} 1.0',
            'sealog_tile_sent_bytes_total{resource="tile/0"} 192.0',
        ]
        while True:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            if all(w in text for w in want) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for w in want:
            assert w in text
        assert 'grpc_method="tile' not in text
    finally:
        running.stop()
