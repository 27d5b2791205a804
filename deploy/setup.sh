#!/usr/bin/env bash
# Installs what traind needs on Debian 12 and builds it into build/.
# Idempotent: packages already present are not touched, and an existing
# build directory is reused.  Nothing is fetched except Debian packages.
#
#   deploy/setup.sh            packages + build
#   TD_BUILD=dir TD_MESON_ARGS="-Dwerror=true" deploy/setup.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${TD_BUILD:-$root/build}

packages=(
  build-essential pkg-config meson ninja-build
  libuv1-dev libnanomsg-dev libmsgpack-dev libyaml-dev libsqlite3-dev
  libopenblas-dev zlib1g-dev libsystemd-dev check
  dataset-fashion-mnist sqlite3 systemd munge libmunge-dev libmicrohttpd-dev
  protobuf-c-compiler libprotobuf-c-dev
  libjpeg62-turbo-dev libpng-dev
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  if [ "$(id -u)" != 0 ]; then
    echo "setup: these Debian packages are missing and installing them needs root:" >&2
    echo "  sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The CUDA toolkit, where it is installed, builds the CUDA backend
# (meson's cuda=auto); without it traind builds with the CPU backend only.
if [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

if [ ! -f "$build/build.ninja" ]; then
  # shellcheck disable=SC2086
  meson setup "$build" "$root" --prefix=/usr --sysconfdir=/etc ${TD_MESON_ARGS:-}
elif [ -n "${TD_MESON_ARGS:-}" ]; then
  # shellcheck disable=SC2086
  meson configure "$build" ${TD_MESON_ARGS}
fi
ninja -C "$build" -j"$(nproc)"
