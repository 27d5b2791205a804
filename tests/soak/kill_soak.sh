#!/usr/bin/env bash
# A longer soak of the SIGKILL test: many rounds of a submit storm, traind
# killed at a random moment, restarted and checked (tests/integration/
# test_kill.c; the suite runs 100 rounds).  A fresh state directory every
# 100 rounds keeps `list` under the protocol's reply limit.
#
#   tests/soak/kill_soak.sh [ROUNDS] [BUILD_DIR]     default 2000 rounds, build/
#   TD_KILL_SEED=N tests/soak/kill_soak.sh 500       repeat a run's random choices
#
# On a failure the state directory and traind's log are kept under
# $TMPDIR (or /tmp), named in the message.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
rounds=${1:-2000}
build=$(cd "${2:-$root/build}" && pwd)

ninja -C "$build" tests/test_kill daemon/traind >/dev/null
echo "kill soak: $rounds rounds with $build/daemon/traind"
start=$(date +%s)
TD_KILL_ROUNDS=$rounds TD_BUILD_ROOT=$build TD_SOURCE_ROOT=$root \
  CK_RUN_CASE=durable "$build/tests/test_kill"
echo "kill soak: $rounds rounds passed in $(( $(date +%s) - start )) s"
