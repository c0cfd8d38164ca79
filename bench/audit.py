"""Full-audit catch-up rate: how fast a monitor downloads, re-parses and re-hashes a log.

Run from the repository root::

    python -m bench.audit            # 10^6 entries: about a minute, most of it filling the log
    python -m bench.audit --quick    # 10^5 entries, a smoke run

It fills a log in a temporary folder (in this process, through the
sequencer, 10,000 entries per durable commit, 100-byte payloads), starts
``sealog serve`` on it in its own process, then runs a
:class:`~sealog.client.monitor.follow.LogMonitor` with ``full_audit = true`` and no
saved state: it trusts the checkpoint, downloads every entry with
GetEntries (pages of 1,000), re-parses and re-hashes each leaf onto its own
compact range, checks every page against the signed root, and saves its
progress every 5 seconds. The figure is leaves per second of that catch-up,
client and server on the same machine, beside the goal of 100,000/s.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sealog.client.keyfile import write_private_key_file
from sealog.client.monitor.config import LogConfig
from sealog.client.monitor.follow import LogMonitor
from sealog.client.note import Ed25519Signer
from sealog.server.lmdb_storage import LmdbStorage
from sealog.server.log import Log
from sealog.server.sequencer import AppendItem

GOAL = 100_000
ORIGIN = "bench.localhost/audit"


def fill(data_dir: Path, entries: int) -> None:
    """Append ``entries`` 100-byte events to a new log in ``data_dir``."""
    signer = Ed25519Signer.generate(ORIGIN)
    data_dir.mkdir(mode=0o700)
    write_private_key_file(data_dir / "log.key", signer.skey)
    (data_dir / "log.vkey").write_text(signer.verifier().vkey + "\n")
    storage = LmdbStorage(data_dir / "db")
    log = Log(storage, signer, signer.verifier(), ORIGIN)
    try:
        payload = b'{"action":"deploy","actor":"ci/bench","resource":"svc/payments","n":%09d}'
        batch = 10_000
        for start in range(0, entries, batch):
            n = min(batch, entries - start)
            items = [AppendItem((payload % (start + i)).ljust(100, b" ")) for i in range(n)]
            log.append(items, "")
    finally:
        log.close()
        storage.close()


def serve(data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Start ``sealog serve`` on the log; return the process, its address and its vkey."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sealog.server.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--origin",
            ORIGIN,
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    target = vkey = ""
    deadline = time.monotonic() + 60
    while not (target and vkey):
        line = proc.stdout.readline()
        if not line or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("sealog serve did not start")
        if m := re.match(r"\s*address:\s+(\S+:\d+)", line):
            target = m.group(1)
        elif m := re.match(r"\s*verifier key:\s+(\S+)", line):
            vkey = m.group(1)
    return proc, target, vkey


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10^5 entries (a smoke run)")
    parser.add_argument("--entries", type=int, help="how many entries (default 10^6)")
    args = parser.parse_args(argv)
    entries = args.entries or (100_000 if args.quick else 1_000_000)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"sealog full-audit benchmark: {python}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="sealog-bench-audit-") as tmp:
        data = Path(tmp) / "log"
        began = time.perf_counter()
        fill(data, entries)
        print(f"filled a log of {entries:,} entries in {time.perf_counter() - began:.1f} s")
        proc, target, vkey = serve(data)
        try:
            config = LogConfig(
                name="bench",
                target=target,
                vkey=vkey,
                state_dir=Path(tmp) / "monitor",
                full_audit=True,
                page_size=1000,
                timeout_s=600,
            )
            with LogMonitor(config, out=io.StringIO(), err=sys.stderr) as monitor:
                began = time.perf_counter()
                result = monitor.poll()
                elapsed = time.perf_counter() - began
        finally:
            proc.terminate()
            proc.wait(60)
            if proc.stdout is not None:
                proc.stdout.close()
    if result.outcome != "ok" or result.audited != entries:
        print(f"audit failed: {result.line}")
        return 1
    rate = entries / elapsed
    label = "full-audit catch-up (leaves/s)"
    print(f"{label:<40} {rate:>12,.0f}/s   goal {GOAL:>9,}/s   {rate / GOAL:.2f}x")
    print(f"  {entries:,} leaves downloaded, re-parsed, re-hashed and checked in {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
