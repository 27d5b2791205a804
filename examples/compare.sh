#!/usr/bin/env bash
# Train a job with traind and then with PyTorch, back to back on the same
# machine, and print both results: the test metric (accuracy, or MAE for a
# regression) and the training samples/s, and each run's CPU time.
#
#   examples/compare.sh JOB.yaml [PEER_OPTIONS...]
#
# traind's run is deploy/demo.sh's (a private traind with one cpu0 device,
# the real client, the job submitted and waited for); PyTorch's is
# tests/torch/train_peer.py (the same model from tests/torch/jobmodel.py,
# the same data, optimiser, schedule, batch and epochs; 2 threads, or
# --threads N).  The
# job's data must exist first (examples/README.md says how for each).  On a
# shared machine wall-clock speeds move with the neighbours' load: the CPU
# seconds (user + system, whole run: start, data loading, training,
# evaluation) are the fairer comparison there.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
job=${1:?usage: examples/compare.sh JOB.yaml [train_peer.py options]}
shift
log=$(mktemp /tmp/traind-compare.XXXXXX)
trap 'rm -f "$log"' EXIT

TIMEFORMAT='%U %S %R'
# demo.sh waits for traind, which reaps its worker and loader: their CPU
# time is in the shell's children times below (munged's is not).
{ time "$root/deploy/demo.sh" "$job" >"$log" 2>&1; } 2>"$log.time" || {
  cat "$log" >&2
  rm -f "$log.time"
  exit 1
}
read -r tu ts tr <"$log.time"
rm -f "$log.time"
# the client's last epoch line: "epoch 3/3 done: train loss ..; test loss .., acc 0.9012"
last=$(grep -E '^epoch [0-9]+/[0-9]+ done' "$log" | tail -1)
sps=$(grep -Eo '[0-9,]+ samples/s' "$log" | tail -1 | tr -d ,)
echo "traind: ${last##*; } | ${sps:-? samples/s} (last progress line) | cpu_s=$(awk "BEGIN { print $tu + $ts }") wall_s=$tr (whole demo run)"

# OpenBLAS's own threads on top of PyTorch's oversubscribe the cores: one
# BLAS thread, PyTorch's threads around it, is PyTorch's fastest here (as
# bench_train finds; for a small model --threads 1 can be faster still)
{ time OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "$root/tests/torch/train_peer.py" "$job" "$@" \
    >"$log" 2>&1; } 2>"$log.time" || {
  cat "$log" >&2
  rm -f "$log.time"
  exit 1
}
read -r tu ts tr <"$log.time"
rm -f "$log.time"
echo "$(tail -1 "$log") | cpu_s=$(awk "BEGIN { print $tu + $ts }") wall_s=$tr (whole peer run)"
