"""The atheris child process of :mod:`bench.fuzz_parsers` (not run by hand).

``python -m bench.fuzz_worker SECONDS STATS_FILE CORPUS_DIR``: sealog's modules
are imported under atheris' instrumentation, so the search is guided by
their coverage, then libFuzzer runs until its time is up.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path


def main() -> None:
    atheris = importlib.import_module("atheris")
    with atheris.instrument_imports(include=["sealog"]):
        fuzz = importlib.import_module("bench.fuzz_parsers")
    fuzz.atheris_worker(float(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))


if __name__ == "__main__":
    main()
