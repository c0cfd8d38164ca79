"""Damage campaign: random byte flips in the live LMDB pages of a log, then ``sealog fsck``.

Run from the repository root::

    python -m bench.damage_fuzz --trials 150 --entries 10000 --seed 1

A log of ``--entries`` entries is built once; each trial copies it, flips 1, 2
or 8 random bits in one page that a table's B-tree reaches (half the time in
its first 64 bytes: the header and node offsets), and runs ``sealog fsck`` on
the copy. Every trial must end in exit status 0 (the flip hit bytes nothing
reads, such as a page's unused space) or 2 with a ``PROBLEM:`` line, never a
traceback, never another status. How many fsck named as a signal that killed
its LMDB reader (docs/storage.md, "Damaged files") is counted too. The exit
status is 1 if any trial broke the rule.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.lmdb_pages import layout
from bench.serve_process import child_env, sealog_command
from sealog.server.app import LogServer
from sealog.server.sequencer import AppendItem


def build(data_dir: Path, entries: int) -> str:
    """A log of ``entries`` entries with idempotency keys; return its verifier key."""
    server = LogServer.open(data_dir)
    try:
        for start in range(0, entries, 1000):
            end = min(entries, start + 1000)
            items = [AppendItem(b"event %d" % i, f"k{i}") for i in range(start, end)]
            server.log.append(items, "writer")
        return server.signer.verifier().vkey
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trials", type=int, default=150)
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    outcomes: Counter[str] = Counter()
    broken = 0
    with tempfile.TemporaryDirectory(prefix="sealog-damage-") as tmp:
        pristine = Path(tmp) / "pristine"
        vkey = build(pristine, args.entries)
        pages = layout(pristine / "db" / "data.mdb")
        live = [
            (table, kind, page)
            for table, kinds in pages.pages.items()
            for kind, numbers in kinds.items()
            if kind != "overflow"
            for page in numbers
        ]
        for trial in range(args.trials):
            copy = Path(tmp) / "copy"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(pristine, copy)
            data = copy / "db" / "data.mdb"
            raw = bytearray(data.read_bytes())
            table, kind, page = rng.choice(live)
            for _ in range(rng.choice((1, 2, 8))):
                span = 64 if rng.random() < 0.5 else pages.page_size
                raw[pages.offset(page) + rng.randrange(span)] ^= 1 << rng.randrange(8)
            data.write_bytes(raw)
            result = subprocess.run(
                [*sealog_command(), "fsck", str(copy), "--vkey", vkey],
                capture_output=True,
                text=True,
                timeout=600,
                env=child_env(),
                check=False,
            )
            if "Traceback" in result.stdout + result.stderr:
                outcome = "traceback"
            elif result.returncode == 0:
                outcome = "ok (flip not read)"
            elif result.returncode == 2 and "PROBLEM: " in result.stdout:
                signal = "killed the checker with " in result.stdout
                outcome = "PROBLEM, reader killed by a signal" if signal else "PROBLEM"
            else:
                outcome = f"exit {result.returncode}"
            outcomes[outcome] += 1
            if outcome.startswith(("traceback", "exit")):
                broken += 1
                print(f"trial {trial}: {table} {kind} page {page}: {outcome}\n{result.stdout}")
    print(f"{args.trials} trials on a log of {args.entries:,} entries (seed {args.seed}):")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {outcome:36} {count:5}")
    print(f"  {'broken (traceback or other exit)':36} {broken:5}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
