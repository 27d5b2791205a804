#!/usr/bin/env bash
# Builds traind for the GPU machine (sm_90, release, tests) in build-gpu/ and
# adds what that machine lacks, so that `run` can carry build-gpu alone:
#   build-gpu/lib/      the shared libraries our binaries need that are not
#                       there (Debian's libuv, nanomsg, msgpack-c, yaml,
#                       sqlite, systemd, ...); OpenBLAS as .xz (36 MiB raw,
#                       4 MiB packed; run.sh unpacks it)
#   build-gpu/data/     the Fashion-MNIST files (Debian's dataset package is
#                       not installed there)
#   build-gpu/bin/      munged and mungekey: traind as root asks MUNGE who
#                       each client is, and run.sh starts a private munged
# Not copied: glibc, libstdc++, libgcc_s (the machine has its own) and the
# CUDA libraries (CUDA 13 in /usr/local/cuda, cuDNN 9 in PyTorch's pip
# packages).  Prints the bundle's size: the device tool carries 64 MiB at most.
#
#   tests/gpu/bundle.sh [BUILD_DIR]     (default: build-gpu under the repo)
#   TD_BUNDLE_TRAIN_LIMIT=30000 tests/gpu/bundle.sh   (a smaller bundle: the
#                                       first 30000 training samples only)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build-gpu}
data_src=/usr/share/datasets/fashion-mnist
limit_mib=64
train_limit=${TD_BUNDLE_TRAIN_LIMIT:-0}   # 0: all 60000 training samples
export PATH=/usr/local/cuda/bin:$PATH

if [ ! -f "$build/build.ninja" ]; then
  meson setup -Dcuda=enabled -Dgpu_sm=90 -Dbuildtype=release -Dtests=true "$build" "$root"
fi
# What run.sh runs, and nothing else: every test program links the kernels'
# CUDA code (about 0.6 MiB each), so the rest would not fit the carry.
targets=(daemon/traind daemon/traind-worker daemon/traind-loader client/traind-client
         tests/test_gpu_ops tests/bench_train tests/bench_mlp tests/gpu_hog)
ninja -C "$build" -j"$(nproc)" "${targets[@]}"
# programs a fuller build left there earlier stay behind too
for f in "$build"/tests/* "$build"/client/test_client*; do
  name=$(basename "$f" .p)
  [[ " ${targets[*]} " == *" tests/$name "* ]] || rm -rf "$f"
done

mkdir -p "$build/bin"
for tool in munged mungekey; do
  path=$(command -v "$tool" || command -v "/usr/sbin/$tool") ||
    { echo "bundle: $tool missing (apt-get install munge)" >&2; exit 1; }
  cp "$path" "$build/bin/"
done

# What the machine has of its own, or gets elsewhere: never bundled.
skip='^(linux-vdso|ld-linux|libc|libm|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libcudnn|libnvrtc|libnvJitLink)\.'
lib=$build/lib
rm -rf "$lib"
mkdir -p "$lib"
mapfile -t exes < <(find "$build" -path "$lib" -prune -o -path "$build/meson-private" -prune \
                      -o -type f -perm -u+x -print | while read -r f; do
                      head -c4 "$f" | grep -q ELF && echo "$f"; done)
ldd "${exes[@]}" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
while read -r so; do
  name=$(basename "$so")
  [[ $name =~ $skip ]] && continue
  if [[ $name == libopenblas* ]]; then
    xz -T0 -6 -c "$so" >"$lib/$name.xz"
  else
    cp -L "$so" "$lib/$name"
  fi
done

mkdir -p "$build/data/fashion-mnist"
if [ -d "$data_src" ]; then
  cp "$data_src"/*.gz "$build/data/fashion-mnist/"
  if [ "$train_limit" -gt 0 ]; then
    # the first N training samples only: halves the bundle at 30000
    python3 - "$data_src" "$build/data/fashion-mnist" "$train_limit" <<'PY'
import gzip, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for name, hdr, per in (("train-images-idx3-ubyte.gz", 16, 784), ("train-labels-idx1-ubyte.gz", 8, 1)):
    raw = gzip.open(src + "/" + name).read()
    head = bytearray(raw[:hdr])
    head[4:8] = struct.pack(">I", n)
    with gzip.open(dst + "/" + name, "wb", 9) as f:
        f.write(bytes(head) + raw[hdr:hdr + n * per])
PY
  fi
else
  echo "bundle: $data_src missing (apt-get install dataset-fashion-mnist)" >&2
fi

echo "bundle: libraries in $lib:"
ls -la "$lib" | awk 'NR > 1 {printf "  %10s %s\n", $5, $9}'
total=$(du -sm "$build" | cut -f1)
# the working tree travels with it (tracked and untracked, not ignored, files)
tree=$(( ($(cd "$root" && git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null |
            tail -1 | cut -f1) + 1048575) / 1048576 ))
echo "bundle: $build is $total MiB in all (lib $(du -sh "$lib" | cut -f1)," \
     "data $(du -sh "$build/data" | cut -f1)), the working tree $tree MiB;" \
     "the carry limit is $limit_mib MiB for both"
total=$(( total + tree ))
if [ "$total" -ge $((limit_mib - 4)) ]; then
  echo "bundle: too close to the carry limit" >&2
  exit 1
fi
