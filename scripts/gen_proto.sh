#!/usr/bin/env bash
# Regenerate smartspec/v1/*_pb2*.py(i) from proto/smartspec/v1/*.proto. The output is committed;
# tests/unit/test_proto_drift.py fails when it no longer matches the .proto files.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-.}
"${VENV:-.venv}/bin/python" -m grpc_tools.protoc -Iproto --python_out="$OUT" --grpc_python_out="$OUT" \
  --pyi_out="$OUT" proto/smartspec/v1/*.proto
