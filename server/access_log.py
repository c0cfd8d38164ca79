"""The access log: one line per RPC, what an operator needs to see who did what.

A line holds the method, the peer's address, the authenticated identity (empty
when the caller presented none, or one that did not authenticate) and how
(``api_key``, ``mtls`` or ``anonymous``), the status code, the duration and the
sizes of the request and the response. Never a key, a token or a payload: the
identity is the policy's name for the caller, not its credential.

Lines are written in batches by :mod:`sealog.server.rpc_observer`, through the
log handler that :func:`~sealog.server.log_format.configure_logging` set up, in
its format::

    2026-12-02T16:38:38.123Z INFO sealog.access: Append OK 1.234ms peer=ipv4:127.0.0.1:51234
    identity=ci-deployer auth=api_key request_bytes=312 response_bytes=905

    {"time": "2026-12-02T16:38:38.123Z", "level": "INFO", "logger": "sealog.access",
     "message": "Append OK", "method": "Append", "code": "OK", "duration_ms": 1.234,
     "peer": "ipv4:127.0.0.1:51234", "identity": "ci-deployer", "auth": "api_key",
     "request_bytes": 312, "response_bytes": 905}

(each is one line).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from sealog.server.log_format import LogFormat, format_time, text_value

if TYPE_CHECKING:
    from sealog.server.rpc_observer import RpcRecord

__all__ = ["LOGGER_NAME", "AccessLog"]

LOGGER_NAME = "sealog.access"


class AccessLog:
    """Formats :class:`~sealog.server.rpc_observer.RpcRecord` lines; writes many at once."""

    def __init__(self, handler: logging.StreamHandler[TextIO], log_format: LogFormat) -> None:
        self._handler = handler
        self._json = log_format == "json"

    def line(self, r: RpcRecord) -> str:
        """One record's line, without the newline."""
        duration_ms = round(r.seconds * 1000, 3)
        if self._json:
            return json.dumps(
                {
                    "time": format_time(r.time),
                    "level": "INFO",
                    "logger": LOGGER_NAME,
                    "message": f"{r.method} {r.code}",
                    "method": r.method,
                    "code": r.code,
                    "duration_ms": duration_ms,
                    "peer": r.peer,
                    "identity": r.identity,
                    "auth": r.auth,
                    "request_bytes": r.request_bytes,
                    "response_bytes": r.response_bytes,
                },
                ensure_ascii=True,
            )
        return (
            f"{format_time(r.time)} INFO {LOGGER_NAME}: {r.method} {r.code} {duration_ms:.3f}ms "
            f"peer={text_value(r.peer)} identity={text_value(r.identity)} auth={r.auth} "
            f"request_bytes={r.request_bytes} response_bytes={r.response_bytes}"
        )

    def write(self, records: Sequence[RpcRecord]) -> None:
        """Write one line per record, in one write, under the handler's lock (so no other
        log line lands inside one). An error writing is handled as logging handles its own."""
        if not records:
            return
        text = "\n".join(self.line(r) for r in records) + "\n"
        handler = self._handler
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.flush()
        except Exception:
            handler.handleError(
                logging.LogRecord(LOGGER_NAME, logging.INFO, __file__, 0, "access log", (), None)
            )
        finally:
            handler.release()
