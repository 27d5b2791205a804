#!/usr/bin/env bash
# The dependency rules between the parts of the tree (issue: the compute
# interface included the job parser, and traind a backend header):
#
#   - nothing under kernels/ includes the job parser or the configuration
#     (common/jobspec.h, dataset.h, yamlread.h, config.h), directly or
#     through another header;
#   - traind's own sources (daemon/*.c, daemon/*.h; not the worker's or the
#     loader's) include nothing under kernels/, directly or indirectly.
#
# Includes are followed as the build resolves them: the including file's
# directory first, then the project's include directories (meson.build's
# inc: ., common, proto, kernels).  Headers that are not in the tree
# (td_config.h, system headers) are not followed.
#
#   check_deps.sh ROOT        check the tree at ROOT; exit 1 on a violation
#   check_deps.sh --self-test check that the check finds what it must
set -euo pipefail

incdirs=(. common proto kernels)
kernels_banned=(common/jobspec.h common/dataset.h common/yamlread.h common/config.h)

# The in-tree path (relative to $root) that `#include "name"` in file means,
# or nothing.
resolve() {
  local from=$1 name=$2 d
  for d in "$(dirname "$from")" "${incdirs[@]}"; do
    if [ -f "$root/$d/$name" ]; then
      realpath -m --relative-to="$root" "$root/$d/$name"
      return
    fi
  done
}

# Every in-tree file that file includes, directly or not, one per line as
# "path<TAB>chain", the chain being how it got there.
closure() {
  local start=$1 f name inc
  local -A seen=([$start]=1) via=([$start]=$start)
  local -a todo=("$start")
  while ((${#todo[@]})); do
    f=${todo[0]}
    todo=("${todo[@]:1}")
    while IFS= read -r name; do
      inc=$(resolve "$f" "$name")
      [ -n "$inc" ] && [ -z "${seen[$inc]:-}" ] || continue
      seen[$inc]=1
      via[$inc]="${via[$f]} -> $inc"
      printf '%s\t%s\n' "$inc" "${via[$inc]}"
      todo+=("$inc")
    done < <(sed -nE 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"([^"]+)".*/\1/p' \
               "$root/$f")
  done
}

check() {
  root=$1
  local f inc chain bad=0 b
  while IFS= read -r f; do
    while IFS=$'\t' read -r inc chain; do
      for b in "${kernels_banned[@]}"; do
        if [ "$inc" = "$b" ]; then
          echo "deps: $f includes the job parser or the configuration: $chain" >&2
          bad=1
        fi
      done
    done < <(closure "$f")
  done < <(cd "$root" && find kernels -type f \( -name '*.c' -o -name '*.h' -o -name '*.cu' \
                                                  -o -name '*.cuh' \) | sort)
  while IFS= read -r f; do
    while IFS=$'\t' read -r inc chain; do
      if [[ $inc == kernels/* ]]; then
        echo "deps: traind's $f includes the compute backends: $chain" >&2
        bad=1
      fi
    done < <(closure "$f")
  done < <(cd "$root" && find daemon -maxdepth 1 -type f \( -name '*.c' -o -name '*.h' \) | sort)
  return $bad
}

self_test() {
  t=$(mktemp -d)
  trap 'rm -rf "$t"' EXIT
  mkdir -p "$t/common" "$t/kernels/cpu" "$t/daemon/worker"
  echo '#include "dtype.h"' > "$t/common/jobspec.h"
  : > "$t/common/dtype.h"
  echo '#include "jobspec.h"' > "$t/common/plan.h"
  printf '#include <stdio.h>\n#include "dtype.h"\n' > "$t/kernels/backend.h"
  echo '#include "../backend.h"' > "$t/kernels/cpu/ops.h"
  echo '#include "ops.h"' > "$t/kernels/cpu/op.c"
  echo '#include "plan.h"' > "$t/daemon/traind.h"
  echo '#include "traind.h"' > "$t/daemon/probe.c"
  echo '#include "backend.h"' > "$t/daemon/worker/worker.c"
  check "$t" 2>/dev/null || { echo "self-test: a clean tree fails" >&2; return 1; }

  # through two headers, and from a .cu file
  echo '#include "plan.h"' >> "$t/kernels/cpu/ops.h"
  echo '  #  include "config.h" // the daemon configuration' > "$t/kernels/x.cu"
  : > "$t/common/config.h"
  # a header of traind's that includes a backend one
  echo '#include "dropout_mask.h"' >> "$t/daemon/traind.h"
  : > "$t/kernels/dropout_mask.h"
  local out
  if out=$(check "$t" 2>&1); then
    echo "self-test: violations pass" >&2
    return 1
  fi
  for want in \
    "kernels/cpu/op.c includes the job parser or the configuration: kernels/cpu/op.c -> kernels/cpu/ops.h -> common/plan.h -> common/jobspec.h" \
    "kernels/x.cu includes the job parser or the configuration: kernels/x.cu -> common/config.h" \
    "traind's daemon/probe.c includes the compute backends: daemon/probe.c -> daemon/traind.h -> kernels/dropout_mask.h" \
    "traind's daemon/traind.h includes the compute backends"; do
    if ! grep -qF "$want" <<<"$out"; then
      printf 'self-test: missing "%s" in:\n%s\n' "$want" "$out" >&2
      return 1
    fi
  done
  if grep -q worker <<<"$out"; then
    printf 'self-test: the worker may include a backend:\n%s\n' "$out" >&2
    return 1
  fi
  echo "self-test: ok"
}

case ${1:-} in
--self-test) self_test ;;
'') echo "usage: $0 ROOT | --self-test" >&2; exit 2 ;;
*) check "$(cd "$1" && pwd)" && echo "deps: ok" ;;
esac
