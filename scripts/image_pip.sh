#!/bin/sh
# `pip install ARGS` into the image's venv (/opt/smartspec) without pip ever being installed in a layer:
# pip runs from its wheel in /wheelhouse (offline, as scripts/build_images.sh prepares it). With an empty
# wheelhouse (a plain `docker build`), pip is bootstrapped into the venv and the Dockerfile removes it.
# Bind-mounted into each RUN by the Dockerfiles; never copied into an image.
set -e
VENV=/opt/smartspec
[ -x "$VENV/bin/python" ] || python3 -m venv --without-pip "$VENV"
whl=$(ls /wheelhouse/pip-*.whl 2>/dev/null | head -n 1)
if [ -n "$whl" ]; then
  exec "$VENV/bin/python" "$whl/pip" install --no-index --find-links /wheelhouse "$@"
fi
"$VENV/bin/python" -m ensurepip >/dev/null
exec "$VENV/bin/python" -m pip install "$@"
