"""Byte-level fuzzing of everything that parses or verifies untrusted input.

Run from the repository root::

    python -m bench.fuzz_parsers --seconds 60            # atheris if installed
    python -m bench.fuzz_parsers --seconds 60 --engine hypothesis

Each input's first byte picks a target; the rest is decoded into its
arguments (bytes, text, integers of any sign and size, lists of hashes, or a
mutation of a valid note, checkpoint or key). A target may return, or raise
a :class:`~sealog.client.errors.SealogError`; any other exception, and a
parser that accepts bytes it would not write back identically, is a failure.
Failures are counted and the first few printed; fuzzing goes on.

With atheris (``pip install atheris``) the search is coverage-guided
(libFuzzer), seeded with valid samples; without it, hypothesis generates the
bytes. Exit status 1 if any failure was found.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sealog.client.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from sealog.client.cosignature import (
    CosignatureVerifier,
    Cosigner,
    cosign_checkpoint,
    verify_cosignatures,
)
from sealog.client.errors import SealogError
from sealog.client.leaf import Leaf
from sealog.client.note import Ed25519Signer, Ed25519Verifier, open_note, parse_note
from sealog.client.range_proof import verify_range
from sealog.client.verify import verify_consistency, verify_inclusion

__all__ = ["TARGETS", "atheris_worker", "check_one", "main", "mutate", "seed_inputs"]

REPO_ROOT = Path(__file__).resolve().parent.parent
_MAX_FAILURES_KEPT = 20
_STATS_INTERVAL_S = 0.5


# --- decoding fuzz bytes into arguments ---------------------------------------------------
class _Reader:
    """Takes arguments off the front of the fuzz input; runs dry gracefully."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        b = self.take(1)
        return b[0] if b else 0

    def integer(self) -> int:
        """Small, edge-case, huge or negative: the first byte says which."""
        kind = self.byte() % 6
        raw = self.take(8)
        value = int.from_bytes(raw, "big")
        if kind == 0:
            return value % 64
        if kind == 1:
            return value % 1024
        if kind == 2:
            return [0, 1, 2, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1][value % 8]
        if kind == 3:
            return value
        if kind == 4:
            return int.from_bytes(raw, "big", signed=True)
        return value % (1 << 40)

    def hash_(self) -> bytes:
        """32 bytes, or (rarely) another length."""
        n = self.byte()
        return self.take(32 if n < 240 else n % 40)

    def hashes(self) -> list[bytes]:
        return [self.hash_() for _ in range(self.byte() % 70)]

    def rest(self) -> bytes:
        out = self.data[self.pos :]
        self.pos = len(self.data)
        return out


def mutate(sample: bytes, data: bytes) -> bytes:
    """Apply edits described by ``data`` to a valid sample: flips, inserts, deletes, cuts."""
    out = bytearray(sample)
    r = _Reader(data)
    for _ in range(1 + r.byte() % 4):
        if not out:
            break
        op, pos, val = r.byte() % 5, int.from_bytes(r.take(2) or b"\0", "big") % len(out), r.byte()
        if op == 0:
            out[pos] ^= 1 << (val % 8)
        elif op == 1:
            out[pos] = val
        elif op == 2:
            out.insert(pos, val)
        elif op == 3:
            del out[pos]
        else:
            del out[pos:]
    return bytes(out)


# --- valid samples to mutate ------------------------------------------------------------------
ORIGIN = "fuzz.example/log"


class _Samples:
    def __init__(self) -> None:
        signer = Ed25519Signer.generate(ORIGIN)
        self.signer = signer
        self.verifier = signer.verifier()
        self.witness = Cosigner.generate("witness.example/w1")
        self.leaf = Leaf(1767225600000, "spiffe://example.org/ci", b"deploy").to_bytes()
        self.body = Checkpoint(ORIGIN, 21, bytes(range(32)), ("ext line",)).to_bytes()
        self.note = sign_checkpoint(Checkpoint.parse(self.body), signer)
        self.cosigned = cosign_checkpoint(self.note, self.witness)


_S: _Samples | None = None


def _samples() -> _Samples:
    global _S  # noqa: PLW0603
    if _S is None:
        _S = _Samples()
    return _S


# --- the targets -------------------------------------------------------------------------------
def _t_leaf(r: _Reader) -> None:
    data = r.rest()
    leaf = Leaf.parse(data)
    if leaf.to_bytes() != data:
        raise AssertionError(f"Leaf.parse accepted {data!r} but writes {leaf.to_bytes()!r}")


def _t_leaf_mutated(r: _Reader) -> None:
    data = mutate(_samples().leaf, r.rest())
    leaf = Leaf.parse(data)
    if leaf.to_bytes() != data:
        raise AssertionError(f"Leaf.parse accepted {data!r} but writes {leaf.to_bytes()!r}")


def _t_parse_note(r: _Reader) -> None:
    parse_note(r.rest())


def _t_open_note(r: _Reader) -> None:
    open_note(r.rest(), [_samples().verifier])


def _t_open_note_mutated(r: _Reader) -> None:
    s = _samples()
    open_note(mutate(s.cosigned, r.rest()), [s.verifier, s.witness.verifier()])


def _t_checkpoint_parse(r: _Reader) -> None:
    data = r.rest()
    cp = Checkpoint.parse(data)
    if cp.to_bytes() != data:
        raise AssertionError(f"Checkpoint.parse accepted {data!r} but writes {cp.to_bytes()!r}")


def _t_checkpoint_parse_mutated(r: _Reader) -> None:
    data = mutate(_samples().body, r.rest())
    cp = Checkpoint.parse(data)
    if cp.to_bytes() != data:
        raise AssertionError(f"Checkpoint.parse accepted {data!r} but writes {cp.to_bytes()!r}")


def _t_open_checkpoint(r: _Reader) -> None:
    s = _samples()
    open_checkpoint(mutate(s.note, r.rest()), s.verifier, origin=ORIGIN)


def _t_verify_cosignatures(r: _Reader) -> None:
    s = _samples()
    verify_cosignatures(mutate(s.cosigned, r.rest()), [s.witness.verifier()])


def _text(r: _Reader) -> str:
    return r.rest().decode("utf-8", errors="surrogateescape")


def _t_vkey(r: _Reader) -> None:
    Ed25519Verifier.from_vkey(_text(r))


def _t_vkey_mutated(r: _Reader) -> None:
    vkey = _samples().verifier.vkey.encode()
    Ed25519Verifier.from_vkey(mutate(vkey, r.rest()).decode("utf-8", errors="surrogateescape"))


def _t_skey_mutated(r: _Reader) -> None:
    skey = _samples().signer.skey.encode()
    Ed25519Signer.from_skey(mutate(skey, r.rest()).decode("utf-8", errors="surrogateescape"))


def _t_skey(r: _Reader) -> None:
    Ed25519Signer.from_skey(_text(r))


def _t_cosig_vkey(r: _Reader) -> None:
    vkey = _samples().witness.verifier().vkey.encode()
    data = r.rest()
    text = mutate(vkey, data) if data[:1] != b"\xff" else data[1:]
    CosignatureVerifier.from_vkey(text.decode("utf-8", errors="surrogateescape"))


def _t_inclusion(r: _Reader) -> None:
    verify_inclusion(r.integer(), r.integer(), r.hash_(), r.hashes(), r.hash_())


def _t_consistency(r: _Reader) -> None:
    verify_consistency(r.integer(), r.integer(), r.hash_(), r.hash_(), r.hashes())


def _t_range(r: _Reader) -> None:
    start, size, root = r.integer(), r.integer(), r.hash_()
    frontier, leaves, proof = r.hashes(), r.hashes(), r.hashes()
    verified = verify_range(start, leaves, size, root, frontier, proof)
    verified.inclusion_proof(start + r.integer())


TARGETS: list[tuple[str, Callable[[_Reader], None]]] = [
    ("Leaf.parse", _t_leaf),
    ("Leaf.parse (mutated leaf)", _t_leaf_mutated),
    ("parse_note", _t_parse_note),
    ("open_note", _t_open_note),
    ("open_note (mutated cosigned note)", _t_open_note_mutated),
    ("Checkpoint.parse", _t_checkpoint_parse),
    ("Checkpoint.parse (mutated body)", _t_checkpoint_parse_mutated),
    ("open_checkpoint (mutated note)", _t_open_checkpoint),
    ("verify_cosignatures (mutated note)", _t_verify_cosignatures),
    ("Ed25519Verifier.from_vkey", _t_vkey),
    ("Ed25519Verifier.from_vkey (mutated)", _t_vkey_mutated),
    ("Ed25519Signer.from_skey", _t_skey),
    ("Ed25519Signer.from_skey (mutated)", _t_skey_mutated),
    ("CosignatureVerifier.from_vkey", _t_cosig_vkey),
    ("verify_inclusion", _t_inclusion),
    ("verify_consistency", _t_consistency),
    ("verify_range", _t_range),
]


def seed_inputs() -> list[bytes]:
    """Valid samples for each target, to start a coverage-guided search from."""
    s = _samples()
    out = [bytes([i]) for i in range(len(TARGETS))]
    out += [bytes([0]) + s.leaf, bytes([2]) + s.note, bytes([3]) + s.note, bytes([5]) + s.body]
    out += [bytes([9]) + s.verifier.vkey.encode(), bytes([11]) + s.signer.skey.encode()]
    return out


def check_one(data: bytes) -> str | None:
    """Run one input; return a description of the failure, or None if it behaved."""
    if not data:
        return None
    name, target = TARGETS[data[0] % len(TARGETS)]
    try:
        target(_Reader(data[1:]))
    except SealogError:
        return None
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        return (
            f"{name}: {type(e).__name__}: {e} (at {Path(where.filename).name}:{where.lineno}) "
            f"input {data[:200].hex()}"
        )
    return None


# --- engines -----------------------------------------------------------------------------------
class _Stats:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.inputs = 0
        self.failures = 0
        self.examples: list[str] = []
        self._last = 0.0
        self._started = time.monotonic()
        self.seconds = 0.0

    def record(self, data: bytes) -> None:
        self.inputs += 1
        failure = check_one(data)
        if failure is not None:
            self.failures += 1
            if len(self.examples) < _MAX_FAILURES_KEPT and failure not in self.examples:
                self.examples.append(failure)
        now = time.monotonic()
        if self.path is not None and (failure is not None or now - self._last > _STATS_INTERVAL_S):
            self._last = now
            self.save()

    def save(self) -> None:
        self.seconds = time.monotonic() - self._started
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "inputs": self.inputs,
                    "failures": self.failures,
                    "examples": self.examples,
                    "seconds": self.seconds,
                }
            )
        )
        tmp.replace(self.path)


def run_hypothesis(seconds: float) -> _Stats:
    """Feed hypothesis-generated bytes for ``seconds``."""
    stats = _Stats(None)
    for seed in seed_inputs():
        stats.record(seed)
    inputs = st.one_of(
        st.binary(max_size=600),
        st.tuples(st.integers(0, len(TARGETS) - 1), st.binary(max_size=300)).map(
            lambda t: bytes([t[0]]) + t[1]
        ),
    )

    @settings(
        max_examples=2000,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(inputs)
    def batch(data: bytes) -> None:
        stats.record(data)

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        batch()
    stats.save()
    return stats


def atheris_worker(seconds: float, stats_path: Path, corpus: Path) -> None:
    """Runs in a child process (:mod:`bench.fuzz_worker`); libFuzzer exits it when time is up."""
    atheris = importlib.import_module("atheris")
    stats = _Stats(stats_path)

    def one_input(data: bytes) -> None:
        stats.record(data)

    atheris.Setup(
        [sys.argv[0], f"-max_total_time={max(1, int(seconds))}", "-max_len=1024", str(corpus)],
        one_input,
    )
    try:
        atheris.Fuzz()
    finally:
        stats.save()


def run_atheris(seconds: float) -> _Stats:
    """Coverage-guided fuzzing with atheris in a child process, for ``seconds``."""
    with tempfile.TemporaryDirectory(prefix="sealog-fuzz-") as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for i, seed in enumerate(seed_inputs()):
            (corpus / f"seed{i}").write_bytes(seed)
        stats_path = Path(tmp) / "stats.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.fuzz_worker",
                str(seconds),
                str(stats_path),
                str(corpus),
            ],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=seconds + 120,
            check=False,
        )
        stats = _Stats(None)
        if stats_path.exists():
            saved = json.loads(stats_path.read_text())
            stats.inputs, stats.failures = saved["inputs"], saved["failures"]
            stats.seconds = saved["seconds"]
            stats.examples = saved["examples"]
        # The stats file is saved every half second; libFuzzer's own count is exact.
        done = re.search(r"^Done (\d+) runs in (\d+) second", proc.stderr, re.M)
        if done:
            stats.inputs = max(stats.inputs, int(done.group(1)))
        if proc.returncode != 0 and not stats.examples:
            stats.failures += 1
            stats.examples.append(f"atheris worker exited {proc.returncode}: {proc.stderr[-2000:]}")
        return stats


def _atheris_available() -> bool:
    return importlib.util.find_spec("atheris") is not None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz_parsers",
        description="Fuzz sealog's parsers and verifiers with random bytes for a time budget.",
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget")
    parser.add_argument(
        "--engine",
        choices=("auto", "atheris", "hypothesis"),
        default="auto",
        help="atheris (coverage-guided) if installed, else hypothesis",
    )
    opts = parser.parse_args(args)
    engine = opts.engine
    if engine == "auto":
        engine = "atheris" if _atheris_available() else "hypothesis"
    started = time.monotonic()
    stats = run_atheris(opts.seconds) if engine == "atheris" else run_hypothesis(opts.seconds)
    elapsed = time.monotonic() - started
    print(f"fuzz engine: {engine}, {len(TARGETS)} targets, {elapsed:.1f} s")
    print(f"inputs tried: {stats.inputs:,}")
    print(f"inputs per second (while fuzzing): {stats.inputs / max(stats.seconds, 1e-9):,.0f}")
    print(f"failures found: {stats.failures}")
    for example in stats.examples:
        print(f"FAILURE: {example}")
    return 1 if stats.failures else 0


if __name__ == "__main__":
    sys.exit(main())
