#!/usr/bin/env bash
# The GPU checks of issue #7 in one run, for a machine with one CUDA 13 GPU
# (H100/H200), PyTorch in its python3 and nothing else of ours installed:
# build with tests/gpu/bundle.sh first and carry build-gpu (tests/gpu/README.md).
#
#   tests/gpu/run.sh OUTDIR
#
# Writes OUTDIR/log.txt (everything), OUTDIR/summary.json (one entry per step:
# status pass | fail | skipped | not implemented | partial, seconds, detail,
# figures), OUTDIR/gpu_ops.txt, OUTDIR/plan-exact.txt and the steps' other
# files packed in OUTDIR/details.tar.gz (the device tool returns 8 files at
# most).  A failing step never stops the others; the script exits 0 when it
# ran to the end, 2 on bad usage.  Where the build is missing and meson is
# at hand (the development machine), it runs tests/gpu/bundle.sh first:
# that builds for sm_90.
# Without a GPU every GPU step says "skipped: no GPU" and the packing step
# runs on cpu0, so the script can be dry-run anywhere.
#
# The steps run in the order of what their result is worth: env, gpu_ops (every
# op, and the plan check), e2e (with the plans on the same traind), plan, oom,
# memcheck, speed, packing.  Each has a fixed share of the budget (their sum
# fits it), so a slow step cannot starve the ones after it.
#
# Environment: TD_BUILD (default build-gpu under the repo), TD_GPU_PYTHON
# (default python3), TD_GPU_BUDGET_S (default 470: steps are cut short or
# skipped so the run ends within it), TD_GPU_SELFTEST=1 (see below).
set -uo pipefail

if [ $# -ne 1 ]; then
  echo "usage: tests/gpu/run.sh OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${TD_BUILD:-$root/build-gpu}
py=${TD_GPU_PYTHON:-python3}
work=$(mktemp -d /tmp/traind-gpu.XXXXXX)
records=$out/records.tsv
: >"$records"
exec > >(tee "$out/log.txt") 2>&1
t_start=$(date +%s)

budget_s=${TD_GPU_BUDGET_S:-470}   # the issue allows 8 minutes in all
# tmo N: a step's timeout, N seconds or what is left of the budget if less
tmo() {
  local left=$(( budget_s - ($(date +%s) - t_start) ))
  [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"
}
# late STEP: records STEP as skipped when under 20 s of the budget are left
late() {
  [ $(( budget_s - ($(date +%s) - t_start) )) -ge 20 ] && return 1
  record "$1" skipped 0 "skipped: out of time (budget ${budget_s}s)"
}
say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
# record STEP STATUS SECONDS DETAIL [FIGURES_JSON]
record() {
  local figs=${5:-}
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4//$'\t'/ }" "${figs:-"{}"}" >>"$records"
  say "RESULT $1: $2${4:+ ($4)}"
}
# jq-less JSON reading: jget FILE PYTHON_EXPR_ON_d
jget() { "$py" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null; }

# --- environment ---------------------------------------------------------
say "traind GPU checks: repo $root, build $build, out $out"
if [ ! -x "$build/tests/test_gpu_ops" ] && command -v meson >/dev/null 2>&1; then
  say "no build in $build: building it for sm_90 (tests/gpu/bundle.sh)"
  "$root/tests/gpu/bundle.sh" "$build" || say "bundle.sh failed"
fi
if [ -f "$build/build.ninja" ]; then
  say "CUDA code built for: $(grep -o 'arch=compute_[0-9]*,code=[^ ]*' "$build/build.ninja" | sort -u | tr '\n' ' ')"
fi
gpu=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  gpu=1
fi
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available" >"$out/nvidia-smi.txt"
cat "$out/nvidia-smi.txt"
dev=cpu0
budget_big=4GiB
if [ "$gpu" = 1 ]; then
  dev=cuda0
  budget_big=60GiB
fi
# TD_GPU_SELFTEST=1: take the GPU steps' paths on cpu0, to check this script
# on a machine without a GPU (their results then mean nothing).
if [ "${TD_GPU_SELFTEST:-0}" = 1 ]; then
  gpu=1
  say "SELFTEST: GPU steps run on cpu0; nvidia-smi figures will be missing"
fi

cuda_home=${CUDA_HOME:-/usr/local/cuda}
export PATH=$cuda_home/bin:$PATH
pip_libs=$("$py" - <<'PY' 2>/dev/null
import glob, os, sys
seen = []
for p in sys.path:
    for d in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib"))):
        if d not in seen:
            seen.append(d)
print(":".join(seen))
PY
)
# The bundled libraries the machine lacks (those it has, e.g. libz that cuDNN
# uses too, stay the machine's), for our binaries only: python, nvidia-smi
# and the sanitizer keep the machine's own.
have=$(ldconfig -p 2>/dev/null | awk '{print $1}')
mkdir -p "$work/lib"
for so in "$build"/lib/*.so*; do
  name=$(basename "$so" .xz)
  grep -qxF "$name" <<<"$have" && continue
  case $so in
    # OpenBLAS travels packed (bundle.sh); unpacked outside build-gpu, whose
    # size the carry limit counts
    *.xz) xz -dc "$so" >"$work/lib/$name" 2>/dev/null ||
            "$py" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' \
              "$so" "$work/lib/$name" || say "cannot unpack $so" ;;
    *) ln -s "$so" "$work/lib/" ;;
  esac
done
say "bundled libraries used: $(ls "$work/lib" | tr '\n' ' ')"
td_lib=$work/lib:$cuda_home/lib64${pip_libs:+:$pip_libs}
td_env=(env LD_LIBRARY_PATH="$td_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        TD_SOURCE_ROOT="$root" TD_BUILD_ROOT="$build")
tdenv() { "${td_env[@]}" "$@"; }
say "LD_LIBRARY_PATH for traind: $td_lib"
torch_ver=$("$py" -c 'import torch; print(torch.__version__, torch.cuda.is_available())' 2>/dev/null || echo "none")
say "python3 torch: $torch_ver; nvcc: $(nvcc --version 2>/dev/null | tail -1 || echo none)"

t0=$(date +%s)
bins=(daemon/traind daemon/traind-worker daemon/traind-loader client/traind-client
      tests/test_gpu_ops tests/bench_train tests/bench_mlp tests/gpu_hog)
missing=$(for b in "${bins[@]}"; do
            [ -x "$build/$b" ] || { echo "$b: not built"; continue; }
            tdenv ldd "$build/$b" | grep 'not found' | sed "s|^|$b: |"
          done | sort -u)
# cuDNN 9 is a front library that loads its parts with dlopen at the first
# call, where ldd of our binaries cannot see them: find them beside the
# libcudnn.so.9 we resolve, and resolve each one's own libraries (the
# runtime-compiled engines need NVRTC).
cudnn=$(tdenv ldd "$build/tests/test_gpu_ops" 2>/dev/null | awk '$1 ~ /^libcudnn\.so/ && $3 ~ /^\// {print $3; exit}')
cudnn_parts=
if [ "$gpu" = 1 ] && grep -q TD_WITH_CUDA "$build/build.ninja" 2>/dev/null; then
  missing=$({
    echo "$missing"
    [ -n "$cudnn" ] || echo "libcudnn.so.9: not found for tests/test_gpu_ops"
    for part in graph ops cnn heuristic engines_precompiled engines_runtime_compiled; do
      [ -n "$cudnn" ] || break
      so=$(ls "$(dirname "$cudnn")"/libcudnn_"$part".so.9* 2>/dev/null | head -1)
      [ -n "$so" ] || { echo "libcudnn_$part.so.9: not beside $cudnn"; continue; }
      tdenv ldd "$so" | grep 'not found' | sed "s|^|$(basename "$so"): |"
    done; } | sed '/^$/d' | sort -u)
  for part in "$(dirname "${cudnn:-/nonexistent/x}")"/libcudnn_*.so.9; do
    [ -e "$part" ] && cudnn_parts+="${cudnn_parts:+ }$(basename "$part" .so.9)"
  done
fi
say "cuDNN: ${cudnn:-not linked} (parts found: ${cudnn_parts:-none checked})"
if [ -n "$missing" ]; then
  echo "$missing"
  record env fail $(( $(date +%s) - t0 )) "missing: $(echo "$missing" | tr '\n' ';')"
else
  record env pass $(( $(date +%s) - t0 )) "gpu=$gpu device=$dev torch=$torch_ver cudnn=${cudnn:-none}" \
    "{\"gpu\": $gpu, \"device\": \"$dev\", \"cudnn_parts\": \"$cudnn_parts\"}"
fi

# Job files on the bundled data (the machine has no Debian dataset package).
data=$build/data/fashion-mnist
[ -f "$data/train-images-idx3-ubyte.gz" ] || data=/usr/share/datasets/fashion-mnist
# mkjob OUT [EPOCHS] [TRAIN_LIMIT] [LAYERS_SED]: the example, re-pointed at $data
mkjob() {
  sed -e "s|/usr/share/datasets/fashion-mnist|$data|" \
      -e "s|^\( *epochs:\).*|\1 ${2:-5}|" \
      -e "0,/limit: 0/s|limit: 0 |limit: ${3:-0} |" \
      -e "s|^output:.*|output: $(basename "$1" .yaml).safetensors|" \
      "$root/examples/fashion-mnist-mlp.yaml" >"$1"
}

# --- a private munged and traind -----------------------------------------
# traind as root serves several users and asks MUNGE who each one is: a
# private munged, as the integration tests start (tests/integration/
# harness.c).  The device machine has none installed: bundle.sh carries
# munged and mungekey in build-gpu/bin.
munged_pid=
munge_sock=
start_munged() {
  local d=$work/munge munged mungekey
  [ "$(id -u)" = 0 ] || return 0
  munged=$(command -v munged || command -v /usr/sbin/munged || echo "$build/bin/munged")
  mungekey=$(command -v mungekey || command -v /usr/sbin/mungekey || echo "$build/bin/mungekey")
  # munged wants every directory above its socket searchable by all
  chmod 755 "$work"
  mkdir -p "$d" && chmod 755 "$d"
  tdenv "$mungekey" -c -f -k "$d/key" -b 1024 || { say "cannot make a munge key with $mungekey"; return 1; }
  "${td_env[@]}" "$munged" --foreground --key-file="$d/key" --socket="$d/sock" --pid-file="$d/pid" \
    --log-file="$d/log" --seed-file="$d/seed" --num-threads=2 &
  munged_pid=$!
  for _ in $(seq 100); do
    [ -S "$d/sock" ] && { munge_sock=$d/sock; td_env+=(TRAIND_MUNGE_SOCKET="$munge_sock"); return 0; }
    kill -0 "$munged_pid" 2>/dev/null || break
    sleep 0.1
  done
  say "munged did not start:"; cat "$d/log" 2>/dev/null
  return 1
}
start_munged
td_pid=
td_run=
# start_traind NAME DEVICE BUDGET
start_traind() {
  td_run=$work/$1
  mkdir -p "$td_run"
  cat >"$td_run/traind.yaml" <<YAML
socket: ipc://$td_run/traind.sock
status_socket: ipc://$td_run/status.sock
state_dir: $td_run/state
log_level: info
${munge_sock:+munge_socket: $munge_sock}
devices:
  - {name: $2, budget: $3}
YAML
  # not through the function: $! must be traind itself (env execs it)
  "${td_env[@]}" "$build/daemon/traind" --config "$td_run/traind.yaml" 2>"$td_run/traind.log" &
  td_pid=$!
  for _ in $(seq 100); do
    [ -S "$td_run/traind.sock" ] && return 0
    kill -0 "$td_pid" 2>/dev/null || break
    sleep 0.1
  done
  say "traind did not start:"; cat "$td_run/traind.log"
  return 1
}
stop_traind() {
  [ -n "$td_pid" ] || return 0
  kill -TERM "$td_pid" 2>/dev/null
  for _ in $(seq 100); do kill -0 "$td_pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$td_pid" 2>/dev/null
  wait "$td_pid" 2>/dev/null
  cp "$td_run/traind.log" "$out/traind-$(basename "$td_run").log" 2>/dev/null
  td_pid=
}
cli() { tdenv "$build/client/traind-client" --socket "ipc://$td_run/traind.sock" "$@"; }
cleanup() {
  stop_traind
  [ -n "${hog_pid:-}" ] && kill "$hog_pid" 2>/dev/null
  [ -n "${mon_pid:-}" ] && kill "$mon_pid" 2>/dev/null
  [ -n "${munged_pid:-}" ] && kill "$munged_pid" 2>/dev/null && wait "$munged_pid" 2>/dev/null
  munged_pid=
}
trap cleanup EXIT

# GPU memory sampled in the background, every 0.2 s: "gpu MIB" (all of the
# device's use) and "pid PID MIB" per process.  A job's own peak is its
# worker's (traind and the loader hold no CUDA context), whatever else runs.
mon_pid=
mon_start() {
  [ "$gpu" = 1 ] && command -v nvidia-smi >/dev/null || return 0
  ( while :; do
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null | sed 's/^/gpu /'
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null |
        tr -d ',' | sed 's/^/pid /'
      sleep 0.2
    done ) >"$1" &
  mon_pid=$!
}
mon_stop() { [ -n "$mon_pid" ] && kill "$mon_pid" 2>/dev/null; wait "$mon_pid" 2>/dev/null; mon_pid=; }
# the device's most used MiB; the largest one process used
gpu_max() { awk '$1 == "gpu" && $2 ~ /^[0-9]+$/ && $2 > m {m = $2} END {if (m != "") print m}' "$1" 2>/dev/null; }
proc_max() { awk '$1 == "pid" && $3 ~ /^[0-9]+$/ && $3 > m {m = $3} END {if (m != "") print m}' "$1" 2>/dev/null; }

# Each step's share of the budget, seconds (470 in all with the default; a
# step that ends early leaves its rest to the ones after it).
share_ops=130 share_e2e=55 share_oom=65 share_memcheck=55 share_speed=45 share_pack=80

# --- 1a. op correctness --------------------------------------------------
say "== 1a. gpu_ops: device facts and the plan check (plan-exact.txt), then every op on"
say "       the device against the CPU backend (fp32, bf16, fp16)"
t0=$(date +%s)
rm -f "$out/plan-exact.txt"
TD_GPU_OUT=$out tdenv timeout -k 10 "$(tmo $share_ops)" "$build/tests/test_gpu_ops" >"$out/gpu_ops.txt" 2>&1
rc=$?
cat "$out/gpu_ops.txt"
# one "N%: Checks" line per suite: the device facts, then each precision pass
passes=$(paste -d' ' <(grep -E '^== ' "$out/gpu_ops.txt" | awk '{print $2}') \
                     <(grep -E '^[0-9]+%' "$out/gpu_ops.txt") | paste -sd';' -)
case $rc in
  0) record gpu_ops pass $(( $(date +%s) - t0 )) "$passes" ;;
  77) record gpu_ops skipped $(( $(date +%s) - t0 )) "skipped: no GPU (test_gpu_ops exit 77)" ;;
  124|137) record gpu_ops fail $(( $(date +%s) - t0 )) "out of its ${share_ops}s: $passes" ;;
  *) record gpu_ops fail $(( $(date +%s) - t0 )) "exit $rc: $passes" ;;
esac

# --- 3. end to end, and every plan, on one traind ------------------------
# (before 2: the plan step compares the job's measured peak with its plan)
say "== 3. end to end: traind on $dev, the client submits the example"
t0=$(date +%s)
job_peak_mib= gpu_peak_mib= e2e_planned=
# A small MLP for packing (784-64-10, 10000 samples, 2 epochs); no remedies,
# so a job runs at its whole batch or waits.
mkjob "$work/pack.yaml" 2 10000
sed -i -e '/units: 512/d' -e '/units: 256/s/256/64/' -e '0,/{type: relu}/{/{type: relu}/d}' \
       -e 's|^memory:|memory:\n  remedies: []|' -e "s|^device:.*|device: $dev|" "$work/pack.yaml"
cp "$work/pack.yaml" "$out/pack.yaml"
if start_traind main "$dev" "$budget_big"; then
  cli --json devices >"$out/devices.json" 2>&1
  if [ "$gpu" != 1 ]; then
    record e2e skipped 0 "skipped: no GPU"
  elif late e2e; then :
  else
    mkjob "$td_run/fashion-mnist-mlp.yaml" 5 0
    sed -i "s|^device:.*|device: $dev|" "$td_run/fashion-mnist-mlp.yaml"
    cli --json plan "$td_run/fashion-mnist-mlp.yaml" --device "$dev" >"$out/e2e-plan.json"
    e2e_planned=$(jget "$out/e2e-plan.json" 'd["plan"]["total"]')
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 2>/dev/null)
    mon_start "$out/e2e-mem.txt"
    tdenv timeout -k 10 "$(tmo $share_e2e)" "$build/client/traind-client" --socket "ipc://$td_run/traind.sock" \
      submit "$td_run/fashion-mnist-mlp.yaml" --wait >"$out/e2e.txt" 2>&1 || true
    mon_stop
    cat "$out/e2e.txt"
    cli --json show 1 >"$out/e2e-job.json"
    state=$(jget "$out/e2e-job.json" 'd["job"]["state"]')
    acc=$(jget "$out/e2e-job.json" 'd["job"]["accuracy"]')
    sps=$(jget "$out/e2e-job.json" 'd["job"]["samples_per_sec"]')
    secs=$(jget "$out/e2e-job.json" '(d["job"]["finished_ms"]-d["job"]["started_ms"])/1000 if d["job"].get("finished_ms") else "null"')
    job_peak_mib=$(proc_max "$out/e2e-mem.txt")
    top=$(gpu_max "$out/e2e-mem.txt")
    [[ $base =~ ^[0-9]+$ && $top =~ ^[0-9]+$ ]] && gpu_peak_mib=$(( top - base ))
    figs="{\"accuracy\": ${acc:-null}, \"samples_per_sec\": ${sps:-null}, \"train_seconds\": ${secs:-null}, \"job_peak_mib\": ${job_peak_mib:-null}, \"gpu_mem_peak_delta_mib\": ${gpu_peak_mib:-null}, \"planned_bytes\": ${e2e_planned:-null}}"
    if [ "$state" = succeeded ]; then
      record e2e pass $(( $(date +%s) - t0 )) "test accuracy $acc after 5 epochs, $secs s on $dev" "$figs"
    else
      record e2e fail $(( $(date +%s) - t0 )) "job state ${state:-unknown}: $(jget "$out/e2e-job.json" 'd["job"]["error"]')" "$figs"
    fi
  fi
  # the examples' plans and the packing job's, from the same traind
  for ex in "$root"/examples/*.yaml; do
    name=$(basename "$ex" .yaml)
    sed "s|/usr/share/datasets/fashion-mnist|$data|" "$ex" >"$td_run/$name.yaml"
    cli --json plan "$td_run/$name.yaml" --device "$dev" >"$out/plan-$name.json" 2>&1
  done
  cli --json plan "$work/pack.yaml" --device "$dev" >"$out/pack-plan.json" 2>&1
  stop_traind
else
  record e2e fail $(( $(date +%s) - t0 )) "traind did not start"
fi

# --- 2. plan accuracy ----------------------------------------------------
say "== 2. plan accuracy: planned bytes vs measured peak"
t0=$(date +%s)
# gpu_ops' check: the example MLP's and CNNs' peaks from cudaMemGetInfo
# against their plans plus the probe's overhead ("plan ... ok|FAIL");
# and the e2e job's own peak (nvidia-smi, its worker) against its plan.
exact=$(grep -E '^plan ' "$out/plan-exact.txt" 2>/dev/null)
exact_figs=$(grep -E '^(plan|probe) ' "$out/plan-exact.txt" 2>/dev/null | "$py" -c '
import json, re, sys
d = {}
for line in sys.stdin:
    m = re.match(r"probe (\S+): total (\d+) free (\d+) overhead (\d+)", line)
    if m:
        d["probe"] = {"device": m[1], "total": int(m[2]), "free": int(m[3]), "overhead": int(m[4])}
    m = re.search(r"^plan \S+ (\S+) micro_batch (\d+): planned (\d+) .*created in ([0-9.]+) s\) "
                  r"measured (\d+) diff (-?\d+) tolerance (\d+) (\w+)", line)
    if m:
        d["%s/mb%s" % (m[1], m[2])] = {"planned": int(m[3]), "create_s": float(m[4]),
                                       "measured": int(m[5]), "diff": int(m[6]),
                                       "tolerance": int(m[7]), "ok": m[8] == "ok"}
print(json.dumps(d))' 2>/dev/null)
figs=
for f in "$out"/plan-*.json; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .json); name=${name#plan-}
  planned=$(jget "$f" 'd["plan"]["total"]')
  say "$name: planned ${planned:-?} bytes on $dev"
  figs+="${figs:+, }\"$name\": {\"planned_bytes\": ${planned:-null}}"
done
job=
if [[ $job_peak_mib =~ ^[0-9]+$ && $e2e_planned =~ ^[0-9]+$ ]]; then
  # within 2% or 16 MiB, whichever is larger, as gpu_ops' check
  job=$(awk -v p="$e2e_planned" -v m="$job_peak_mib" 'BEGIN {
    meas = m * 1048576; tol = p / 50 > 16777216 ? p / 50 : 16777216; d = meas - p
    printf "%s %d %d %d", ((d < 0 ? -d : d) <= tol ? "ok" : "FAIL"), meas, d, tol }')
  say "e2e job: planned $e2e_planned bytes, its worker's peak ${job_peak_mib} MiB: $job"
fi
read -r job_ok job_meas job_diff job_tol <<<"${job:-}"
figs+="${figs:+, }\"exact\": ${exact_figs:-null}, \"e2e_job\": {\"planned\": ${e2e_planned:-null}, \"peak_bytes\": ${job_meas:-null}, \"diff\": ${job_diff:-null}, \"tolerance\": ${job_tol:-null}, \"ok\": $( [ "$job_ok" = ok ] && echo true || echo "${job_ok:+false}${job_ok:-null}")}"
if grep -q FAIL <<<"$exact $job_ok"; then
  record plan fail $(( $(date +%s) - t0 )) "measured peak off the plan: $(grep FAIL <<<"$exact" | head -2 | tr '\n' ';')${job:+ e2e job: $job}" "{$figs}"
elif [ -n "$exact" ] && [ "$job_ok" = ok ]; then
  record plan pass $(( $(date +%s) - t0 )) "$(wc -l <<<"$exact") models and micro-batches and the e2e job's own peak match plan + probe overhead (within 2% or 16 MiB)" "{$figs}"
elif [ -n "$exact" ] && [ "$gpu" = 1 ] && [ "$dev" = cpu0 ]; then
  record plan pass $(( $(date +%s) - t0 )) "$(wc -l <<<"$exact") models and micro-batches match the plan exactly (selftest: no per-process peak on the CPU)" "{$figs}"
else
  record plan partial $(( $(date +%s) - t0 )) "planned bytes recorded;$( [ -z "$exact" ] && echo " gpu_ops' plan check did not run;")$( [ -z "$job" ] && echo " no per-process peak of the e2e job")" "{$figs}"
fi

# --- 4. real OOM ---------------------------------------------------------
say "== 4. real OOM: gpu_hog holds the GPU's memory"
t0=$(date +%s)
hog_pid=
if [ "$gpu" != 1 ]; then
  record oom skipped 0 "skipped: no GPU"
elif late oom; then :
elif [ ! -x "$build/tests/gpu_hog" ]; then
  record oom fail 0 "no tests/gpu_hog in $build (built without the CUDA backend?)"
elif ! start_traind oom "$dev" "$budget_big"; then
  record oom fail $(( $(date +%s) - t0 )) "traind did not start"
else
  oom_end=$(( $(date +%s) + $(tmo $share_oom) ))
  # Leave the worker room for its context and handles (the probe's overhead
  # less the arenas' rounding it counts) and 2 MiB for its arenas: its
  # context comes up and its first allocations fail for real.
  over=$(cli --json devices 2>/dev/null | "$py" -c '
import json,sys; print(json.load(sys.stdin)["devices"][0]["overhead"])' 2>/dev/null)
  leave=256
  [[ $over =~ ^[0-9]+$ ]] && [ "$over" -gt $(( 12 << 20 )) ] && leave=$(( (over >> 20) - 12 + 2 ))
  tdenv "$build/tests/gpu_hog" "$leave" >"$out/oom-hog.txt" 2>&1 &
  hog_pid=$!
  for _ in $(seq 100); do grep -q holds "$out/oom-hog.txt" && break; kill -0 "$hog_pid" 2>/dev/null || break; sleep 0.2; done
  cat "$out/oom-hog.txt"
fi
if [ -n "$hog_pid" ] && ! grep -q holds "$out/oom-hog.txt"; then
  record oom fail $(( $(date +%s) - t0 )) "gpu_hog: $(head -c 200 "$out/oom-hog.txt" | tr '\n' ' ')"
  hog_pid=
  stop_traind
elif [ -n "$hog_pid" ]; then
  mkjob "$td_run/oom.yaml" 1 10000
  sed -i "s|^device:.*|device: $dev|" "$td_run/oom.yaml"
  cli submit "$td_run/oom.yaml"
  states=
  # up to half the share under the hog, the rest after it
  for _ in $(seq $(( (oom_end - $(date +%s)) / 2 ))); do
    s=$(cli --json show 1 2>/dev/null | "$py" -c 'import json,sys; print(json.load(sys.stdin)["job"]["state"])' 2>/dev/null)
    [ "${states##* }" != "$s" ] && states+=" $s"
    case $s in succeeded|failed|cancelled) break ;; esac
    sleep 1
  done
  kill "$hog_pid" 2>/dev/null; wait "$hog_pid" 2>/dev/null; hog_pid=
  # With the memory back the job should finish (or have failed cleanly).
  left=$(( oom_end - $(date +%s) ))
  tdenv timeout "$(( left > 5 ? left : 5 ))" "$build/client/traind-client" --socket "ipc://$td_run/traind.sock" wait 1 \
    >/dev/null 2>&1 || true
  cli --json show 1 >"$out/oom-job.json" 2>&1
  cli logs 1 >"$out/oom-job.log" 2>&1 || true
  final=$(jget "$out/oom-job.json" 'd["job"]["state"]')
  err=$(jget "$out/oom-job.json" 'd["job"]["error"]')
  alive=no; kill -0 "$td_pid" 2>/dev/null && alive=yes
  detail="hog left ${leave} MiB; states under the hog:${states:- none}; after: ${final:-?}${err:+ ($err)}; traind alive: $alive"
  if [ "$alive" = yes ] && [ -n "$final" ]; then
    record oom pass $(( $(date +%s) - t0 )) "$detail"
  else
    record oom fail $(( $(date +%s) - t0 )) "$detail"
  fi
  stop_traind
fi

# --- 1b. memory errors ---------------------------------------------------
say "== 1b. compute-sanitizer memcheck over a short training run"
t0=$(date +%s)
sanitizer=$(command -v compute-sanitizer ||
           ls "$cuda_home"/compute-sanitizer/compute-sanitizer /usr/local/cuda*/bin/compute-sanitizer \
              /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -1)
if [ "$gpu" != 1 ]; then
  record memcheck skipped 0 "skipped: no GPU"
elif late memcheck; then :
elif [ -z "$sanitizer" ]; then
  record memcheck fail 0 "compute-sanitizer not found in PATH, $cuda_home or /opt/nvidia"
else
  mkjob "$work/memcheck.yaml" 1 2000
  # bench_mlp trains in-process (one epoch, 2000 samples); the sanitizer follows
  # its re-exec (OPENBLAS_CORETYPE) too.
  tdenv timeout -k 10 "$(tmo $share_memcheck)" "$sanitizer" --tool memcheck --error-exitcode 9 \
    --target-processes all --print-limit 20 \
    "$build/tests/bench_mlp" --device "$dev" --epochs 1 "$work/memcheck.yaml" \
    >"$out/memcheck.txt" 2>&1
  rc=$?
  tail -40 "$out/memcheck.txt"
  summary=$(grep -E 'ERROR SUMMARY' "$out/memcheck.txt" | tail -1)
  if [ $rc = 0 ]; then
    record memcheck pass $(( $(date +%s) - t0 )) "${summary:-exit 0}"
  else
    record memcheck fail $(( $(date +%s) - t0 )) "exit $rc ${summary}"
  fi
fi

# --- 5. speed vs PyTorch on the same GPU ---------------------------------
say "== 5. speed: traind's model vs PyTorch, the example MLP, batch 128, Adam"
t0=$(date +%s)
if [ "$gpu" != 1 ]; then
  record speed skipped 0 "skipped: no GPU"
elif late speed; then :
else
  speed_end=$(( $(date +%s) + $(tmo $share_speed) ))
  mkjob "$work/speed.yaml" 1 0
  tdenv timeout -k 5 "$(( (speed_end - $(date +%s)) / 2 ))" "$build/tests/bench_train" --device "$dev" --no-torch \
    --steps 500 --warmup 50 --repeats 2 "$work/speed.yaml" >"$out/speed-traind.txt" 2>&1
  cat "$out/speed-traind.txt"
  ours=$(awk '/^  traind \(td_model/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9.]+$/) {print $i; exit}}' \
         "$out/speed-traind.txt")
  theirs=
  if [[ $torch_ver == *True ]]; then
    left=$(( speed_end - $(date +%s) ))
    timeout -k 5 "$(( left > 5 ? left : 5 ))" "$py" - >"$out/speed-torch.txt" 2>&1 <<'PY'
import time, torch
from torch import nn
torch.manual_seed(0)
dev = "cuda"
model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                      nn.Linear(256, 10)).to(dev)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
px = torch.randint(0, 256, (16, 128, 784), dtype=torch.uint8, device=dev)
lb = torch.randint(0, 10, (16, 128), device=dev)
def step(i):
    x = (px[i % 16].float() / 255.0 - 0.2860) / 0.3530
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), lb[i % 16])
    loss.backward()
    opt.step()
    return loss
for i in range(50):
    step(i)
torch.cuda.synchronize()
best = 0.0
for _ in range(2):
    t = time.perf_counter()
    for i in range(500):
        loss = step(i)
    loss.item()  # traind reads each step's loss; one sync per run here
    torch.cuda.synchronize()
    best = max(best, 500 * 128 / (time.perf_counter() - t))
print("samples_per_s=%.1f torch=%s" % (best, torch.__version__))
PY
    cat "$out/speed-torch.txt"
    theirs=$(sed -n 's/.*samples_per_s=\([0-9.]*\).*/\1/p' "$out/speed-torch.txt")
  else
    echo "no PyTorch with CUDA in $py ($torch_ver)" >"$out/speed-torch.txt"
  fi
  figs="{\"traind_samples_per_s\": ${ours:-null}, \"torch_samples_per_s\": ${theirs:-null}}"
  if [ -n "$ours" ] && [ -n "$theirs" ]; then
    record speed pass $(( $(date +%s) - t0 )) "traind $ours samples/s, PyTorch $theirs ($(awk -v a="$ours" -v b="$theirs" 'BEGIN {printf "%.2fx", a / b}'))" "$figs"
  elif [ -n "$ours" ]; then
    record speed partial $(( $(date +%s) - t0 )) "traind $ours samples/s; PyTorch: $(head -c 200 "$out/speed-torch.txt" | tr '\n' ' ')" "$figs"
  else
    record speed fail $(( $(date +%s) - t0 )) "traind ${ours:-no figure}, PyTorch ${theirs:-no figure}" "$figs"
  fi
fi

# --- 6. packing makespan -------------------------------------------------
say "== 6. packing: 8 small jobs at once vs one at a time, on $dev"
t0=$(date +%s)
# makespan NAME BUDGET MAXSECONDS: submit 8 copies, wait for all; prints "SECONDS MAXRUNNING OK"
makespan() {
  start_traind "$1" "$dev" "$2" || { echo "0 0 0"; return; }
  local ids=() s e maxrun=0 n ok=0
  s=$(date +%s.%N)
  for i in $(seq 8); do
    ids+=("$(cli --json submit "$work/pack$i.yaml" --name "pack$i" 2>/dev/null |
             "$py" -c 'import json,sys; print(json.load(sys.stdin)["id"])' 2>/dev/null)")
  done
  while :; do
    n=$(cli --json ls --state running 2>/dev/null |
        "$py" -c 'import json,sys; print(len(json.load(sys.stdin)["jobs"]))' 2>/dev/null || echo 0)
    [ "${n:-0}" -gt "$maxrun" ] && maxrun=$n
    left=$(cli --json ls 2>/dev/null | "$py" -c '
import json,sys; print(sum(j["state"] in ("queued","running") for j in json.load(sys.stdin)["jobs"]))' 2>/dev/null)
    [ "${left:-1}" = 0 ] && break
    [ $(( $(date +%s) - ${s%.*} )) -gt "$3" ] && break
    sleep 0.2
  done
  e=$(date +%s.%N)
  ok=$(cli --json ls 2>/dev/null | "$py" -c '
import json,sys; print(sum(j["state"] == "succeeded" for j in json.load(sys.stdin)["jobs"]))' 2>/dev/null)
  cli ls >&2
  stop_traind
  echo "$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.2f", e - s}') $maxrun ${ok:-0}"
}
# each copy writes its own model: two jobs writing one file at once collide
for i in $(seq 8); do
  sed "s|^output:.*|output: pack$i.safetensors|" "$work/pack.yaml" >"$work/pack$i.yaml"
done
one=$(jget "$out/pack-plan.json" 'd["plan"]["total"]')
if late packing; then :
elif [ -z "$one" ]; then
  record packing fail $(( $(date +%s) - t0 )) "no plan for the small job: $(head -c 300 "$out/pack-plan.json" 2>/dev/null)"
else
  pack_end=$(( $(date +%s) + $(tmo $share_pack) ))
  # room for one job, not two (and at least traind's 1 MiB)
  seq_budget=$(( one * 3 / 2 > 1048576 ? one * 3 / 2 : 1048576 ))
  [ $(( 2 * one )) -le "$seq_budget" ] && say "warning: the sequential budget admits two jobs"
  say "one job plans $one bytes; packed budget $budget_big, sequential budget ${seq_budget}B"
  # a third of the share packed, the rest one at a time (each less traind's start)
  read -r p_s p_max p_ok < <(makespan packed "$budget_big" $(( (pack_end - $(date +%s)) / 3 - 5 )))
  read -r q_s q_max q_ok < <(makespan sequential "${seq_budget}B" $(( pack_end - $(date +%s) - 5 )))
  figs="{\"device\": \"$dev\", \"job_planned_bytes\": $one, \"packed_seconds\": $p_s, \"packed_max_running\": $p_max, \"packed_succeeded\": $p_ok, \"sequential_seconds\": $q_s, \"sequential_max_running\": $q_max, \"sequential_succeeded\": $q_ok}"
  detail="$dev: packed ${p_s}s (up to $p_max running, $p_ok/8 ok), sequential ${q_s}s (up to $q_max running, $q_ok/8 ok)"
  detail+=", speed-up $(awk -v a="$q_s" -v b="$p_s" 'BEGIN {printf "%.2fx", (b > 0 ? a / b : 0)}')"
  if [ "$p_ok" = 8 ] && [ "$q_ok" = 8 ] && [ "$q_max" -le 1 ]; then
    record packing pass $(( $(date +%s) - t0 )) "$detail" "$figs"
  else
    record packing fail $(( $(date +%s) - t0 )) "$detail" "$figs"
  fi
fi

# --- summary -------------------------------------------------------------
"$py" - "$records" "$out/summary.json" "$gpu" "$dev" "$(( $(date +%s) - t_start ))" <<'PY'
import json, sys, socket, datetime
rec, dst, gpu, dev, secs = sys.argv[1:6]
steps = []
for line in open(rec):
    name, status, s, detail, figs = line.rstrip("\n").split("\t", 4)
    try:
        figs = json.loads(figs)
    except ValueError:
        figs = {"unparsed": figs}
    steps.append({"step": name, "status": status, "seconds": int(s or 0), "detail": detail,
                  "figures": figs})
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": socket.gethostname(), "gpu": gpu == "1", "device": dev,
           "seconds": int(secs), "steps": steps,
           "failed": [s["step"] for s in steps if s["status"] == "fail"]},
          open(dst, "w"), indent=2)
PY
say "summary: $out/summary.json ($(( $(date +%s) - t_start )) s)"
cat "$out/summary.json"
echo
cleanup
# The device tool returns 8 files: the rest travel in one archive.
( cd "$out" && mapfile -t rest < <(ls -A | grep -vxE 'summary.json|log.txt|gpu_ops.txt|plan-exact.txt|details.tar.gz') &&
  [ ${#rest[@]} -gt 0 ] && tar -czf details.tar.gz "${rest[@]}" && rm -rf "${rest[@]}" )
rm -rf "$work"
exit 0
