"""``sealog witness serve``: a C2SP tlog-witness over HTTP (stdlib ``http.server``).

Serves ``POST <prefix>/add-checkpoint`` (c2sp.org/tlog-witness) for a
:class:`~sealog.client.witness.Witness`. Keep-alive HTTP/1.1, one thread per
connection, bodies bounded by :data:`~sealog.client.witness.MAX_REQUEST_BYTES`.
Plain HTTP: put it behind a TLS proxy, or a c2sp.org/https-bastion, to expose
it beyond loopback.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sealog.client.witness import ADD_CHECKPOINT, MAX_REQUEST_BYTES, Witness, WitnessError

__all__ = ["WitnessHTTPServer"]

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WitnessHTTPServer

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != self.server.add_checkpoint_path:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._send(411, b"Content-Length required\n", "text/plain; charset=utf-8")
            self.close_connection = True
            return
        if int(length) > MAX_REQUEST_BYTES:
            self._send(413, b"request too large\n", "text/plain; charset=utf-8")
            self.close_connection = True
            return
        body = self.rfile.read(int(length))
        try:
            lines = self.server.witness.add_checkpoint(body)
        except WitnessError as e:
            self._send(e.status, e.body, e.content_type)
            return
        except Exception:
            log.exception("add-checkpoint failed")
            self._send(500, b"internal error\n", "text/plain; charset=utf-8")
            return
        self._send(200, lines, "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        self._send(405, b"use POST <prefix>/add-checkpoint\n", "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s " + format, self.address_string(), *args)


class WitnessHTTPServer(ThreadingHTTPServer):
    """The witness on ``(host, port)``; port 0 picks one (see :attr:`port`)."""

    daemon_threads = True

    def __init__(self, witness: Witness, host: str = "127.0.0.1", port: int = 0, prefix: str = ""):
        self.witness = witness
        self.host = host
        self.add_checkpoint_path = prefix.rstrip("/") + "/" + ADD_CHECKPOINT
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The full add-checkpoint URL."""
        return f"http://{self.host}:{self.port}{self.add_checkpoint_path}"

    def start(self) -> WitnessHTTPServer:
        """Serve on a background thread."""
        self._thread = threading.Thread(
            target=self.serve_forever, name="sealog-witness-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
        self.server_close()
