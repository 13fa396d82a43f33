"""The committed gRPC code must be exactly what scripts/gen_proto.sh generates from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "proto" / "smartspec" / "v1").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos], cwd=ROOT, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed (run scripts/gen_proto.sh)"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} drifted (run scripts/gen_proto.sh)"
    stale = {p.relative_to(ROOT) for p in (ROOT / "smartspec" / "v1").glob("*_pb2*.py*")} - set(generated)
    assert not stale, f"committed but no longer generated: {stale}"
