#!/usr/bin/env bash
# README's run command: set up, fetch the real pair, run the demo (target-only vs fixed k).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${VENV:-.venv}/bin/smartspec" models fetch
exec bash scripts/demo.sh
