#!/bin/sh
# Build and run the training benchmark (bench_train): traind's samples/s on
# the CPU backend beside PyTorch's and the OpenBLAS SGEMM ceiling, for the
# Fashion-MNIST MLP and CNN examples, the small ResNet
# (examples/fashion-mnist-resnet.yaml) and the byte-level transformer
# (examples/text-transformer.yaml), or for the one job file given.  The
# benchmark feeds random samples of the job's shape: no dataset is needed.
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
for a in "$@"; do
  case $a in *.yaml | *.yml) exec "$build/tests/bench_train" "$@" ;; esac
done
# no job given: bench_train's own two (MLP, CNN), then the ResNet and the
# transformer, each a table of its own
"$build/tests/bench_train" "$@"
for job in fashion-mnist-resnet text-transformer; do
  echo
  "$build/tests/bench_train" "$@" "$src/examples/$job.yaml"
done
