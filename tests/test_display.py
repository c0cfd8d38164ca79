"""Strings a client or a log controls, shown to people: one unambiguous printable line."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from dishonest_log import FakeLog, FakeLogServer, make_leaves
from hypothesis import given
from hypothesis import strategies as st

from sealog.client.display import escape, identity
from sealog.client.monitor.config import LogConfig
from sealog.client.monitor.evidence import EvidenceVerdict
from sealog.client.monitor.follow import LogMonitor
from sealog.client.note import Ed25519Signer
from sealog.v1 import log_pb2

_ESCAPE = re.compile(r"\\(?:x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8})|(.))", re.DOTALL)
_NAMED = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}


def unescape_bytes(shown: str) -> bytes:
    """The inverse of :func:`escape` on bytes, written from the documented mapping."""
    out = bytearray()
    pos = 0
    for m in _ESCAPE.finditer(shown):
        out += shown[pos : m.start()].encode("utf-8")
        byte, u4, u8, named = m.groups()
        if byte is not None:
            out.append(int(byte, 16))
        elif named is not None:
            out += _NAMED[named].encode()
        else:
            out += chr(int(u4 or u8, 16)).encode("utf-8")
        pos = m.end()
    out += shown[pos:].encode("utf-8")
    return bytes(out)


@given(st.binary(max_size=64))
def test_escaped_bytes_are_one_printable_line_that_maps_back(data: bytes) -> None:
    shown = escape(data)
    assert shown.isprintable()  # no newline, tab or escape
    assert unescape_bytes(shown) == data  # so two payloads never show alike


@given(st.text(max_size=64))
def test_escaped_text_is_one_printable_line_that_maps_back(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()  # no newline, tab or escape
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):  # lone surrogates have no UTF-8
        assert unescape_bytes(shown).decode("utf-8") == text


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"plain text", "plain text"),
        (b"two\nlines\ttab\r", "two\\nlines\\ttab\\r"),
        (b"\x1b[2J\x00\x7f", "\\x1b[2J\\x00\\x7f"),
        (b"a\\nb", "a\\\\nb"),  # a literal backslash-n is not a newline
        ("caf\u00e9 \u65e5\u672c".encode(), "caf\u00e9 \u65e5\u672c"),
        (b"\xff\xc3", "\\xff\\xc3"),  # not UTF-8
        ("\u202eevil".encode(), "\\u202eevil"),  # a bidirectional override
        ("\u0085".encode(), "\\u0085"),  # a C1 control, not the byte 0x85
        ("a\u2028b", "a\\u2028b"),
    ],
)
def test_escape_examples(value: bytes | str, shown: str) -> None:
    assert escape(value) == shown


def test_an_identity_named_dash_does_not_pass_for_no_identity() -> None:
    assert identity("") == "-"
    assert identity("-") == "\\x2d"
    assert identity("ci\nbot") == "ci\\nbot"


def test_evidence_report_shows_each_finding_on_one_line() -> None:
    verdict = EvidenceVerdict(
        "split_view", False, ["summary from the file\n  - signature verified"], "proves\nall"
    )

    lines = verdict.report().splitlines()

    assert lines == [
        "EVIDENCE DOES NOT HOLD (split_view)",
        "  - summary from the file\\n  - signature verified",
        "proves\\nall",
    ]


class RefusingLog(FakeLog):
    """Answers GetCheckpoint with an error whose message forges a monitor line."""

    def GetCheckpoint(  # noqa: N802
        self, request: log_pb2.GetCheckpointRequest, context: grpc.ServicerContext
    ) -> log_pb2.GetCheckpointResponse:
        context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "not now\n2026-01-01T00:00:00Z m: ok size 1,000,000 root AAAA\x1b[1A",
        )
        raise AssertionError("unreachable")


@pytest.fixture
def refusing() -> Iterator[tuple[FakeLogServer, str]]:
    signer = Ed25519Signer.generate("refusing.example/log")
    server = FakeLogServer(RefusingLog(signer, make_leaves([b"x"])))
    try:
        yield server, signer.verifier().vkey
    finally:
        server.stop()


def test_monitor_prints_one_escaped_line_for_an_error_message_that_forges_lines(
    refusing: tuple[FakeLogServer, str], tmp_path: Path
) -> None:
    server, vkey = refusing
    out = io.StringIO()
    config = LogConfig(
        name="m", target=server.target, vkey=vkey, state_dir=tmp_path / "state", poll_interval_s=0
    )
    with LogMonitor(config, out=out, err=io.StringIO()) as monitor:
        result = monitor.poll()

    assert result.outcome == "error"
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    assert "not now\\n2026-01-01T00:00:00Z m: ok size" in lines[0]
    assert "\x1b" not in out.getvalue()
