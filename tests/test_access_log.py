"""Logs: an access line per RPC and the server's own lines, as text or JSON, never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import grpc
import pytest
from e2e_support import OpenLog, Serve

from sealog.client.log_client import LogClient
from sealog.server.access_log import AccessLog
from sealog.server.log_format import JsonFormatter, TextFormatter, configure_logging
from sealog.server.policy import hash_api_key, new_api_key
from sealog.server.rpc_observer import RpcObserver, RpcRecord

ACCESS_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "method",
    "code",
    "duration_ms",
    "peer",
    "identity",
    "auth",
    "request_bytes",
    "response_bytes",
}


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = text.splitlines()
    assert lines
    parsed = []
    for line in lines:  # every line parses
        try:
            parsed.append(json.loads(line))
        except ValueError as e:
            raise AssertionError(f"not a JSON line: {line!r}") from e
    return parsed


class _Logged:
    def __init__(self, open_log: OpenLog, tmp_path: Path, log_format: str) -> None:
        self.token = new_api_key()
        policy = tmp_path / "policy.toml"
        policy.write_text(
            "public_read = false\n"
            '[[identity]]\nname = "ci-deployer"\nroles = ["append", "read"]\n'
            f'[[api_key]]\nidentity = "ci-deployer"\nsha256 = "{hash_api_key(self.token)}"\n'
        )
        self.out = io.StringIO()
        handler: logging.StreamHandler[TextIO] = logging.StreamHandler(self.out)
        self.log = open_log(
            policy_file=policy, access_log=AccessLog(handler, "json" if log_format else "text")
        )

    def text(self) -> str:
        self.log.stop()  # flushes the last lines
        return self.out.getvalue()


def _exercise(logged: _Logged) -> None:
    ci = logged.log.client(api_key=logged.token, max_attempts=1)
    ci.append(b"payload-that-must-not-be-logged")
    ci.inclusion_proof(0)
    list(ci.entries(0, 1))
    with pytest.raises(grpc.RpcError):
        logged.log.client(api_key=new_api_key(), max_attempts=1).append(b"x")


def test_json_access_lines_parse_have_the_fields_and_no_secret(
    open_log: OpenLog, tmp_path: Path
) -> None:
    logged = _Logged(open_log, tmp_path, "json")
    _exercise(logged)
    text = logged.text()
    lines = json_lines(text)
    for line in lines:
        assert set(line) == ACCESS_FIELDS, line
        assert line["logger"] == "sealog.access"
        assert line["duration_ms"] >= 0
        assert line["peer"].startswith("ipv4:127.0.0.1:")
    by_method = {(x["method"], x["code"]): x for x in lines}
    append = by_method[("Append", "OK")]
    assert append["identity"] == "ci-deployer" and append["auth"] == "api_key"
    assert append["request_bytes"] > len(b"payload-that-must-not-be-logged")
    assert append["response_bytes"] > 0
    refused = by_method[("Append", "UNAUTHENTICATED")]
    assert refused["identity"] == "" and refused["response_bytes"] == 0
    entries = by_method[("GetEntries", "OK")]
    assert entries["response_bytes"] > 0
    assert ("GetEntryAndProof", "OK") in by_method
    assert logged.token not in text
    assert "payload-that-must-not-be-logged" not in text


def test_text_access_lines_are_one_line_each(open_log: OpenLog, tmp_path: Path) -> None:
    logged = _Logged(open_log, tmp_path, "")
    _exercise(logged)
    text = logged.text()
    lines = text.splitlines()
    assert any(" Append OK " in x and "identity=ci-deployer auth=api_key" in x for x in lines)
    assert any(" Append UNAUTHENTICATED " in x and 'identity="" auth=anonymous' in x for x in lines)
    for line in lines:
        assert " INFO sealog.access: " in line
        assert "request_bytes=" in line and "response_bytes=" in line
    assert logged.token not in text


def _record(identity: str, peer: str = "ipv4:127.0.0.1:1") -> RpcRecord:
    return RpcRecord(0.0, "unary", "Append", "OK", 0.001, peer, identity, "mtls", 10, 20, "")


def test_a_hostile_identity_cannot_break_a_line() -> None:
    out = io.StringIO()
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(out)
    evil = 'spiffe://x/a b\nFAKE INFO sealog.access: Append OK identity="admin"'
    for fmt in ("text", "json"):
        AccessLog(handler, fmt).write([_record(evil)])
    text_line, json_line = out.getvalue().splitlines()
    assert "\n" not in text_line and "FAKE" in text_line
    assert json.loads(json_line)["identity"] == evil


def test_a_stalled_log_output_drops_lines_not_rpcs() -> None:
    out = io.StringIO()
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(out)
    observer = RpcObserver(None, AccessLog(handler, "json"), max_pending=3)
    for _ in range(5):  # the flusher is not running: the queue fills up
        observer.record(0.0, "unary", "Append", "OK", "p", "id", "mtls", "", None, None)
    observer.flush()
    assert len(out.getvalue().splitlines()) == 3


def test_server_log_lines_as_json_and_text(root_logging: None) -> None:
    out = io.StringIO()
    configure_logging("json", logging.INFO, out)
    log = logging.getLogger("sealog.test")
    log.info("serving", extra={"fields": {"origin": "o", "message": "clash", "n": 3}})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed\nacross lines")
    first, second = json_lines(out.getvalue())
    assert first["message"] == "serving" and first["origin"] == "o" and first["n"] == 3
    assert first["field_message"] == "clash" and first["level"] == "INFO"
    assert first["time"].endswith("Z") and first["logger"] == "sealog.test"
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exception"]
    formatter = TextFormatter()
    record = logging.LogRecord("sealog.x", logging.WARNING, __file__, 1, "a\nb", (), None)
    record.fields = {"path": "/a b", "n": 1, "ok": True}
    assert formatter.format(record).endswith(' WARNING sealog.x: a\\nb path="/a b" n=1 ok=true')
    assert isinstance(JsonFormatter().format(record), str)


@pytest.mark.slow
def test_serve_logs_json_start_access_and_shutdown(serve: Serve, tmp_path: Path) -> None:
    proc = serve(tmp_path / "data", "--log-format", "json")
    with LogClient(proc.target, proc.vkey) as client:
        client.append(b"payload-that-must-not-be-logged")
    assert proc.terminate() == 0
    lines = json_lines(proc.stderr)
    serving = next(x for x in lines if x["message"] == "serving")
    assert serving["logger"] == "sealog.serve" and serving["tree_size"] == 0
    assert serving["data_dir"] == str((tmp_path / "data").resolve())
    assert serving["access_log"] is True and serving["metrics"] is None
    assert serving["verifier_key"] == proc.vkey
    settings = next(x for x in lines if x["message"] == "settings")
    assert settings["max_entry_bytes"] == 64496
    assert any(x["logger"] == "sealog.access" and x["method"] == "Append" for x in lines)
    stopped = next(x for x in lines if x["message"] == "stopped")
    assert stopped["tree_size"] == 1
    assert "payload-that-must-not-be-logged" not in proc.stderr
    key = (tmp_path / "data" / "log.key").read_text().strip()
    assert key not in proc.stderr and key.rsplit("+", 1)[-1] not in proc.stderr
