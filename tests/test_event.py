"""The audit event payload: typed, canonical, strict."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.event import EVENT_PREFIX, AuditEvent, EventFormatError


def test_documented_example() -> None:
    event = AuditEvent("deploy", "svc/payments", "success")
    want = b'sealog-event/v1\n{"action":"deploy","outcome":"success","resource":"svc/payments"}'
    assert event.to_payload() == want
    assert AuditEvent.from_payload(want) == event


texts = st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=30)


@given(
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1),
    texts,
    st.sampled_from(["", "success", "failure", "denied", "error", "unknown"]),
    st.integers(0, 2**63 - 1),
    texts,
    st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True), texts, max_size=5),
)
def test_round_trip_is_byte_exact(
    action: str, resource: str, outcome: str, ms: int, trace: str, attrs: dict[str, str]
) -> None:
    event = AuditEvent(action, resource, outcome, ms, trace_id=trace, attributes=attrs)
    payload = event.to_payload()
    assert AuditEvent.from_payload(payload) == event
    assert AuditEvent.from_payload(payload).to_payload() == payload


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b'{"action":"x"}', "not an audit event"),
        (EVENT_PREFIX + b'{"action": "x"}', "canonical"),
        (EVENT_PREFIX + b'{"resource":"r","action":"x"}', "canonical"),
        (EVENT_PREFIX + b'{"action":"x","action":"y"}', "canonical"),
        (EVENT_PREFIX + b'{"action":""}', "action: empty"),
        (EVENT_PREFIX + b'{"action":"x","outcome":"meh"}', "outcome"),
        (EVENT_PREFIX + b'{"action":"x","extra":1}', "unknown fields"),
        (EVENT_PREFIX + b'{"action":"x","event_time_ms":1.5}', "event_time_ms"),
        (EVENT_PREFIX + b'{"action":"x","attributes":{"k":1}}', "want a string"),
        (EVENT_PREFIX + b'{"action":"x","attributes":{"bad key":"v"}}', "attributes key"),
        (EVENT_PREFIX + b"[1]", "want a JSON object"),
        (EVENT_PREFIX + b"\xff", "not UTF-8"),
    ],
)
def test_non_canonical_or_invalid_events_are_rejected(payload: bytes, message: str) -> None:
    with pytest.raises(EventFormatError, match=message):
        AuditEvent.from_payload(payload)
