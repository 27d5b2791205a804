#!/usr/bin/env bash
# Sets everything up (deploy/setup.sh) and runs the whole test suite.
# CI runs exactly this (.ci/run), with warnings as errors.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TD_BUILD=${TD_BUILD:-$root/build}
export TD_MESON_ARGS="${TD_MESON_ARGS:--Dwerror=true}"
"$root/deploy/setup.sh"
meson test -C "$TD_BUILD" --print-errorlogs --num-processes 2 "$@"
