#!/bin/sh
# What TensorBoard's event files cost a job: a private traind (as
# deploy/demo.sh starts it, with its own munged when run as root) trains
# the Fashion-MNIST MLP example with tensorboard.every_steps 0 (no event
# file), 10 (the default) and 1 (every batch), in turns, ROUNDS times, and
# this prints each run's training samples/s (the worker's, from `show`) and
# the size of its event file.  A benchmark, not a test: nothing here
# asserts a figure, and the cores it shares make the runs' spread the
# number to compare the differences with.
#
#   tests/bench/bench_tfevents.sh [BUILD_DIR]
#
#   EPOCHS  epochs over all 60000 samples (default 1)
#   ROUNDS  turns of the three settings (default 2)
set -eu
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/build}
EPOCHS=${EPOCHS:-1}
ROUNDS=${ROUNDS:-2}

[ -f "$build/build.ninja" ] || meson setup "$build" "$src"
ninja -C "$build" daemon/traind daemon/traind-worker daemon/traind-loader \
  client/traind-client >/dev/null

run=$(mktemp -d /tmp/traind-tfevents.XXXXXX)
pid=
munge_sock=
stop() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  [ -z "$munge_sock" ] || munged --stop --socket="$munge_sock" >/dev/null 2>&1 || true
  rm -rf "$run"
}
trap stop EXIT
trap 'exit 130' INT TERM

cat >"$run/traind.yaml" <<YAML
socket: ipc://$run/traind.sock
status_socket: ipc://$run/status.sock
state_dir: $run/state
devices:
  - {name: cpu0, budget: 2GiB}
YAML
if [ "$(id -u)" = 0 ]; then
  chmod 755 "$run"
  mkdir -m 755 "$run/munge"
  munge_sock=$run/munge/sock
  mungekey -c -f -k "$run/munge/key" -b 1024
  munged --key-file="$run/munge/key" --socket="$munge_sock" --pid-file="$run/munge/pid" \
    --log-file="$run/munge/log" --seed-file="$run/munge/seed"
  echo "munge_socket: $munge_sock" >>"$run/traind.yaml"
  export TRAIND_MUNGE_SOCKET="$munge_sock"
fi
"$build/daemon/traind" --config "$run/traind.yaml" 2>"$run/traind.log" &
pid=$!
i=0
while [ ! -S "$run/traind.sock" ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$run/traind.log" >&2; exit 1; }
  i=$((i + 1))
  [ $i -lt 100 ] || { echo "traind did not open its socket" >&2; exit 1; }
  sleep 0.1
done

client() { "$build/client/traind-client" --socket "ipc://$run/traind.sock" "$@"; }

printf '%-12s %6s %12s %12s\n' every_steps round samples/s event_bytes
r=1
while [ $r -le "$ROUNDS" ]; do
  for every in 0 10 1; do
    sed -e "s/^  epochs: .*/  epochs: $EPOCHS/" -e 's/^output: .*/output: ""/' \
      "$src/examples/fashion-mnist-mlp.yaml" >"$run/job.yaml"
    printf 'tensorboard:\n  every_steps: %s\n' "$every" >>"$run/job.yaml"
    id=$(client --json submit "$run/job.yaml" |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
    client wait "$id" >/dev/null 2>&1 || true
    sps=$(client --json show "$id" | python3 -c '
import json, sys
j = json.load(sys.stdin)["job"]
print("%.0f" % j["samples_per_sec"] if j["state"] == "succeeded" else "failed")')
    bytes=$(cat "$run/state/jobs/$id"/events.out.tfevents.* 2>/dev/null | wc -c)
    printf '%-12s %6s %12s %12s\n' "$every" "$r" "$sps" "$bytes"
  done
  r=$((r + 1))
done
