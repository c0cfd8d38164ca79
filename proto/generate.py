"""Regenerate the Python code for proto/sealog/v1/*.proto.

Run from anywhere: ``python proto/generate.py [OUT_DIR]``. With no OUT_DIR the
files are written next to the .proto files, where the package imports them
from. The grpcio-tools version is pinned in pyproject.toml so the output is
reproducible; tests/test_generated_protos.py checks the committed files match.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent


def generate(out_dir: Path) -> None:
    """Write log_pb2.py, log_pb2.pyi and log_pb2_grpc.py under ``out_dir/sealog/v1``."""
    (out_dir / "sealog" / "v1").mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("sealog/v1/*.proto"))
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
