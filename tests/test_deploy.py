"""deploy/: the systemd unit and the example production configuration.

The unit is checked by systemd's own parser where `systemd-analyze` runs, and the server
is run under the part of the unit's sandbox one process can apply to itself
(tests/unit_sandbox.py): its system call filter, its address families, no new
privileges and no writable executable memory.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_support import ServeProcess
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from pki import TestCA
from unit_sandbox import CANNOT_SANDBOX, service_settings

from sealog.client.cosignature import Cosigner
from sealog.client.errors import WitnessPolicyError
from sealog.client.keyfile import write_private_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.tls import channel_credentials
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import Witness
from sealog.server.app import DRAIN_S
from sealog.server.cli import build_parser
from sealog.server.cli import main as sealog_main
from sealog.server.policy import hash_api_key, new_api_key

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "sealog.service"
CONFIG = ROOT / "deploy" / "sealog.toml"
SANDBOX = Path(__file__).resolve().parent / "unit_sandbox.py"
INSTALLED_SEALOG = "/opt/sealog/bin/sealog"


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args], capture_output=True, text=True, timeout=60, check=False
    )


def _installed_here(tmp_path: Path, unit_text: str, name: str = "sealog.service") -> Path:
    """The unit with ExecStart= naming this venv's sealog: verify checks that it exists."""
    script = Path(sys.executable).parent / "sealog"
    if not script.exists():
        pytest.skip("the sealog console script is not installed in this venv")
    unit = tmp_path / name
    unit.write_text(unit_text.replace(INSTALLED_SEALOG, str(script)), encoding="utf-8")
    return unit


@pytest.fixture
def analyze(tmp_path: Path) -> None:
    """Skip unless systemd-analyze runs here and verifies a minimal, good unit cleanly."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    probe = tmp_path / "probe.service"
    probe.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
    result = _analyze("verify", str(probe))
    if result.returncode != 0 or result.stderr.strip():
        pytest.skip(f"systemd-analyze verify cannot run here: {result.stderr.strip()}")


def test_the_unit_passes_systemd_analyze_verify(analyze: None, tmp_path: Path) -> None:
    text = UNIT.read_text(encoding="utf-8")
    assert INSTALLED_SEALOG in text
    unit = _installed_here(tmp_path, text)
    result = _analyze("verify", str(unit))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    # verify reports a bad value or an unknown key only as a warning: the test reads it.
    broken = _installed_here(
        tmp_path,
        text.replace("ProtectSystem=strict", "ProtectSystem=strickt").replace("UMask=", "Umask="),
    )
    complaints = _analyze("verify", str(broken)).stderr
    assert "strickt" in complaints
    assert "Unknown key 'Umask'" in complaints


def test_the_unit_runs_as_its_own_user_with_the_hardening() -> None:
    service = service_settings(UNIT)
    values = dict(service)
    assert values["ExecStart"] == f"{INSTALLED_SEALOG} serve --config /etc/sealog/sealog.toml"
    assert (values["User"], values["Group"]) == ("sealog", "sealog")
    assert "DynamicUser" not in values  # the data folder and key keep one owner
    assert values["StateDirectory"] == "sealog"
    assert values["ReadWritePaths"] == "/var/lib/sealog"
    for key, want in [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
    ]:
        assert values[key] == want, key
    assert ("SystemCallFilter", "@system-service") in service
    assert int(values["LimitNOFILE"]) >= 65536
    # A stop drains (DRAIN_S), gives calls up to 5 s and 1 more, then commits what is
    # queued: seconds. The unit must wait well past that before it kills.
    assert int(values["TimeoutStopSec"]) >= 5 * (DRAIN_S + 5.0 + 1)


def _serve_options() -> dict[str, argparse.Action]:
    """`sealog serve`'s long options by config key: the name without --, - as _."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    return {
        option[2:].replace("-", "_"): action
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    }


def test_every_key_of_the_example_config_is_a_serve_option(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    unknown = sorted(set(config) - set(_serve_options()))
    assert unknown == [], f"deploy/sealog.toml keys that sealog serve lacks: {unknown}"
    # serve itself reads the file: every value of the type its option takes, each in force.
    for name in [n for n in os.environ if n.startswith("SEALOG_")]:
        monkeypatch.delenv(name)
    assert sealog_main(["serve", "--config", str(CONFIG), "--print-config"]) == 0
    effective = capsys.readouterr().out
    assert tomllib.loads(effective) | config == tomllib.loads(effective)
    from_file = {
        line.split(" = ", 1)[0]
        for line in effective.splitlines()
        if line.endswith(f"# file {CONFIG}")
    }
    assert from_file == set(config)
    assert config["data_dir"] == "/var/lib/sealog"  # the unit's StateDirectory


def test_the_example_config_is_a_production_log() -> None:
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    for key in ("tls_cert", "tls_key", "tls_client_ca", "mtls_listen", "policy"):
        assert config.get(key), key
    assert config["witness_vkey"] and config["push_witness"]
    assert all(url.startswith("https://") for url in config["push_witness"])
    assert not config.get("insecure_allow_remote")
    assert str(config["metrics_listen"]).startswith("127.0.0.1:")


# --- the server inside the unit's sandbox ---------------------------------------------


def _sandbox_or_skip(tmp_path: Path) -> None:
    """Skip where the sandbox cannot be set up; make sure it is in force where it can."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze (for the system call groups) is not installed")
    probe = (
        "import mmap, os, socket\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    print('W+X mapped')\n"
        "except OSError as e:\n"
        "    print('W+X refused', e.errno)\n"
        "for family in (socket.AF_NETLINK, socket.AF_PACKET):\n"
        "    try:\n"
        "        socket.socket(family, socket.SOCK_RAW).close()\n"
        "        print('socket made')\n"
        "    except OSError as e:\n"
        "        print('socket refused', e.errno)\n"
        "try:\n"
        "    os.chroot('/')\n"
        "    print('chroot done')\n"
        "except OSError as e:\n"
        "    print('chroot refused', e.errno)\n"
    )
    result = subprocess.run(
        [sys.executable, str(SANDBOX), str(UNIT), "--", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode == CANNOT_SANDBOX:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr
    # EACCES from the kernel's MDWE; EPERM (SystemCallErrorNumber=) from the filter.
    assert result.stdout.split("\n") == [
        "W+X refused 13",
        "socket refused 1",
        "socket refused 1",
        "chroot refused 1",
        "",
    ]


W1 = Cosigner.generate("w1.example/witness")


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[tuple[WitnessHTTPServer, Ed25519Signer]]:
    origin = "log.example.com/audit"
    log_key = Ed25519Signer.generate(origin)
    server = WitnessHTTPServer(
        Witness(W1, {origin: [log_key.verifier()]}, tmp_path / "witness")
    ).start()
    try:
        yield server, log_key
    finally:
        server.stop()
        server.witness.close()


def _wait(condition: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow  # runs sealog serve in a subprocess
def test_serve_works_inside_the_units_sandbox(
    tmp_path: Path,
    witness: tuple[WitnessHTTPServer, Ed25519Signer],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TLS, mutual TLS, a policy and its reload, a pushed witness, metrics, reflection,
    health and a clean stop, with the unit's system call filter and no writable executable
    memory."""
    _sandbox_or_skip(tmp_path)
    witness_server, log_key = witness
    key_file = tmp_path / "log.key"
    write_private_key_file(key_file, log_key.skey)
    ca = TestCA(tmp_path / "pki")
    cert = ca.issue("server", cn="localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
    probe = ca.issue("probe", cn="probe")
    api_key = new_api_key()
    policy = tmp_path / "policy.toml"
    policy_text = (
        "public_read = false\n"
        '[[identity]]\nname = "ci-bot"\nroles = ["append", "read"]\nauth = "api_key"\n'
        f'[[api_key]]\nidentity = "ci-bot"\nsha256 = "{hash_api_key(api_key)}"\n'
    )
    policy.write_text(policy_text, encoding="utf-8")
    proc = ServeProcess(
        tmp_path / "data",
        "--origin",
        log_key.name,
        "--key-file",
        str(key_file),
        "--new-log",
        "--tls-cert",
        str(cert.cert_file),
        "--tls-key",
        str(cert.key_file),
        "--tls-client-ca",
        str(ca.ca_file),
        "--mtls-listen",
        "127.0.0.1:0",
        "--policy",
        str(policy),
        "--witness-vkey",
        W1.verifier().vkey,
        "--push-witness",
        witness_server.url,
        "--push-witness-interval",
        "0.05",
        "--metrics-listen",
        "127.0.0.1:0",
        cwd=tmp_path,
        launcher=[sys.executable, str(SANDBOX), str(UNIT), "--"],
    )
    try:
        proc.wait_ready()
        mtls = re.search(r"mutual TLS:\s+\S+:(\d+)", proc.stdout)
        assert mtls is not None, proc.stdout
        tls = channel_credentials(ca.ca_file)
        with LogClient(
            proc.target,
            log_key.verifier(),
            credentials=tls,
            api_key=api_key,
            witnesses=[W1.verifier()],
        ) as client:
            receipt = client.append_batch([b"one", b"two", b"three"])
            assert receipt.checkpoint.checkpoint.size == 3

            def cosigned() -> bool:
                try:
                    return client.checkpoint().checkpoint.size == 3
                except WitnessPolicyError:
                    return False
                except grpc.RpcError as e:  # no witness has cosigned anything yet
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
                    return False

            _wait(cosigned, "the pushed witness's cosignature")
            assert [e.parse().payload for e in client.entries(0)] == [b"one", b"two", b"three"]
        with grpc.secure_channel(proc.target, tls) as channel:
            services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
            assert "sealog.v1.LogService" in services
        metrics = re.search(r"metrics:\s+(http://\S+)", proc.stdout)
        assert metrics is not None, proc.stdout
        with urllib.request.urlopen(metrics.group(1), timeout=10) as answer:
            assert b"sealog_" in answer.read()
        capsys.readouterr()
        status = sealog_main(
            [
                "health",
                "--target",
                f"127.0.0.1:{mtls.group(1)}",
                "--tls-ca",
                str(ca.ca_file),
                "--tls-cert",
                str(probe.cert_file),
                "--tls-key",
                str(probe.key_file),
            ]
        )
        assert (status, capsys.readouterr().out) == (0, "SERVING\n")
        proc.proc.send_signal(signal.SIGHUP)
        _wait(lambda: "policy reloaded" in proc.stdout, "the policy reload")
        assert proc.terminate() == 0
        assert "shutting down" in proc.stdout
        # The server logs to stderr (the journal): every line INFO, none a warning or worse.
        levels = {line.split(" ", 2)[1] for line in proc.stderr.splitlines()}
        assert levels == {"INFO"}, proc.stderr
        assert "sealog.access: Append OK" in proc.stderr
    finally:
        proc.close()
