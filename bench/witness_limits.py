"""What hostile clients and a busy log cost the witness path: stalled uploads, and pushes.

Run from the repository root::

    python -m bench.witness_limits                  # both parts, default settings
    python -m bench.witness_limits --stalled 1000   # more stalled uploads

1. **Stalled uploads.** A ``sealog witness serve`` process (default limits,
   or ``--header-timeout`` / ``--body-timeout``) gets ``--stalled``
   connections that each send part of a request and stop — half a request
   head, or a whole head and 6 of the 1,000 body bytes it announced. Printed:
   the process's threads (``/proc/PID/status``) and open sockets
   (``/proc/PID/fd``) before, while they stall, and after the timeouts;
   and whether a real add-checkpoint request was answered meanwhile.
2. **Pushes.** A log in this process pushes to one witness (``--interval``,
   default the serve default) while one client appends ``--appends`` events
   over about ``--seconds``. Printed: the add-checkpoint requests the witness
   received during the appends, and how long after the last append the
   witness held the newest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.serve_process import child_env, sealog_command
from sealog.client.checkpoint import Checkpoint, sign_checkpoint
from sealog.client.cosignature import Cosigner
from sealog.client.http_serve import HttpLimits
from sealog.client.keyfile import write_private_key_file
from sealog.client.log_client import LogClient
from sealog.client.note import Ed25519Signer
from sealog.client.witness.endpoint import WitnessHTTPServer
from sealog.client.witness.protocol import AddCheckpointRequest, Witness, add_checkpoint
from sealog.server.app import LogServer
from sealog.server.witness_push import DEFAULT_PUSH_INTERVAL_S


def _threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE)
    return int(match.group(1)) if match else -1


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith("socket:")
    return count


def stalled_uploads(count: int, header_timeout: float, body_timeout: float) -> None:
    origin = "bench.localhost/log"
    log_key = Ed25519Signer.generate(origin)
    cosigner = Cosigner.generate("bench.localhost/witness")
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "w.key"
        write_private_key_file(key, cosigner.skey)
        limits = HttpLimits()
        proc = subprocess.Popen(
            [
                *sealog_command(),
                "witness",
                "serve",
                "--key",
                str(key),
                "--log",
                log_key.verifier().vkey,
                "--state-dir",
                str(Path(tmp) / "state"),
                "--listen",
                "127.0.0.1:0",
                "--header-timeout",
                str(header_timeout),
                "--body-timeout",
                str(body_timeout),
                "--max-connections",
                str(max(count + 16, limits.max_connections)),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        socks: list[socket.socket] = []
        try:
            assert proc.stdout is not None
            match = re.search(r"serving (http://127.0.0.1:(\d+)\S*)", proc.stdout.readline())
            assert match, "witness serve did not start"
            url, port = match.group(1), int(match.group(2))
            print(
                f"stalled uploads: {count}, header timeout {header_timeout:g} s, "
                f"body {body_timeout:g} s"
            )
            print(f"  before:  threads {_threads(proc.pid):4d}, sockets {_sockets(proc.pid):4d}")
            for i in range(count):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                if i % 2:
                    sock.sendall(
                        b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Length: 1000\r\n\r\n"
                        b"old 0\n"
                    )
                else:
                    sock.sendall(b"POST /add-checkpoint HTTP/1.1\r\nHost: w\r\nContent-Len")
                socks.append(sock)
            time.sleep(0.5)
            print(f"  stalled: threads {_threads(proc.pid):4d}, sockets {_sockets(proc.pid):4d}")
            note = _signed_checkpoint(log_key, origin)
            started = time.monotonic()
            answer = add_checkpoint(url, AddCheckpointRequest(0, (), note))
            print(
                f"  a real request meanwhile: {'cosigned' if answer else 'no answer'} "
                f"in {(time.monotonic() - started) * 1000:.1f} ms"
            )
            time.sleep(max(header_timeout, body_timeout) + 1.5)
            print(f"  after:   threads {_threads(proc.pid):4d}, sockets {_sockets(proc.pid):4d}")
        finally:
            for sock in socks:
                sock.close()
            proc.terminate()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()


def _signed_checkpoint(signer: Ed25519Signer, origin: str) -> bytes:
    return sign_checkpoint(Checkpoint(origin, 1, b"\x01" * 32), signer)


class _CountingWitness(Witness):
    calls = 0

    def add_checkpoint(self, body: bytes) -> bytes:
        self.calls += 1
        return super().add_checkpoint(body)


def pushes(appends: int, seconds: float, interval: float) -> None:
    origin = "bench.localhost/log"
    cosigner = Cosigner.generate("bench.localhost/witness")
    key = Ed25519Signer.generate(origin)
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "log.key"
        write_private_key_file(key_file, key.skey)
        witness = _CountingWitness(cosigner, {origin: [key.verifier()]}, Path(tmp) / "w")
        server = WitnessHTTPServer(witness).start()
        log = LogServer.open(
            Path(tmp) / "log",
            origin=origin,
            key_file=key_file,
            new_log=True,
            witnesses=[cosigner.verifier()],
            push_witnesses=[server.url],
            push_witness_interval_s=interval,
        )
        try:
            with LogClient(f"127.0.0.1:{log.port}", key.verifier()) as client:
                started = time.monotonic()

                def append(i: int) -> None:
                    # Paced over --seconds; concurrent, so that commits are not held
                    # back by one client's round trips.
                    pause = started + seconds * i / appends - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    client.append(b"event %d" % i)

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(append, range(appends)))
                elapsed = time.monotonic() - started
                during = witness.calls
                final = client.checkpoint().note
            done = time.monotonic()
            while witness.latest(origin) != final and time.monotonic() < done + interval + 30:
                time.sleep(0.01)
            lag = time.monotonic() - done
            print(f"pushes: {appends} appends in {elapsed:.2f} s, interval {interval:g} s")
            print(f"  add-checkpoint requests during the appends: {during}")
            if witness.latest(origin) != final:
                raise SystemExit(f"  the newest checkpoint was NOT cosigned within {lag:.0f} s")
            print(
                f"  newest checkpoint cosigned {lag:.2f} s after the last append "
                f"({witness.calls} requests in all)"
            )
        finally:
            log.stop()
            server.stop()
            witness.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    limits = HttpLimits()
    parser.add_argument("--stalled", type=int, default=300)
    parser.add_argument("--header-timeout", type=float, default=limits.header_timeout_s)
    parser.add_argument("--body-timeout", type=float, default=limits.body_timeout_s)
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--interval", type=float, default=DEFAULT_PUSH_INTERVAL_S)
    args = parser.parse_args()
    stalled_uploads(args.stalled, args.header_timeout, args.body_timeout)
    pushes(args.appends, args.seconds, args.interval)


if __name__ == "__main__":
    main()
