#!/usr/bin/env bash
# traind as a systemd service, as the README deploys it, under a booted
# systemd: a Debian 12 container (systemd-nspawn) with munged, the unit, a
# user in group traind who trains a model in her home directory, one who is
# not in the group, the unit's security exposure and a bad configuration.
#
#   tests/service/run.sh          as root; prints "service: N passed, M failed"
#
# The container's root file system is built once with mmdebstrap and kept as
# a tarball in /var/cache/traind-test/, named by a hash of what it holds;
# each run unpacks a fresh copy.  traind is built into build-service/ with
# the prefix the README uses (/usr, /etc).  TD_SERVICE_KEEP=1 keeps the
# container's files (not the container) for a look afterwards.
# ok never fails, so "A && ok ... || bad ..." is an if-then-else here.
# shellcheck disable=SC2015
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${TD_SERVICE_BUILD:-$root/build-service}
cache=/var/cache/traind-test
machine=traind-svc-$$
max_exposure=2.0
# What the container holds besides minbase: systemd and D-Bus to boot,
# munged, the libraries traind links, and what the test itself uses.
packages=(
  systemd dbus munge libmunge2
  libuv1 libnanomsg5 libmsgpackc2 libyaml-0-2 libsqlite3-0 libopenblas0
  libmicrohttpd12 libprotobuf-c1 libjpeg62-turbo libpng16-16
  libsystemd0 zlib1g sqlite3 passwd login util-linux
)

if [ "$(id -u)" != 0 ]; then
  echo "service: needs root (mmdebstrap, systemd-nspawn)" >&2
  exit 1
fi

log() { printf 'service: %s\n' "$*"; }

# --- host packages and the build ---------------------------------------

host_packages=(mmdebstrap systemd-container)
missing=()
for p in "${host_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The README's build, without CUDA (the container has no CUDA libraries):
# deploy/setup.sh installs the build's packages and the dataset, bound into
# the container below (the last --prefix on its meson line wins).
TD_BUILD=$build TD_MESON_ARGS="--prefix=/usr --sysconfdir=/etc -Dcuda=disabled -Dtests=false" \
  "$root/deploy/setup.sh" >/dev/null

# --- the root file system -----------------------------------------------

key=$( (echo "bookworm minbase"; printf '%s\n' "${packages[@]}" | sort) | sha256sum | cut -c1-16)
tarball=$cache/rootfs-$key.tar
mkdir -p "$cache"
if [ ! -s "$tarball" ]; then
  log "building the Debian 12 root file system (once; cached as $tarball)"
  timeout 900 mmdebstrap --quiet --variant=minbase --format=tar \
    --include="$(IFS=,; echo "${packages[*]}")" bookworm "$tarball.$$"
  mv "$tarball.$$" "$tarball"
  # one cached tarball: those of an older package list go
  find "$cache" -maxdepth 1 -name 'rootfs-*.tar' ! -name "${tarball##*/}" -delete
fi

work=$(mktemp -d /var/tmp/traind-service.XXXXXX)
rootfs=$work/root
nspawn_pid=

# ct CMD...: run CMD in the container, as root, with a clean environment.
ct() {
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    timeout 120 nsenter -t "$pid1" -a "$@"
}

cleanup() {
  local rc=$?
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn halts the container
    for _ in $(seq 60); do
      kill -0 "$nspawn_pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
    wait "$nspawn_pid" 2>/dev/null || true
  fi
  rm -rf "/run/systemd/nspawn/propagate/$machine" "/run/systemd/nspawn/unix-export/$machine"
  if [ "${TD_SERVICE_KEEP:-0}" = 1 ]; then
    log "kept $work"
  else
    rm -rf --one-file-system "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$rootfs"
tar -C "$rootfs" -xf "$tarball"
# The README's install: binaries, the unit, sysusers and tmpfiles entries,
# the configuration and the README, under /usr and /etc.
DESTDIR=$rootfs meson install -C "$build" --no-rebuild --quiet >/dev/null

# --- boot -----------------------------------------------------------------

[ -d /usr/share/datasets/fashion-mnist ] || { echo "service: no /usr/share/datasets/fashion-mnist" >&2; exit 1; }
log "booting the container"
setsid systemd-nspawn -D "$rootfs" -b --register=no --keep-unit -M "$machine" \
  --private-network --bind-ro=/usr/share/datasets \
  >"$work/console.log" 2>&1 </dev/null &
nspawn_pid=$!

pid1=
for _ in $(seq 100); do
  pid1=$(pgrep -P "$nspawn_pid" 2>/dev/null | head -1 || true)
  [ -n "$pid1" ] && [ "$(cat "/proc/$pid1/comm" 2>/dev/null)" = systemd ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || break
  pid1=
  sleep 0.2
done
if [ -z "$pid1" ]; then
  cat "$work/console.log" >&2
  echo "service: the container did not start systemd" >&2
  exit 1
fi
# systemd answers on its bus a moment after it starts: until then
# is-system-running fails at once, with no state.
state=
for _ in $(seq 120); do
  state=$(ct systemctl is-system-running --wait 2>/dev/null || true)
  [ -n "$state" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 0.5
done
case $state in
  running) ;;
  degraded) log "the container booted degraded:"; ct systemctl --failed --no-pager --plain || true ;;
  *) cat "$work/console.log" >&2; echo "service: the container did not boot: '$state'" >&2; exit 1 ;;
esac

# --- checks ---------------------------------------------------------------

passed=0
failed=0
ok() { passed=$((passed + 1)); log "ok: $*"; }
bad() {
  failed=$((failed + 1))
  log "FAILED: $*"
  ct journalctl -u traind --no-pager -n 30 -o cat 2>/dev/null | sed 's/^/  | /' || true
}
# as USER CMD: CMD in a login shell of USER (a login picks up new groups).
as() { local u=$1; shift; ct runuser -l "$u" -c "$*"; }

# A traind that runs jobs as their submitters links libmunge, and sets the
# sockets' mode itself.  An older one (before MUNGE) runs jobs as itself,
# so it keeps the model in its state directory, and its sockets follow the
# umask: for it alone the test opens the umask to the group with a drop-in.
if ct ldd /usr/bin/traind | grep -q libmunge; then
  multi=1
else
  multi=0
  log "this traind is from before MUNGE: it runs jobs as itself, and a drop-in sets UMask=0007"
  ct mkdir -p /etc/systemd/system/traind.service.d
  printf '[Service]\nUMask=0007\n' | ct sh -c 'cat > /etc/systemd/system/traind.service.d/before-munge.conf'
fi

# munged, as the README starts it; without the key Debian's package made,
# so that the README's line makes one.
ct rm -f /etc/munge/munge.key
ct sh -c 'test -s /etc/munge/munge.key || runuser -u munge -- mungekey --create' &&
  ct sh -c 'systemctl enable munge && systemctl restart munge' 2>&1 | sed 's/^/  /' &&
  ct munge -n </dev/null | ct unmunge >/dev/null &&
  ok "munged runs with a new key and decodes a credential" || bad "munged"

# The README's steps after `meson install`.
ct systemd-sysusers && ct systemd-tmpfiles --create && ct systemctl daemon-reload &&
  ct systemctl enable --now traind 2>&1 | sed 's/^/  /' &&
  ok "systemd-sysusers, systemd-tmpfiles, enable --now traind" || bad "enable --now traind"

show=$(ct systemctl show -p ActiveState,SubState,Type traind | sort | tr '\n' ' ')
[ "$show" = "ActiveState=active SubState=running Type=notify " ] &&
  ok "traind: $show" || bad "traind: $show"

ct useradd --create-home --shell /bin/bash alice
ct chmod 0700 /home/alice # private, as adduser makes it: only alice can write here
ct usermod -aG traind alice
ct useradd --create-home --shell /bin/bash bob # not in group traind

# A job that runs for seconds: the reference MLP on 2,000 samples, 1 epoch,
# written by alice into her own home.
if [ "$multi" = 1 ]; then
  output="output: model.safetensors   # next to this file, in alice's home"
else
  output='output: ""'
fi
as alice "cat > job.yaml" <<EOF
name: service-test
model:
  input: [28, 28]
  layers:
    - {type: dense, units: 64}
    - {type: relu}
    - {type: dense, units: 10}
data:
  format: idx
  train:
    images: /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
    labels: /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz
    limit: 2000
  test:
    images: /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
    labels: /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
    limit: 500
  normalize: {mean: 0.2860, std: 0.3530}
train:
  batch_size: 100
  epochs: 1
  seed: 42
  optimizer: {type: adam, lr: 0.001}
$output
EOF
if out=$(as alice "traind-client submit job.yaml --wait" 2>&1); then
  ok "alice (group traind) submits a job and it succeeds"
else
  bad "alice's job: $out"
fi
printf '%s\n' "$out" | tail -3 | sed 's/^/  | /'

if [ "$multi" = 1 ]; then
  owner=$(ct stat -c %U /home/alice/model.safetensors 2>&1 || true)
  [ "$owner" = alice ] && ok "the model in alice's home belongs to alice" ||
    bad "the model in alice's home: owner '$owner'"
fi

out=$(as alice "traind-client ls" 2>&1) && printf '%s' "$out" | grep -q service-test &&
  ok "traind-client ls as alice" || bad "traind-client ls as alice: $out"

if out=$(as bob "traind-client ls" 2>&1); then
  bad "bob (not in group traind) reached traind: $out"
elif printf '%s' "$out" | grep -qi "permission denied"; then
  ok "bob (not in group traind) is refused: permission denied"
else
  bad "bob is refused, but not with the permission message: $out"
fi

ct rm -f /etc/systemd/system/traind.service.d/before-munge.conf # the unit as shipped
ct systemctl daemon-reload
sec=$(ct systemd-analyze security --no-pager traind.service 2>&1 || true)
score=$(printf '%s\n' "$sec" | sed -n 's/.*Overall exposure level for traind.service: \([0-9.]*\).*/\1/p')
log "systemd-analyze security traind.service: ${score:-no score}"
if [ -n "$score" ] && awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'; then
  ok "exposure $score <= $max_exposure"
else
  printf '%s\n' "$sec" | grep -v "✓" | sed 's/^/  | /'
  bad "exposure ${score:-?} above $max_exposure"
fi

# A bad configuration stops the unit instead of restarting it forever: the
# unit does not restart traind's exit status for a bad configuration, 78.
ct cp /etc/traind/traind.yaml /etc/traind/traind.yaml.good
ct sh -c 'echo "ring_slots: 1" >> /etc/traind/traind.yaml'
code=0
ct traind --check-config /etc/traind/traind.yaml >/dev/null 2>&1 || code=$?
# A reload checks the file first: it fails, and traind runs on as it was.
if ct systemctl reload traind >/dev/null 2>&1; then
  bad "systemctl reload with a bad configuration returned 0"
elif [ "$(ct systemctl is-active traind)" = active ]; then
  ok "systemctl reload with a bad configuration fails, and traind runs on"
else
  bad "systemctl reload with a bad configuration stopped traind"
fi
if [ "$code" != 78 ]; then
  log "this traind exits $code, not 78, on a bad configuration: the unit restarts it (not counted)"
else
  ct systemctl restart traind >/dev/null 2>&1 || true
  sleep 6 # three times RestartSec=
  show=$(ct systemctl show -p ActiveState,NRestarts,ExecMainStatus traind | sort | tr '\n' ' ')
  restarts=$(printf '%s' "$show" | sed -n 's/.*NRestarts=\([0-9]*\).*/\1/p')
  if printf '%s' "$show" | grep -q "ActiveState=failed" && [ "${restarts:-99}" -le 1 ]; then
    ok "a bad configuration leaves traind failed, not restarting: $show"
  else
    bad "a bad configuration: $show"
  fi
fi
ct mv /etc/traind/traind.yaml.good /etc/traind/traind.yaml
ct systemctl reset-failed traind
ct systemctl start traind && [ "$(ct systemctl is-active traind)" = active ] &&
  ok "traind starts again with the good configuration" || bad "restart with the good configuration"

log "$passed passed, $failed failed"
((failed == 0))
