#!/usr/bin/env bash
# Package the Helm chart as a release artifact (dist/smartspec-<version>.tgz), its version and appVersion
# the project's (smartspec/__init__.py), so the images it deploys by default are the ones
# scripts/build_images.sh tags. Needs helm (scripts/setup.sh puts one in the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' smartspec/__init__.py)
HELM=${HELM:-$( [ -x .venv/bin/helm ] && echo .venv/bin/helm || echo helm)}
DEST=${1:-dist}
mkdir -p "$DEST"
"$HELM" lint --quiet helm/smartspec >/dev/null
"$HELM" package helm/smartspec --version "$VERSION" --app-version "$VERSION" --destination "$DEST"
