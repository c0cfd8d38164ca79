"""The audit event: the typed payload for "who did what to which resource, and how it went".

A leaf's payload is opaque bytes; an audit event is one agreed shape for it
(docs/audit-events.md). Its encoding is canonical, so a third party can
re-encode what it parsed and get the same bytes::

    sealog-event/v1\\n{"action":"deploy","outcome":"success","resource":"svc/payments"}

- the line ``sealog-event/v1`` and a newline mark the payload as an event (a
  raw payload that does not start with it is simply not one);
- then one JSON object: keys sorted, no insignificant whitespace, UTF-8 (no
  ``\\u`` escapes except where JSON requires them), only strings, integers and
  a string-to-string ``attributes`` object; empty fields are left out.

Who submitted the event and when the log accepted it are not in the payload:
the server stamps both into the leaf itself, where the client cannot set them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sealog.client.errors import FormatError

__all__ = ["EVENT_PREFIX", "OUTCOMES", "AuditEvent", "EventFormatError", "event_text"]

EVENT_PREFIX = b"sealog-event/v1\n"
OUTCOMES = ("success", "failure", "denied", "error", "unknown")
MAX_FIELD_CHARS = 1024
MAX_ATTRIBUTES = 64
_KEY = re.compile(r"^[A-Za-z0-9_.\-/:]{1,128}$")


class EventFormatError(FormatError):
    """A payload that claims to be an audit event but is not a canonical one."""


def _check_text(name: str, value: object, *, required: bool = False) -> None:
    if not isinstance(value, str):
        raise EventFormatError(f"{name}: {type(value).__name__}, want a string")
    if required and not value:
        raise EventFormatError(f"{name}: empty, want a non-empty string")
    if len(value) > MAX_FIELD_CHARS:
        raise EventFormatError(f"{name}: {len(value)} characters, want <= {MAX_FIELD_CHARS}")
    if any(ord(c) < 0x20 for c in value):
        raise EventFormatError(f"{name}: contains a control character")


@dataclass(frozen=True)
class AuditEvent:
    """One action of a machine identity. Only ``action`` is required."""

    action: str
    resource: str = ""
    outcome: str = ""
    event_time_ms: int = 0
    """The client's own clock, ms since the Unix epoch (0: not given)."""
    request_id: str = ""
    trace_id: str = ""
    attributes: MappingProxyType[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def __init__(
        self,
        action: str,
        resource: str = "",
        outcome: str = "",
        event_time_ms: int = 0,
        request_id: str = "",
        trace_id: str = "",
        attributes: dict[str, str] | MappingProxyType[str, str] | None = None,
    ) -> None:
        object.__setattr__(self, "action", action)
        object.__setattr__(self, "resource", resource)
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "event_time_ms", event_time_ms)
        object.__setattr__(self, "request_id", request_id)
        object.__setattr__(self, "trace_id", trace_id)
        object.__setattr__(self, "attributes", MappingProxyType(dict(attributes or {})))
        self._validate()

    def _validate(self) -> None:
        _check_text("action", self.action, required=True)
        for name in ("resource", "request_id", "trace_id"):
            _check_text(name, getattr(self, name))
        if self.outcome and self.outcome not in OUTCOMES:
            raise EventFormatError(f"outcome: {self.outcome!r}, want one of {', '.join(OUTCOMES)}")
        if (
            not isinstance(self.event_time_ms, int)
            or isinstance(self.event_time_ms, bool)
            or not 0 <= self.event_time_ms < 2**63
        ):
            raise EventFormatError(f"event_time_ms: {self.event_time_ms!r}, want 0 <= ms < 2^63")
        if len(self.attributes) > MAX_ATTRIBUTES:
            raise EventFormatError(
                f"attributes: {len(self.attributes)} entries, want <= {MAX_ATTRIBUTES}"
            )
        for key, value in self.attributes.items():
            if not isinstance(key, str) or not _KEY.match(key):
                raise EventFormatError(
                    f"attributes key {key!r}: want 1-128 characters of A-Z a-z 0-9 _ . - / :"
                )
            _check_text(f"attributes[{key}]", value)

    def _fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"action": self.action}
        for name in ("resource", "outcome", "request_id", "trace_id"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.event_time_ms:
            out["event_time_ms"] = self.event_time_ms
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out

    def to_payload(self) -> bytes:
        """The canonical payload bytes (see the module docstring)."""
        body = json.dumps(self._fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return EVENT_PREFIX + body.encode("utf-8")

    @staticmethod
    def is_event(payload: bytes) -> bool:
        """Whether the payload claims to be an audit event (starts with the marker line)."""
        return payload.startswith(EVENT_PREFIX)

    @classmethod
    def from_payload(cls, payload: bytes) -> AuditEvent:
        """Parse a canonical event payload; raise :class:`EventFormatError` saying what is wrong."""
        if not cls.is_event(payload):
            raise EventFormatError("payload: not an audit event (no sealog-event/v1 line)")
        body = payload[len(EVENT_PREFIX) :]
        try:
            fields = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise EventFormatError(f"event: not UTF-8 JSON: {e}") from None
        if not isinstance(fields, dict):
            raise EventFormatError("event: want a JSON object")
        known = {
            "action",
            "resource",
            "outcome",
            "event_time_ms",
            "request_id",
            "trace_id",
            "attributes",
        }
        unknown = sorted(set(fields) - known)
        if unknown:
            raise EventFormatError(f"event: unknown fields {unknown}")
        attributes = fields.get("attributes", {})
        if not isinstance(attributes, dict):
            raise EventFormatError("attributes: want a JSON object of strings")
        try:
            event = cls(
                action=fields.get("action", ""),
                resource=fields.get("resource", ""),
                outcome=fields.get("outcome", ""),
                event_time_ms=fields.get("event_time_ms", 0),
                request_id=fields.get("request_id", ""),
                trace_id=fields.get("trace_id", ""),
                attributes=attributes,
            )
        except TypeError as e:
            raise EventFormatError(f"event: {e}") from None
        if event.to_payload() != payload:
            raise EventFormatError("event: not in canonical form (key order, spacing or escapes)")
        return event


def event_text(value: object) -> str:
    """``value`` as an event field: control characters escaped, at most MAX_FIELD_CHARS.

    Escapes ``\\n``, ``\\r``, ``\\t`` and other characters below U+0020 (which
    the event encoding forbids) as ``\\n``/``\\r``/``\\t``/``\\xNN``; a longer
    text is cut and ends with ``…``.
    """
    text = value if isinstance(value, str) else str(value)
    if any(ord(c) < 0x20 for c in text):
        text = text.translate(_ESCAPES)
    if len(text) > MAX_FIELD_CHARS:
        text = text[: MAX_FIELD_CHARS - 1] + "…"
    return text


_ESCAPES = {i: f"\\x{i:02x}" for i in range(0x20)} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}
