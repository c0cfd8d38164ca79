"""`sealog health`: the probe systemd, Kubernetes and scripts run against a log server."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import OpenLog, Serve, run_sealog, tls_log_server
from pki import TestCA

from sealog.server.app import LogServer
from sealog.server.cli import main
from sealog.server.cli.health import EXIT_NO_ANSWER, EXIT_NOT_SERVING, EXIT_SERVING


def health(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["health", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_serving_log_is_serving(open_log: OpenLog, capsys: pytest.CaptureFixture[str]) -> None:
    running = open_log()
    assert health(capsys, "--target", running.target) == (EXIT_SERVING, "SERVING\n", "")
    assert health(capsys, "--target", running.target, "--service", "sealog.v1.LogService") == (
        EXIT_SERVING,
        "SERVING\n",
        "",
    )


def test_the_target_comes_from_the_environment(
    open_log: OpenLog, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running = open_log()
    monkeypatch.setenv("SEALOG_TARGET", running.target)
    assert health(capsys) == (EXIT_SERVING, "SERVING\n", "")


def test_a_stopping_log_is_not_serving(
    open_log: OpenLog, capsys: pytest.CaptureFixture[str]
) -> None:
    running = open_log()
    running.server.enter_graceful_shutdown()
    for service in ("", "sealog.v1.LogService"):
        assert health(capsys, "--target", running.target, "--service", service) == (
            EXIT_NOT_SERVING,
            "NOT_SERVING\n",
            "",
        )
    assert health(capsys, "--target", running.target, "-q") == (EXIT_NOT_SERVING, "", "")


def test_an_unknown_service_is_service_unknown(
    open_log: OpenLog, capsys: pytest.CaptureFixture[str]
) -> None:
    running = open_log()
    assert health(capsys, "--target", running.target, "--service", "sealog.v1.Nope") == (
        EXIT_NOT_SERVING,
        "SERVICE_UNKNOWN\n",
        "",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_server_is_no_answer(capsys: pytest.CaptureFixture[str]) -> None:
    target = f"127.0.0.1:{_free_port()}"  # nothing listens there
    status, out, err = health(capsys, "--target", target)
    assert (status, out) == (EXIT_NO_ANSWER, "")
    assert err.startswith(f"sealog: error: no health answer from {target}: UNAVAILABLE: ")
    assert health(capsys, "--target", target, "-q") == (EXIT_NO_ANSWER, "", "")


@pytest.mark.slow  # waits for its timeout
def test_a_server_that_never_answers_times_out(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the kernel does), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        target = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        status, out, err = health(capsys, "--target", target, "--timeout", "0.5")
        took = time.monotonic() - started
    assert (status, out) == (EXIT_NO_ANSWER, "")
    assert f"no health answer from {target}: DEADLINE_EXCEEDED" in err
    assert 0.4 < took < 3


@pytest.fixture
def tls_log(tmp_path: Path) -> Iterator[tuple[LogServer, TestCA]]:
    """A log on TLS (for a certificate naming localhost only) with a mutual TLS port."""
    with tls_log_server(tmp_path, ips=(), mtls_address="localhost:0") as served:
        yield served


def test_health_over_tls_and_mutual_tls(
    tls_log: tuple[LogServer, TestCA], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    server, ca = tls_log
    tls = ("--tls-ca", str(ca.ca_file))
    main_port = f"localhost:{server.port}"
    assert health(capsys, "--target", main_port, *tls) == (EXIT_SERVING, "SERVING\n", "")
    # The certificate names localhost, not 127.0.0.1: a probe by address says which name.
    by_address = f"127.0.0.1:{server.port}"
    status, _, err = health(capsys, "--target", by_address, *tls)
    assert status == EXIT_NO_ANSWER
    assert "UNAVAILABLE" in err
    assert health(capsys, "--target", by_address, *tls, "--tls-server-name", "localhost") == (
        EXIT_SERVING,
        "SERVING\n",
        "",
    )
    # Plaintext against a TLS port gets no answer.
    assert health(capsys, "--target", main_port, "--timeout", "2")[0] == EXIT_NO_ANSWER
    # The mutual TLS port: a client certificate finishes the handshake, no identity needed.
    mtls_port = f"localhost:{server.mtls_port}"
    assert health(capsys, "--target", mtls_port, *tls, "--timeout", "2")[0] == EXIT_NO_ANSWER
    probe = ca.issue("probe", cn="probe")
    assert health(
        capsys,
        "--target",
        mtls_port,
        *tls,
        "--tls-cert",
        str(probe.cert_file),
        "--tls-key",
        str(probe.key_file),
    ) == (EXIT_SERVING, "SERVING\n", "")


def test_bad_tls_options_are_no_answer_naming_the_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "missing-ca.pem"
    status, out, err = health(capsys, "--tls-ca", str(missing))
    assert (status, out) == (EXIT_NO_ANSWER, "")
    assert str(missing) in err
    status, _, err = health(capsys, "--tls-server-name", "localhost")
    assert status == EXIT_NO_ANSWER
    assert "--tls-server-name needs TLS" in err


@pytest.mark.slow  # runs sealog serve and sealog health as processes
def test_sealog_health_against_sealog_serve(serve: Serve, tmp_path: Path) -> None:
    proc = serve(tmp_path / "data")
    result = run_sealog("health", "--target", proc.target, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "SERVING\n", "")
    proc.close()
    result = run_sealog("health", "--target", proc.target, "-q", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (EXIT_NO_ANSWER, "", "")
