#!/usr/bin/env bash
# Makes the private Python environment in which the tensorboard_reader
# test reads traind's event files with TensorBoard's own reader: PyPI's
# tensorboard (not TensorFlow, which the reader does not need), in DIR
# (default: build/tensorboard-venv).  Debian's python3-venv makes it.
#
#   tests/tensorboard/setup.sh [DIR]
#
# The test finds it at TD_BUILD_ROOT/tensorboard-venv or at
# $TD_TENSORBOARD_VENV.  Idempotent: an environment that already imports
# the reader is kept.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${1:-$root/build/tensorboard-venv}

if [ -x "$venv/bin/python3" ] &&
   "$venv/bin/python3" -c 'import tensorboard.backend.event_processing.event_accumulator' \
     2>/dev/null; then
  echo "tensorboard: $venv is ready"
  exit 0
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  echo "tensorboard: python3-venv is missing: apt-get install python3-venv" >&2
  exit 1
fi
mkdir -p "$(dirname "$venv")"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check tensorboard
"$venv/bin/python3" -c 'import tensorboard; print("tensorboard:", tensorboard.__version__, "in '"$venv"'")'
