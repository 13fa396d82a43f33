#!/usr/bin/env bash
# README's test command: set up, fetch the real pair (its tests run too), build the four images (their
# smoke tests run too), run the whole suite.
# Extra arguments go to pytest (e.g. `scripts/test.sh -m "not realpair"` for the tiny-model tests only).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN=${VENV:-.venv}/bin
"$BIN/smartspec" models fetch
bash scripts/build_images.sh
exec "$BIN/python" -m pytest "$@"
