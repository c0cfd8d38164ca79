"""The `sealog` command as an operator uses it, against a real `sealog serve` process."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_support import OpenLog, RunningLog, Serve, ServeProcess, run_sealog, sealog_command

from bench.serve_process import child_env
from sealog.client.checkpoint import open_checkpoint
from sealog.client.hashing import leaf_hash
from sealog.client.leaf import Leaf
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer, Ed25519Verifier
from sealog.client.verify import verify_consistency
from sealog.server.policy import hash_api_key, new_api_key

pytestmark = pytest.mark.slow  # runs the sealog command against sealog serve processes

# Each command's one-line summary, as `sealog --help` lists it.
SUBCOMMANDS = {
    "keygen": "create an Ed25519 signing key",
    "serve": "run a log",
    "append": "append events",
    "checkpoint": "print the latest verified checkpoint",
    "prove": "prove an entry is in the log",
    "consistency": "prove a newer checkpoint extends an older one",
    "entries": "print entries",
}


@dataclass
class CliLog:
    proc: ServeProcess
    workdir: Path

    def run(
        self, *args: str, stdin: bytes | str | None = None, ok: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = run_sealog(
            *args,
            "--target",
            self.proc.target,
            "--vkey",
            self.proc.vkey,
            cwd=self.workdir,
            stdin=stdin,
        )
        if ok:
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
        return result

    def json_lines(self, *args: str, stdin: bytes | str | None = None) -> list[dict[str, Any]]:
        out = self.run(*args, "--json", stdin=stdin).stdout
        return [json.loads(line) for line in out.splitlines()]

    def client(self) -> LogClient:
        return LogClient(self.proc.target, self.proc.vkey)


@pytest.fixture(scope="module")
def cli_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliLog]:
    """One server for the module; each test only relies on what it appends itself."""
    root = tmp_path_factory.mktemp("cli")
    proc = ServeProcess(root / "data", cwd=root)
    try:
        proc.wait_ready()
        yield CliLog(proc, root)
    finally:
        proc.close()


# --- help ---------------------------------------------------------------------------------
def test_help_explains_the_commands(tmp_path: Path) -> None:
    result = run_sealog("--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: sealog")
    assert "transparency log" in result.stdout
    assert "Quick start" in result.stdout
    for command in SUBCOMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize(("command", "summary"), SUBCOMMANDS.items())
def test_each_subcommand_help_says_what_it_does(tmp_path: Path, command: str, summary: str) -> None:
    # Each command's own --help must say what it does, not only list options.
    listing = run_sealog("--help", cwd=tmp_path).stdout
    assert summary.lower() in listing.lower()

    result = run_sealog(command, "--help", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: sealog {command}")
    assert "--json" in result.stdout or command == "serve"
    assert summary.lower() in result.stdout.lower(), f"`sealog {command} --help`: no summary"


def test_version_names_the_installed_package(tmp_path: Path) -> None:
    result = run_sealog("--version", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sealog {importlib.metadata.version('sealog')}"


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    result = run_sealog(cwd=tmp_path)

    assert result.returncode == 2
    assert "usage: sealog" in result.stderr


# --- keygen -----------------------------------------------------------------------------
def test_keygen_makes_a_private_key_the_log_and_client_can_use(
    serve: Serve, tmp_path: Path
) -> None:
    key = tmp_path / "example.key"
    result = run_sealog("keygen", "example.com/log", "--out", str(key), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    vkey = result.stdout.split("verifier key: ", 1)[1].strip()
    assert Ed25519Verifier.from_vkey(vkey).name == "example.com/log"
    assert (tmp_path / "example.vkey").read_text().strip() == vkey
    signer = Ed25519Signer.from_skey(key.read_text().strip())
    assert signer.verifier().vkey == vkey

    proc = serve(
        tmp_path / "data", "--key-file", str(key), "--new-log", "--origin", "example.com/log"
    )
    assert proc.vkey == vkey
    with LogClient(proc.target, vkey) as client:
        assert client.append(b"signed by my key").index == 0
    for given in (vkey, f"@{tmp_path / 'example.vkey'}"):
        shown = run_sealog(
            "checkpoint", "--json", "--target", proc.target, "--vkey", given, cwd=tmp_path
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["tree_size"] == 1


def test_keygen_json_and_no_overwrite(tmp_path: Path) -> None:
    result = run_sealog("keygen", "audit.example/log", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["private_key_file"] == "audit.example_log.key"
    key = tmp_path / "audit.example_log.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Ed25519Verifier.from_vkey(out["vkey"]).name == "audit.example/log"

    before = key.read_bytes()
    again = run_sealog("keygen", "audit.example/log", cwd=tmp_path)
    assert again.returncode != 0
    assert "exists" in again.stderr
    assert key.read_bytes() == before, "keygen overwrote a private key"


def test_keygen_out_ending_in_vkey_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    # It used to write the private key to NAME.vkey and then overwrite it with the vkey.
    out = tmp_path / "log.vkey"

    result = run_sealog("keygen", "example.com/log", "--out", str(out), cwd=tmp_path)

    assert result.returncode == 1
    assert "must not end in .vkey" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("out", "vkey_file"),
    [
        ("x.key", "x.vkey"),
        ("dir/example.com", "dir/example.com.vkey"),  # was dir/example.vkey
        ("dir/log", "dir/log.vkey"),
        ("a.b.key", "a.b.vkey"),
    ],
)
def test_keygen_vkey_path_appends_vkey_to_the_key_name(
    tmp_path: Path, out: str, vkey_file: str
) -> None:
    (tmp_path / "dir").mkdir()

    result = run_sealog("keygen", "example.com/log", "--out", out, "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["vkey_file"] == vkey_file
    assert (tmp_path / vkey_file).read_text().strip() == shown["vkey"]
    signer = Ed25519Signer.from_skey((tmp_path / out).read_text().strip())
    assert signer.verifier().vkey == shown["vkey"]
    assert stat.S_IMODE((tmp_path / out).stat().st_mode) == 0o600


def test_keygen_refuses_to_clobber_an_existing_vkey(tmp_path: Path) -> None:
    # Another key's public half sits where this key's vkey would go: keep it, write nothing.
    (tmp_path / "example.com.vkey").write_text("the vkey clients already trust\n")

    result = run_sealog("keygen", "example.com/log", "--out", "example.com", cwd=tmp_path)

    assert result.returncode == 1
    assert "example.com.vkey already exists" in result.stderr
    assert (tmp_path / "example.com.vkey").read_text() == "the vkey clients already trust\n"
    assert not (tmp_path / "example.com").exists(), "a private key without its vkey was left"


def test_keygen_refuses_to_clobber_an_existing_private_key(tmp_path: Path) -> None:
    key = tmp_path / "old.key"
    key.write_text("precious\n")

    result = run_sealog("keygen", "example.com/log", "--out", str(key), cwd=tmp_path)

    assert result.returncode == 1
    assert f"{key} already exists" in result.stderr
    assert key.read_text() == "precious\n"
    assert not (tmp_path / "old.vkey").exists()


def test_serve_refuses_a_key_file_others_can_read(tmp_path: Path) -> None:
    key = tmp_path / "log.key"
    assert (
        run_sealog("keygen", "sealog.localhost/log", "--out", str(key), cwd=tmp_path).returncode
        == 0
    )
    key.chmod(0o644)

    result = run_sealog(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--listen",
        "127.0.0.1:0",
        "--key-file",
        str(key),
        "--new-log",
        cwd=tmp_path,
        timeout=30,
    )

    assert result.returncode == 1
    assert "mode 0644" in result.stderr
    assert f"chmod 600 {key}" in result.stderr


# --- append -----------------------------------------------------------------------------
def _index_of(line: str) -> int:
    assert line.startswith("index "), line
    return int(line.split()[1])


def test_append_from_argument_file_and_stdin(cli_log: CliLog, tmp_path: Path) -> None:
    text = cli_log.run("append", "deploy svc/payments ok").stdout.splitlines()
    assert len(text) == 1 and text[0].endswith("(verified)")
    first = _index_of(text[0])

    blob = bytes(range(256)) + b"\n\x00end"
    path = tmp_path / "event.bin"
    path.write_bytes(blob)
    (from_file,) = cli_log.json_lines("append", "--file", str(path))

    from_stdin = cli_log.json_lines("append", stdin="line one\n\nline two\nline three\n")

    assert from_file["index"] == first + 1
    assert base64.b64decode(from_file["payload_b64"]) == blob
    assert [r["payload"] for r in from_stdin] == ["line one", "line two", "line three"]
    assert [r["index"] for r in from_stdin] == [first + 2, first + 3, first + 4]
    for r in (from_file, *from_stdin):
        leaf = base64.b64decode(r["leaf_b64"])
        assert r["leaf_hash"] == leaf_hash(leaf).hex()
        assert Leaf.parse(leaf).accepted_at_ms == r["accepted_at_ms"]
        assert r["identity"] == "" and r["duplicate"] is False
        assert r["checkpoint"]["tree_size"] > r["index"]
    with cli_log.client() as client:
        stored = {e.index: e.parse().payload for e in client.entries(first)}
    assert stored[first] == b"deploy svc/payments ok"
    assert stored[first + 1] == blob
    assert stored[first + 4] == b"line three"


def test_append_stdin_in_several_requests(cli_log: CliLog) -> None:
    lines = [f"bulk {i}" for i in range(7)]

    out = cli_log.json_lines("append", "--batch", "3", stdin="\n".join(lines) + "\n")

    assert [r["payload"] for r in out] == lines
    indices = [r["index"] for r in out]
    assert indices == list(range(indices[0], indices[0] + 7))
    # Three requests: the receipts name the checkpoint each one got.
    assert len({r["checkpoint"]["tree_size"] for r in out}) == 3


# --- checkpoints and consistency --------------------------------------------------------------
def test_checkpoint_save_then_consistency(cli_log: CliLog, tmp_path: Path) -> None:
    cli_log.run("append", "before the save")
    saved = tmp_path / "trusted.cp"
    shown = json.loads(cli_log.run("checkpoint", "--save", str(saved), "--json").stdout)
    note = saved.read_bytes()
    assert shown["note"].encode() == note
    old_size = shown["tree_size"]
    assert note.decode().splitlines()[:3] == [
        shown["origin"],
        str(old_size),
        shown["root_hash"],
    ]

    cli_log.run("append", stdin="after 1\nafter 2\n")
    text = cli_log.run("consistency", str(saved)).stdout
    assert f"tree size {old_size + 2} is consistent with size {old_size}: verified" in text

    out = json.loads(cli_log.run("consistency", str(saved), "--json").stdout)
    assert out["first"]["tree_size"] == old_size
    assert out["second"]["tree_size"] == old_size + 2
    # The JSON is enough to re-check the proof offline.
    verify_consistency(
        out["first"]["tree_size"],
        out["second"]["tree_size"],
        base64.b64decode(out["first"]["root_hash"]),
        base64.b64decode(out["second"]["root_hash"]),
        [base64.b64decode(h) for h in out["consistency_proof"]],
    )

    trusted = cli_log.run("checkpoint", "--trusted", str(saved)).stdout
    assert f"(consistent with trusted size {old_size}: verified)" in trusted

    newer = tmp_path / "newer.cp"
    cli_log.run("checkpoint", "--save", str(newer))
    both = json.loads(cli_log.run("consistency", str(saved), str(newer), "--json").stdout)
    assert both["second"]["note"].encode() == newer.read_bytes()


def test_consistency_rejects_a_forged_checkpoint_file(cli_log: CliLog, tmp_path: Path) -> None:
    cli_log.run("append", "x")
    saved = tmp_path / "cp"
    cli_log.run("checkpoint", "--save", str(saved))
    lines = saved.read_bytes().split(b"\n")
    lines[1] = str(int(lines[1]) - 1).encode()  # claim another size under the same signature
    saved.write_bytes(b"\n".join(lines))

    result = cli_log.run("consistency", str(saved), ok=False)

    assert result.returncode == 1
    assert "invalid signature" in result.stderr


# --- prove and entries --------------------------------------------------------------------
def test_prove_by_index_and_by_leaf_hash(cli_log: CliLog, tmp_path: Path) -> None:
    (receipt,) = cli_log.json_lines("append", "prove me")
    index, lh = receipt["index"], receipt["leaf_hash"]
    saved = tmp_path / "at-append.cp"
    saved.write_text(receipt["checkpoint"]["note"])
    cli_log.run("append", "later")

    text = cli_log.run("prove", "--index", str(index)).stdout
    assert text.startswith(f"leaf {index} (hash {lh}) is in the tree of size")
    assert ": verified" in text

    by_index = json.loads(cli_log.run("prove", "--index", str(index), "--json").stdout)
    by_hash = json.loads(cli_log.run("prove", "--leaf-hash", lh, "--json").stdout)
    assert by_index["entry"]["payload"] == "prove me"
    assert by_index["leaf_index"] == by_hash["leaf_index"] == index
    assert by_index["leaf_hash"] == by_hash["leaf_hash"] == lh
    assert by_index["inclusion_proof"] == by_hash["inclusion_proof"]

    # Against the checkpoint the append receipt named, not the latest one.
    old = json.loads(
        cli_log.run("prove", "--leaf-hash", lh, "--checkpoint", str(saved), "--json").stdout
    )
    assert old["tree_size"] == receipt["checkpoint"]["tree_size"]
    assert old["inclusion_proof"] == receipt["inclusion_proof"]
    with cli_log.client() as client:
        signed = open_checkpoint(saved.read_bytes(), client.verifier)
        proof = client.inclusion_proof(index, signed)
    assert [base64.b64decode(h) for h in old["inclusion_proof"]] == list(proof.proof)


def test_entries_text_and_json(cli_log: CliLog) -> None:
    receipts = cli_log.json_lines("append", stdin="e-one\ne-two\ne-three\n")
    start = receipts[0]["index"]

    text = cli_log.run("entries", str(start), str(start + 3)).stdout.splitlines()
    assert [line.split("\t") for line in text] == [
        [str(r["index"]), str(r["accepted_at_ms"]), "-", r["payload"]] for r in receipts
    ]

    out = cli_log.json_lines("entries", str(start + 1), str(start + 3))
    assert [(e["index"], e["payload"], e["leaf_b64"]) for e in out] == [
        (r["index"], r["payload"], r["leaf_b64"]) for r in receipts[1:]
    ]

    everything = cli_log.json_lines("entries")
    assert [e["index"] for e in everything] == list(range(len(everything)))
    assert len(everything) >= start + 3


# --- errors a user can act on -------------------------------------------------------------
def test_wrong_vkey_is_refused_with_advice(cli_log: CliLog, tmp_path: Path) -> None:
    other = Ed25519Signer.generate("sealog.localhost/log").verifier().vkey

    result = run_sealog(
        "checkpoint", "--target", cli_log.proc.target, "--vkey", other, cwd=tmp_path
    )

    assert result.returncode == 1
    assert "no verifiable signatures" in result.stderr
    assert "verifier key you pass is the log's key" in result.stderr


def test_missing_vkey_is_explained(cli_log: CliLog, tmp_path: Path) -> None:
    result = run_sealog("checkpoint", "--target", cli_log.proc.target, cwd=tmp_path)

    assert result.returncode == 1
    assert "no verifier key" in result.stderr
    assert "--vkey" in result.stderr


def test_prove_beyond_the_log_reports_the_server_error(cli_log: CliLog) -> None:
    cli_log.run("append", "so that the log is not empty, whichever tests ran before")
    result = cli_log.run("prove", "--index", str(10**9), ok=False)

    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr
    assert "leaf_index: 1000000000" in result.stderr


def test_serve_on_a_busy_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"

        result = run_sealog(
            "serve", "--data-dir", str(tmp_path / "data"), "--listen", address, cwd=tmp_path
        )

    assert result.returncode != 0
    assert address in result.stderr
    # grpcio raises RuntimeError ("Failed to bind ..."): the user gets one line, not a traceback.
    assert "Traceback" not in result.stderr, result.stderr
    assert "sealog: error:" in result.stderr


def test_unreachable_server(tmp_path: Path) -> None:
    vkey = Ed25519Signer.generate("sealog.localhost/log").verifier().vkey

    result = run_sealog(
        "checkpoint", "--target", "127.0.0.1:1", "--vkey", vkey, "--timeout", "2", cwd=tmp_path
    )

    assert result.returncode == 1
    assert "UNAVAILABLE" in result.stderr


def test_backup_copies_a_serving_log_and_checks_the_copy(cli_log: CliLog, tmp_path: Path) -> None:
    cli_log.run("append", "before the backup")
    dest = tmp_path / "backup"
    result = run_sealog("backup", str(cli_log.proc.data_dir), str(dest), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fsck ok" in result.stdout
    assert not (dest / "log.key").exists()  # never the private key
    again = run_sealog("backup", str(cli_log.proc.data_dir), str(dest), cwd=tmp_path)
    assert again.returncode != 0  # never overwrites


# --- pipes --------------------------------------------------------------------------------
def _piped_into_head(*args: str, cwd: Path) -> tuple[str, str, int]:
    """Run ``sealog ARGS | head -1``: head's output, sealog's stderr and exit status."""
    producer = subprocess.Popen(
        [*sealog_command(), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    assert producer.stdout is not None and producer.stderr is not None
    head = subprocess.Popen(["head", "-1"], stdin=producer.stdout, stdout=subprocess.PIPE)
    producer.stdout.close()  # head holds the only reading end: when it exits, the pipe closes
    first, _ = head.communicate(timeout=60)
    stderr = producer.stderr.read().decode()
    producer.stderr.close()
    return first.decode(), stderr, producer.wait(timeout=60)


@pytest.mark.parametrize("fmt", [(), ("--json",)], ids=["text", "json"])
def test_entries_piped_into_head_exits_quietly_on_the_closed_pipe(
    log: RunningLog, tmp_path: Path, fmt: tuple[str, ...]
) -> None:
    # Far more output than a pipe buffers, so sealog is still writing when head exits.
    with log.client() as client:
        for start in range(0, 4000, 1000):
            client.append_batch(
                [f"entry {i} {'x' * 80}".encode() for i in range(start, start + 1000)]
            )

    first, stderr, status = _piped_into_head(
        "entries", "--target", log.target, "--vkey", log.verifier.vkey, *fmt, cwd=tmp_path
    )

    assert stderr == ""  # was "BrokenPipeError: [Errno 32] Broken pipe" and a traceback
    assert status == 141  # 128 + SIGPIPE, as for a command the signal ended
    assert first.startswith('{"index": 0,' if fmt else "0\t")


# --- what clients appended, shown to people -------------------------------------------------
FORGERY = b"\n0\t1767225600000\tadmin\tok\x1b[2J\t"
"""Appended to a payload, it would print as a second entry line, by "admin", and clear the
screen, if output were raw."""


def test_entries_prints_one_escaped_line_for_a_payload_with_newlines_tabs_and_escapes(
    cli_log: CliLog,
) -> None:
    with cli_log.client() as client:
        receipt = client.append(b"deploy ok" + FORGERY)
        plain = client.append(b"back\\slash caf\xc3\xa9 \xff")

    text = cli_log.run("entries", str(receipt.index), str(plain.index + 1)).stdout

    lines = text.splitlines()
    assert len(lines) == 2, text
    assert "\x1b" not in text
    fields = lines[0].split("\t")
    assert fields[0] == str(receipt.index)
    assert fields[2] == "-"
    assert fields[3] == "deploy ok\\n0\\t1767225600000\\tadmin\\tok\\x1b[2J\\t"
    # A backslash is escaped too (so "\\n" in a payload never reads as a newline); text in any
    # script stays readable; a byte that is not UTF-8 shows as \xNN.
    assert lines[1].split("\t")[3] == "back\\\\slash café \\xff"
    # --json is unchanged: the exact payload, JSON-escaped.
    (as_json,) = cli_log.json_lines("entries", str(receipt.index), str(receipt.index + 1))
    assert as_json["payload"] == (b"deploy ok" + FORGERY).decode()


def test_search_prints_one_escaped_line_per_entry(open_log: OpenLog, tmp_path: Path) -> None:
    token = new_api_key()
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'public_read = true\n[[identity]]\nname = "ci-bot"\nroles = ["append", "read"]\n'
        f'[[api_key]]\nidentity = "ci-bot"\nsha256 = "{hash_api_key(token)}"\n'
    )
    log = open_log(policy_file=policy)
    with log.client(api_key=token) as client:
        receipt = client.append(b"deploy ok" + FORGERY)
    identity = Leaf.parse(receipt.leaf).identity
    assert identity

    result = run_sealog(
        "search", "--identity", identity, "--target", log.target, "--vkey", log.verifier.vkey,
        cwd=tmp_path,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert line.split("\t")[2] == "deploy ok\\n0\\t1767225600000\\tadmin\\tok\\x1b[2J\\t"


def test_verify_and_audit_texts_escape_payloads_and_labels(cli_log: CliLog, tmp_path: Path) -> None:
    with cli_log.client() as client:
        receipt = client.append(b"deploy ok" + FORGERY)
    bundle = tmp_path / "e.tlog-proof"
    cli_log.run("prove", "--index", str(receipt.index), "--bundle", str(bundle))

    verified = run_sealog("verify", str(bundle), "--vkey", cli_log.proc.vkey, cwd=tmp_path)

    assert verified.returncode == 0, verified.stderr
    lines = verified.stdout.splitlines()
    assert len(lines) == 3, verified.stdout
    assert lines[2] == "  payload deploy ok\\n0\\t1767225600000\\tadmin\\tok\\x1b[2J\\t"

    batch = tmp_path / "events.jsonl"
    label = "mine\nforged-event  included          0  " + "00" * 32
    batch.write_text(json.dumps({"label": label, "index": receipt.index}) + "\n")
    table = cli_log.run("audit", "--batch", str(batch)).stdout.splitlines()
    assert len(table) == 3, table  # header, one event, the summary
    assert table[1].startswith("mine\\nforged-event  included")
