#!/usr/bin/env bash
# Sets everything up, starts traind with a private socket and state
# directory, trains examples/fashion-mnist-mlp.yaml through it with the real
# client, prints the test accuracy and the model's path, and stops traind.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export TD_BUILD=${TD_BUILD:-$root/build}
"$root/deploy/setup.sh"

job=${1:-$root/examples/fashion-mnist-mlp.yaml}
run=$(mktemp -d /tmp/traind-demo.XXXXXX)
cat >"$run/traind.yaml" <<YAML
socket: ipc://$run/traind.sock
status_socket: ipc://$run/status.sock
state_dir: $run/state
devices:
  - {name: cpu0, budget: 2GiB}
YAML

echo "demo: starting traind (log: $run/traind.log)"
"$TD_BUILD/daemon/traind" --config "$run/traind.yaml" 2>"$run/traind.log" &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  echo "demo: traind stopped; its state is in $run/state"
}
trap stop EXIT

for _ in $(seq 100); do
  [ -S "$run/traind.sock" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$run/traind.log" >&2; exit 1; }
  sleep 0.1
done

client=("$TD_BUILD/client/traind-client" --socket "ipc://$run/traind.sock")
"${client[@]}" devices
"${client[@]}" submit "$job" --wait
