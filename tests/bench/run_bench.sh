#!/bin/sh
# Build and run the training benchmark (bench_train): traind's samples/s on
# the CPU backend beside PyTorch's and the OpenBLAS SGEMM ceiling, for the
# Fashion-MNIST MLP and CNN examples, or for the one job file given.
#
#   tests/bench/run_bench.sh [BUILD_DIR] [bench_train options...] [JOB.yaml]
#
# BUILD_DIR defaults to ./build under the source tree (made with meson if
# missing; benchmarks want an optimised build, meson's default here).  The
# PyTorch peer needs Debian's python3-torch for /usr/bin/python3:
#   apt-get install python3-torch
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
build="$src/build"
case ${1:-} in -* | *.yaml | *.yml | "") ;; *) is_build=1 ;; esac
if [ "${is_build:-0}" = 1 ]; then
  build=$1
  shift
fi
[ -f "$build/build.ninja" ] || meson setup "$build" "$src"
ninja -C "$build" tests/bench_train >/dev/null
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "note: PyTorch is not installed for /usr/bin/python3 (apt-get install python3-torch);" \
       "the peer column will be missing" >&2
fi
exec "$build/tests/bench_train" "$@"
