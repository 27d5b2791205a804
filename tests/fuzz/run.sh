#!/usr/bin/env bash
# Builds the libFuzzer targets with clang, ASan and UBSan, and runs each for
# a while on its seed corpus and the hostile corpus.  Exits non-zero if any
# target finds a crash, a leak, undefined behaviour or a timeout; the input
# that did it is kept under $build/fuzz-artifacts.
#
#   tests/fuzz/run.sh [SECONDS]        see below for how long each runs
#   TD_FUZZ_BUILD=dir tests/fuzz/run.sh 30
#
# Time: fuzz_proto and fuzz_jobspec run SECONDS each (default 60); the file
# and event-line readers (fuzz_idx, fuzz_npy, fuzz_csv, fuzz_raw,
# fuzz_safetensors, fuzz_checkpoint, fuzz_shmcache, fuzz_image) and the
# worker's messages and job description (fuzz_imsg, fuzz_jobdesc) SECONDS/3
# each, so CI's `run.sh 60` fuzzes for 2 * 60 + 10 * 20 s = 5.3 min in all,
# plus the build.  Longer runs by hand: run.sh 600.
#
# Needs clang and libFuzzer (Debian 12: clang, libclang-rt-14-dev); installs
# them when missing and run as root, as deploy/setup.sh does.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${TD_FUZZ_BUILD:-$root/build-fuzz}
seconds=${1:-60}

packages=(clang libclang-rt-14-dev meson ninja-build pkg-config
          libuv1-dev libnanomsg-dev libmsgpack-dev libyaml-dev libsqlite3-dev
          libopenblas-dev zlib1g-dev libsystemd-dev check libjpeg62-turbo-dev libpng-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    echo "fuzz: these Debian packages are missing and installing them needs root:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "fuzz: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Everything the targets link is built with the sanitizers too; the CUDA
# backend is not needed here.
if [ ! -f "$build/build.ninja" ]; then
  CC=clang CFLAGS="-fno-sanitize-recover=all" \
    meson setup "$build" "$root" -Dfuzz=true -Dcuda=disabled \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized
fi

corpus=$root/tests/fuzz/corpus
# name, share of SECONDS (1: all of it, 3: a third), seed directories, max
# input length, extra flags.  A hostile directory that does not exist yet
# is left out.
targets=(
  "fuzz_proto|1|$corpus/proto $corpus/hostile/proto|16384|"
  "fuzz_jobspec|1|$corpus/jobspec $corpus/hostile/jobspec|65536|-dict=$root/tests/fuzz/jobspec.dict"
  "fuzz_idx|3|$corpus/idx $corpus/hostile/idx|16384|"
  "fuzz_npy|3|$corpus/npy $corpus/hostile/npy|16384|"
  "fuzz_csv|3|$corpus/csv $corpus/hostile/csv|16384|"
  "fuzz_raw|3|$corpus/raw $corpus/hostile/raw|16384|"
  "fuzz_safetensors|3|$corpus/safetensors $corpus/hostile/safetensors|16384|"
  "fuzz_checkpoint|3|$corpus/checkpoint $corpus/hostile/checkpoint|16384|"
  "fuzz_imsg|3|$corpus/imsg $corpus/hostile/imsg|16384|"
  "fuzz_jobdesc|3|$corpus/jobdesc $corpus/hostile/jobdesc|65536|"
  "fuzz_shmcache|3|$corpus/shmcache $corpus/hostile/shmcache|16384|"
  "fuzz_image|3|$corpus/image $corpus/hostile/image|65536|"
)
names=()
for t in "${targets[@]}"; do names+=("tests/${t%%|*}"); done
ninja -C "$build" "${names[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
failed=()
for t in "${targets[@]}"; do
  IFS='|' read -r name share seed_dirs maxlen extra <<<"$t"
  secs=$((seconds / share > 0 ? seconds / share : 1))
  seeds=
  for d in $seed_dirs; do
    if [ -d "$d" ]; then seeds+=" $d"; fi
  done
  # New inputs go to a working corpus in the build directory, never into
  # the checked-in seeds.
  work="$build/fuzz-corpus/$name"
  artifacts="$build/fuzz-artifacts"
  mkdir -p "$work" "$artifacts"
  echo "fuzz: $name for ${secs}s (max_len $maxlen)"
  # shellcheck disable=SC2086
  if ! "$build/tests/$name" -max_total_time="$secs" -max_len="$maxlen" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/$name-" \
      $extra "$work" $seeds >"$build/$name.log" 2>&1; then
    failed+=("$name")
    echo "fuzz: $name FAILED; the end of $build/$name.log:" >&2
    tail -n 40 "$build/$name.log" >&2
  else
    grep -E "^stat::(number_of_executed_units|new_units_added)|Done [0-9]+ runs" "$build/$name.log" || true
  fi
done

if ((${#failed[@]})); then
  echo "fuzz: failures in ${failed[*]}; inputs in $build/fuzz-artifacts" >&2
  exit 1
fi
echo "fuzz: no crashes"
