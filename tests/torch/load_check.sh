#!/bin/sh
# For every example job (and the jobs beside this script, for the layers no
# example has): td_model_probe trains its model a few steps and
# saves it; load_check.py loads the file into PyTorch's nn.Sequential and
# must reproduce traind's evaluation.  Skipped (77) without PyTorch.
#
#   load_check.sh PROBE SOURCE_ROOT
set -eu
probe=$1
src=$2
python=/usr/bin/python3
if ! "$python" -c 'import torch, yaml' 2>/dev/null; then
  echo "skipped: PyTorch or PyYAML is not installed for $python" \
       "(apt-get install python3-torch python3-yaml)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
for job in "$src"/examples/*.yaml "$src"/tests/torch/*.yaml; do
  out=$("$probe" "$job" "$tmp") || { echo "$job: td_model_probe failed"; status=1; continue; }
  loss=$(echo "$out" | sed -n 's/.*loss_sum=\([^ ]*\).*/\1/p')
  correct=$(echo "$out" | sed -n 's/.*correct=\([^ ]*\).*/\1/p')
  "$python" "$src/tests/torch/load_check.py" "$job" "$tmp" "$loss" "$correct" || status=1
done
exit $status
