"""One client must not hurt others: server memory under unread streams and idle connections.

Run from the repository root::

    python -m bench.resources            # 200 unread GetEntries streams, 2,000 idle connections
    python -m bench.resources --quick    # fewer of each, a smaller log (the smoke test)

A real ``sealog serve`` (:class:`bench.serve_process.SealogServe`) holds a log of
64 KiB-ish entries. Two phases, each against a fresh server:

1. ``--streams`` GetEntries calls over the whole log that nobody reads. They all
   come from 127.0.0.1, so the server runs with ``--max-entry-streams-per-peer``
   raised to the stream count: that models as many clients on as many addresses,
   and leaves the global cap (``max_entry_streams``) to bind. The clients turn off
   HTTP/2 window growth (BDP probing), so the server is held up as by a client
   that stopped reading.
2. ``--connections`` raw TCP connections that never send a byte.

Meanwhile a normal client appends and fetches an entry with its inclusion proof.
Each phase prints the server's RSS against the bound docs/api.md ("Limits")
states, as a ratio (< 1 is within it), and how many streams were refused with
RESOURCE_EXHAUSTED or connections closed by the handshake timeout. Memory, not
time, is what this measures; nothing here is a timed assertion.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from bench.serve_process import SealogServe, rss_kib
from sealog.server.config import Settings
from sealog.v1 import log_pb2, log_pb2_grpc

__all__ = ["connection_bound_mib", "main", "stream_bound_mib"]

MIB = 1024 * 1024
PAYLOAD_BYTES = 60_000
_OPTS = [
    ("grpc.max_receive_message_length", 100 * MIB),
    ("grpc.max_send_message_length", 100 * MIB),
]
STREAM_COPIES = 4
"""Copies of one page an unread stream may hold: the protobuf message, its serialized
bytes, grpc core's slices, and allocator slack."""
CONNECTION_KIB = 64
"""Server memory one idle connection may take (measured: about 10 KiB)."""
BASE_SLACK_MIB = 64
"""Headroom over the server's RSS before the phase: thread stacks, allocator arenas."""


def stream_bound_mib(base_mib: float, settings: Settings) -> float:
    """The RSS bound with every entry stream slot held by an unread stream."""
    per_stream = STREAM_COPIES * settings.max_page_bytes / MIB
    return base_mib + BASE_SLACK_MIB + settings.max_entry_streams * per_stream


def connection_bound_mib(base_mib: float, connections: int) -> float:
    """The RSS bound with ``connections`` idle connections open."""
    return base_mib + BASE_SLACK_MIB + connections * CONNECTION_KIB / 1024


def _rss_mib(pid: int) -> float:
    return rss_kib(pid).get("VmRSS", 0) / 1024


def _fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def _fill(stub: log_pb2_grpc.LogServiceStub, entries: int) -> None:
    payload = os.urandom(PAYLOAD_BYTES)
    for start in range(0, entries, 500):
        count = min(500, entries - start)
        stub.Append(
            log_pb2.AppendRequest(
                entries=[log_pb2.AppendEntry(payload=payload) for _ in range(count)]
            ),
            timeout=120,
        )


def _normal_client(stub: log_pb2_grpc.LogServiceStub, size: int) -> str:
    """One append and one entry-and-proof, as any client does; 'ok' or the failure."""
    try:
        stub.Append(
            log_pb2.AppendRequest(entries=[log_pb2.AppendEntry(payload=b"normal client")]),
            timeout=10,
        )
        stub.GetEntryAndProof(
            log_pb2.GetEntryAndProofRequest(leaf_index=size // 2, tree_size=size), timeout=10
        )
    except grpc.RpcError as e:
        return f"FAILED {e.code().name}: {e.details()}"
    return "ok"


def _row(label: str, value: str) -> None:
    print(f"{label:<58} {value}")


def _streams_phase(data: Path, entries: int, streams: int, settle_s: float) -> bool:
    settings = Settings()
    with SealogServe(data, "--max-entry-streams-per-peer", str(streams)) as serve:
        serve.wait_ready()
        channel = grpc.insecure_channel(serve.target, options=_OPTS)
        stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
        _fill(stub, entries)
        size = entries
        base = _rss_mib(serve.pid)
        unread_channels = [
            grpc.insecure_channel(serve.target, options=[*_OPTS, ("grpc.http2.bdp_probe", 0)])
            for _ in range(max(1, streams // 10))
        ]
        calls = []
        for i in range(streams):
            unread = log_pb2_grpc.LogServiceStub(unread_channels[i % len(unread_channels)])  # type: ignore[no-untyped-call]
            calls.append(
                unread.GetEntries(log_pb2.GetEntriesRequest(start=0, end=size, tree_size=size))
            )
        peak = base
        deadline = time.monotonic() + settle_s
        while time.monotonic() < deadline:
            time.sleep(0.25)
            peak = max(peak, _rss_mib(serve.pid))
        normal = _normal_client(stub, size)
        refused = sum(
            1 for call in calls if call.done() and call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        peak = max(peak, _rss_mib(serve.pid))
        for call in calls:
            call.cancel()
        for c in unread_channels:
            c.close()
        channel.close()
        bound = stream_bound_mib(base, settings)
        _row(f"unread GetEntries streams ({entries:,} leaves each)", f"{streams:,}")
        _row(
            "  admitted (max_entry_streams) / refused RESOURCE_EXHAUSTED",
            f"{streams - refused} / {refused}",
        )
        _row("  server RSS before / peak, MiB", f"{base:,.0f} / {peak:,.0f}")
        _row(
            f"  bound: before + {BASE_SLACK_MIB} + {settings.max_entry_streams} x "
            f"{STREAM_COPIES} x max_page_bytes, MiB",
            f"{bound:,.0f}  ratio {peak / bound:.2f}",
        )
        _row("  normal client's append and proof meanwhile", normal)
        return normal == "ok" and peak <= bound


def _raise_own_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server closed ``sock`` (after what it sent: its HTTP/2 SETTINGS)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def _connections_phase(data: Path, connections: int, handshake_s: float) -> bool:
    _raise_own_fd_limit(connections + 256)
    with SealogServe(data, "--handshake-timeout-s", str(handshake_s)) as serve:
        serve.wait_ready()
        channel = grpc.insecure_channel(serve.target, options=_OPTS)
        stub = log_pb2_grpc.LogServiceStub(channel)  # type: ignore[no-untyped-call]
        _fill(stub, 10)
        base, base_fds = _rss_mib(serve.pid), _fds(serve.pid)
        opened: list[socket.socket] = []
        started = time.monotonic()
        for _ in range(connections):
            s = socket.create_connection((serve.host, serve.port), timeout=10)
            opened.append(s)
        time.sleep(0.5)
        held_rss, held_fds = _rss_mib(serve.pid), _fds(serve.pid)
        fresh = grpc.insecure_channel(serve.target, options=_OPTS)  # a new client, meanwhile
        normal = _normal_client(log_pb2_grpc.LogServiceStub(fresh), 10)  # type: ignore[no-untyped-call]
        fresh.close()
        time.sleep(max(0.0, started + handshake_s + 2.0 - time.monotonic()))
        closed = sum(closed_by_peer(s) for s in opened)
        for s in opened:
            s.close()
        after_fds = _fds(serve.pid)
        channel.close()
        bound = connection_bound_mib(base, connections)
        _row("idle TCP connections that never send a byte", f"{connections:,}")
        _row("  server RSS before / with them open, MiB", f"{base:,.0f} / {held_rss:,.0f}")
        _row(
            f"  bound: before + {BASE_SLACK_MIB} + {CONNECTION_KIB} KiB each, MiB",
            f"{bound:,.0f}  ratio {held_rss / bound:.2f}",
        )
        _row(
            "  server file descriptors before / with them / after",
            f"{base_fds} / {held_fds} / {after_fds}",
        )
        _row(
            f"  closed by the server within handshake timeout {handshake_s:g} s + 2 s",
            f"{closed:,}",
        )
        _row("  new client's append and proof meanwhile", normal)
        return normal == "ok" and held_rss <= bound and closed == connections


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.resources",
        description="Server memory with unread GetEntries streams and idle connections.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer streams and connections")
    parser.add_argument("--streams", type=int, help="unread GetEntries streams (default 200)")
    parser.add_argument("--connections", type=int, help="idle connections (default 2000)")
    parser.add_argument("--entries", type=int, help="leaves in the log (default 2000)")
    args = parser.parse_args(argv)
    streams = args.streams or (80 if args.quick else 200)
    connections = args.connections or (300 if args.quick else 2000)
    entries = args.entries or (300 if args.quick else 2000)
    tmp = Path(tempfile.mkdtemp(prefix="sealog-resources-"))
    try:
        ok = _streams_phase(tmp / "streams", entries, streams, 3.0 if args.quick else 8.0)
        ok = _connections_phase(tmp / "connections", connections, 2.0) and ok
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("all within bounds" if ok else "SOME FIGURE IS OUT OF BOUNDS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
