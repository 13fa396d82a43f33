#!/usr/bin/env bash
# The README's run command: the real pair, one prompt, target-only (`--policy off`) vs fixed k.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
TARGET=$("$BIN/smartspec" models path target)
DRAFT=$("$BIN/smartspec" models path draft)
PROMPT=${PROMPT:-"Write a Python function that returns the n-th Fibonacci number, with a docstring."}
for policy in off fixed:4; do
  echo "=== smartspec generate --policy $policy (bf16, target Qwen2.5-Coder-1.5B, draft 0.5B) ==="
  "$BIN/smartspec" generate --target "$TARGET" --draft "$DRAFT" --chat --prompt "$PROMPT" \
    --max-tokens "${MAX_TOKENS:-96}" --policy "$policy" 2>&1 | grep -v -E '^(Loading|Writing)'
done
