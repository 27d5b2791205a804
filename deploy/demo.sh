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

# As root traind serves several users and takes who is asking from MUNGE:
# the demo starts a munged of its own (own key and socket), as the tests do.
munge_sock=
if [ "$(id -u)" = 0 ]; then
  chmod 755 "$run" # munged wants its socket's directories searchable by all
  mkdir -m 755 "$run/munge"
  munge_sock=$run/munge/sock
  mungekey -c -f -k "$run/munge/key" -b 1024
  munged --key-file="$run/munge/key" --socket="$munge_sock" --pid-file="$run/munge/pid" \
    --log-file="$run/munge/log" --seed-file="$run/munge/seed"
  echo "munge_socket: $munge_sock" >>"$run/traind.yaml"
  export TRAIND_MUNGE_SOCKET=$munge_sock
fi

echo "demo: starting traind (log: $run/traind.log)"
"$TD_BUILD/daemon/traind" --config "$run/traind.yaml" 2>"$run/traind.log" &
pid=$!
stop() {
  kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  [ -z "$munge_sock" ] || munged --stop --socket="$munge_sock" >/dev/null 2>&1 || true
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
