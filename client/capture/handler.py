"""A ``logging`` handler that turns each log record into an audit event.

It hands :class:`~sealog.client.event.AuditEvent` payloads to an
:class:`~sealog.client.capture.shipper.EventShipper`, which sends them in the
background; it never waits for the network, and a failure of its own goes to
``logging``'s ``handleError``, never to the service. docs/capture.md shows the
few lines a service adds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from sealog.client.capture.shipper import EventShipper
from sealog.client.event import AuditEvent, event_text

__all__ = ["SealogHandler"]

# Records of the shipper's and the interceptor's own loggers are never captured: a
# warning that the log is unreachable must not feed itself.
_OWN_LOGGERS = ("sealog.client.capture.shipper", "sealog.client.capture.interceptor")


class SealogHandler(logging.Handler):
    """A ``logging.Handler`` that turns each record into an audit event.

    Field by field:

    - ``action``: ``extra={"action": ...}``, else ``default_action`` ("log");
    - ``resource``, ``outcome``, ``request_id``, ``trace_id``: from ``extra``
      when present (``outcome`` must be one of the event outcomes);
    - ``event_time_ms``: ``record.created``;
    - ``attributes``: ``extra={"attributes": {...}}`` (values made strings),
      then ``logger``, ``level`` and ``message`` (the record formatted by this
      handler's formatter — with the traceback, if any — escaped and cut to
      the field limit), which the ``attributes`` extra cannot override.

    :meth:`emit` never raises: a record that cannot become an event goes to
    ``handleError`` (a traceback on stderr, as ``logging`` does). Records of
    the shipper's own loggers and of its sender thread are skipped, so a
    warning that the log is unreachable does not feed itself. Closing the
    handler does not close the shipper, which the interceptor may share.
    """

    def __init__(
        self,
        shipper: EventShipper,
        level: int | str = logging.NOTSET,
        *,
        default_action: str = "log",
    ) -> None:
        super().__init__(level)
        self.shipper = shipper
        self.default_action = default_action

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.name.startswith(_OWN_LOGGERS) or self.shipper.is_shipper_thread():
                return
            self.shipper.submit(self.to_event(record))
        except Exception:
            self.handleError(record)

    def to_event(self, record: logging.LogRecord) -> AuditEvent:
        """The audit event for ``record`` (see the class docstring)."""
        extra = record.__dict__
        attributes: dict[str, str] = {}
        given = extra.get("attributes")
        if isinstance(given, Mapping):
            attributes.update({str(k): event_text(v) for k, v in given.items()})
        attributes["logger"] = event_text(record.name)
        attributes["level"] = record.levelname
        attributes["message"] = event_text(self.format(record))
        return AuditEvent(
            action=event_text(extra.get("action") or self.default_action),
            resource=_extra_text(extra, "resource"),
            outcome=_extra_text(extra, "outcome"),
            event_time_ms=int(record.created * 1000),
            request_id=_extra_text(extra, "request_id"),
            trace_id=_extra_text(extra, "trace_id"),
            attributes=attributes,
        )


def _extra_text(extra: Mapping[str, Any], name: str) -> str:
    value = extra.get(name)
    return "" if value is None else event_text(value)
