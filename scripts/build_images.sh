#!/usr/bin/env bash
# Build the four smartspec images (target, draft, controller, operator), tagged with the project's version.
#
#   scripts/build_images.sh               build all four, print each image's size
#   scripts/build_images.sh --print-tags  only print the tags it would build (the chart's defaults must match)
#
# Builder: buildah (chroot isolation, no daemon) where installed, else docker, else podman; BUILDER=... picks.
# Base: BASE_IMAGE=... if given; else with buildah and debootstrap, a local Debian bookworm root filesystem
# with python3 (made once and cached as localhost/smartspec-base:bookworm, from this machine's apt mirror);
# else the public python:3.11-slim. Wheels: fetched once by this machine's pip (its index and settings) into
# .wheelhouse, so the builds are offline and install exactly what the host resolved (torch first).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' smartspec/__init__.py)
ROLES=(target draft controller operator)
declare -A DOCKERFILE=([target]=services/target/Dockerfile [draft]=services/draft/Dockerfile
                      [controller]=controller/Dockerfile [operator]=operator/Dockerfile)
REPO=${IMAGE_REPOSITORY:-smartspec}
tag() { echo "$REPO/$1:$VERSION"; }

if [ "${1:-}" = "--print-tags" ]; then
  for r in "${ROLES[@]}"; do tag "$r"; done
  exit 0
fi

BUILDER=${BUILDER:-}
if [ -z "$BUILDER" ]; then
  for b in buildah docker podman; do command -v "$b" >/dev/null && { BUILDER=$b; break; }; done
fi
[ -n "$BUILDER" ] || { echo "build_images: no buildah, docker or podman (apt-get install buildah)" >&2; exit 1; }
# A docker CLI without a daemon cannot build: fall through to what can.
if [ "$BUILDER" = docker ] && ! docker info >/dev/null 2>&1; then
  command -v podman >/dev/null && BUILDER=podman || { echo "build_images: docker has no daemon here" >&2; exit 1; }
fi

# -- the base image -------------------------------------------------------------------------------------
BASE_TAG=localhost/smartspec-base:bookworm
apt_mirror() {  # the first Debian mirror apt uses here (one-line or deb822 sources)
  { grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2}'
    grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}'; } | grep -v security | head -1
}
if [ -z "${BASE_IMAGE:-}" ]; then
  if [ "$BUILDER" = buildah ] && command -v debootstrap >/dev/null; then
    if ! buildah inspect --type image "$BASE_TAG" >/dev/null 2>&1; then
      mirror=$(apt_mirror)
      echo "build_images: making $BASE_TAG (debootstrap bookworm)"
      root=$(mktemp -d)
      trap 'rm -rf "$root"' EXIT
      debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" ${mirror:+"$mirror"} \
        >/dev/null
      rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
      ctr=$(buildah from scratch)
      mnt=$(buildah mount "$ctr")
      cp -a "$root"/. "$mnt"/
      buildah umount "$ctr" >/dev/null
      buildah config --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
      buildah commit --quiet "$ctr" "$BASE_TAG" >/dev/null
      buildah rm "$ctr" >/dev/null
      rm -rf "$root"
      trap - EXIT
    fi
    BASE_IMAGE=$BASE_TAG
  else
    BASE_IMAGE=python:3.11-slim
  fi
fi

# -- wheels ---------------------------------------------------------------------------------------------
# Everything the four images install, plus the build backend (pip builds the project wheel in the image) and
# pip itself, which scripts/image_pip.sh runs from its wheel.
# Resolved for the base image's Python, not the host's: markers differ between 3.11 releases. pip applies
# --python-version to python_version only, so what depends on the patch release is named here
# (redis needs async-timeout below 3.11.3, bookworm's Python is 3.11.2).
base_python() {
  local code='import platform; print(platform.python_version())'
  case $BUILDER in
    buildah) local c; c=$(buildah from --pull=never --quiet "$BASE_IMAGE")
             buildah run --isolation chroot "$c" python3 -c "$code"; buildah rm "$c" >/dev/null ;;
    *) "$BUILDER" run --rm --entrypoint python3 "$BASE_IMAGE" -c "$code" ;;
  esac
}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PY_VERSION=$(base_python)
stamp=.wheelhouse/.fetched
if [ "$(cat "$stamp" 2>/dev/null)" != "$PY_VERSION $TORCH_SPEC pip" ] || [ pyproject.toml -nt "$stamp" ] \
   || ! ls .wheelhouse/torch-*.whl >/dev/null 2>&1; then
  echo "build_images: fetching wheels for Python $PY_VERSION into .wheelhouse"
  rm -f .wheelhouse/*.whl
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: -d .wheelhouse \
    --python-version "$PY_VERSION" pip "$TORCH_SPEC" "hatchling>=1.25" "async-timeout>=4.0.3" \
    ".[target,draft,controller,operator]" 2>&1 | grep -v "is ignored" >&2 || true
  rm -f .wheelhouse/smartspec-*  # the project itself is built in the image from its sources
  ls .wheelhouse/torch-* >/dev/null  # the download failed if torch is not there
  echo "$PY_VERSION $TORCH_SPEC pip" > "$stamp"
fi

# -- the images -----------------------------------------------------------------------------------------
build() {  # role
  local args=(-f "${DOCKERFILE[$1]}" -t "$(tag "$1")" --build-arg "BASE_IMAGE=$BASE_IMAGE"
              --label "io.smartspec.base-image=$BASE_IMAGE"
              --build-arg "TORCH_SPEC=$TORCH_SPEC")
  case $BUILDER in
    buildah) buildah bud --quiet --isolation chroot --layers "${args[@]}" . ;;
    docker) DOCKER_BUILDKIT=1 docker build --quiet "${args[@]}" . ;;
    podman) podman build --quiet --layers "${args[@]}" . ;;
  esac
}
size() {  # image -> its size as the builder prints it
  case $BUILDER in
    buildah) buildah images --format '{{.Size}}' "$1" | head -1 ;;
    *) "$BUILDER" image ls --format '{{.Size}}' "$1" | head -1 ;;
  esac
}
for r in "${ROLES[@]}"; do
  start=$(date +%s)
  build "$r" >/dev/null
  echo "build_images: $(tag "$r") built in $(( $(date +%s) - start ))s on $BASE_IMAGE"
done
echo "build_images: sizes"
for r in "${ROLES[@]}"; do
  printf '  %-32s %s\n' "$(tag "$r")" "$(size "$(tag "$r")")"
done
