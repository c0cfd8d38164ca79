"""The committed generated code is exactly what the pinned grpcio-tools makes of the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "proto" / "generate.py"), str(tmp_path)], check=True)
    committed = ROOT / "proto" / "sealog" / "v1"
    generated = sorted((tmp_path / "sealog" / "v1").iterdir())
    assert [p.name for p in generated] == ["log_pb2.py", "log_pb2.pyi", "log_pb2_grpc.py"]
    for path in generated:
        assert path.read_bytes() == (committed / path.name).read_bytes(), (
            f"{path.name} is stale: run `python proto/generate.py` and commit the result"
        )
