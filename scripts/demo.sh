#!/usr/bin/env bash
# The README's run command after setup: `smartspec up` on the real pair, one streamed request
# through the OpenAI API (reply + speculation usage), the controller's policy, then the stack is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
PORT=${PORT:-8000}
LOG=$(mktemp)
"$BIN/smartspec" up --port "$PORT" > "$LOG" 2>&1 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null || true; wait $UP 2>/dev/null || true; rm -f "$LOG"' EXIT
echo "starting the stack (redis, controller, draft, target on the real pair; the first load takes ~30 s)..."
for _ in $(seq 1 600); do
  if grep -q "smartspec is up" "$LOG"; then break; fi
  if ! kill -0 $UP 2>/dev/null; then cat "$LOG"; echo "smartspec up failed" >&2; exit 1; fi
  sleep 1
done
grep "smartspec is up" "$LOG"
"$BIN/python" scripts/demo_client.py --base-url "http://127.0.0.1:$PORT/v1" ${PROMPT:+--prompt "$PROMPT"} \
  --max-tokens "${MAX_TOKENS:-128}"
echo
echo "the controller's policy in force (smartspec policy show):"
"$BIN/smartspec" policy show
