#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# speedup.sh -- the pipeline's own speed-up on 2 cores (issue 13), with the
# ceiling that batching sets for it:
#   lane A: one process, one thread, pinned to one core, at n = 1, 2, 4, 8, 16
#           sequences (`bench --concurrency n`);
#   lane B: a 2-stage pipeline, one thread per process, each process pinned
#           to its own core, at n = 2, 4, 8, 16, with each stage's busy share.
# The lanes run at the same time on three different physical cores, so both
# see the same machine. With K = 2 micro-batches in flight each stage
# multiplies n/2 rows per weight where the one process multiplies n, so the
# pipeline can reach at most  ceiling(n) = 2 * A(n/2) / A(n)  times A(n)
# (A(n): lane A's aggregate tok/s); the script prints both.
# Usage: bench/speedup.sh BUILD_DIR MODEL_DIR [TOKENS] [PLAN2] [LEVELS]
set -euo pipefail
build=$(cd "${1:?usage: speedup.sh BUILD_DIR MODEL_DIR}" && pwd)
model=${2:?usage: speedup.sh BUILD_DIR MODEL_DIR}
tokens=${3:-48}
plan2=${4:-11,17}
levels=${5:-1,2,4,8,16}
lp="$build/layerpipe"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# three CPUs on different physical cores (lscpu's CORE column; core 0 left
# to the system), or LP_SPEEDUP_CPUS="A C0 C1" to choose them
if [ -n "${LP_SPEEDUP_CPUS:-}" ]; then
  read -r ca c0 c1 <<<"$LP_SPEEDUP_CPUS"
else
  mapfile -t cpus < <(lscpu -p=CPU,CORE | grep -v '^#' | sort -t, -k2,2n -u | cut -d, -f1 | head -4)
  [ "${#cpus[@]}" -ge 4 ] || { echo "speedup.sh: needs 4 physical cores (or LP_SPEEDUP_CPUS)" >&2; exit 1; }
  ca=${cpus[1]} c0=${cpus[2]} c1=${cpus[3]}
fi
echo "== machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //');" \
     "lane A on CPU $ca, lane B on CPUs $c0 (coordinator) and $c1 (worker)"

rate() { # the decode tok/s of a bench --json line
  sed -n 's/.*"decode_tok_s": *\([0-9.]*\).*/\1/p' "$1" | tail -1
}

lane_a() {
  for n in ${levels//,/ }; do
    taskset -c "$ca" "$lp" bench -m "$model" -p 16 -n "$tokens" --reps 1 --threads 1 \
      --concurrency "$n" --json 2>/dev/null | tail -1 >"$tmp/a$n.json"
  done
}

lane_b() {
  for n in ${levels//,/ }; do
    [ "$n" -ge 2 ] || continue
    local wport=$tmp/wport$n
    taskset -c "$c1" "$lp" worker -m "$model" --listen 127.0.0.1:0 --port-file "$wport" \
      --threads 1 2>/dev/null &
    local wk=$!
    for _ in $(seq 600); do [ -s "$wport" ] && break; sleep 0.2; done
    taskset -c "$c0" "$lp" bench -m "$model" -p 16 -n "$tokens" --reps 1 --threads 1 \
      --concurrency "$n" --workers "127.0.0.1:$(cat "$wport")" --plan "$plan2" --json --stats \
      >"$tmp/b$n.out" 2>&1 || true
    kill "$wk"; wait "$wk" 2>/dev/null || true
    grep '^{' "$tmp/b$n.out" | tail -1 >"$tmp/b$n.json"
    awk '/^[0-9]+ /{printf "%s%% ", $5}' "$tmp/b$n.out" >"$tmp/b$n.busy" || true
  done
}

# warm the page cache so neither lane pays the first read of the file
cat "$model"/*.safetensors >/dev/null
lane_a &
pa=$!
lane_b
wait "$pa"

printf '%-10s %-12s %-12s %-9s %-9s %s\n' sequences "one (tok/s)" "2 stages" speed-up ceiling busy
prev=""
for n in ${levels//,/ }; do
  a=$(rate "$tmp/a$n.json")
  b=""; s=""; c=""; busy=""
  if [ -s "$tmp/b$n.json" ]; then
    b=$(rate "$tmp/b$n.json")
    s=$(awk -v a="$a" -v b="$b" 'BEGIN { if (a > 0) printf "%.2fx", b / a }')
    busy=$(cat "$tmp/b$n.busy")
  fi
  half=$(rate "$tmp/a$((n / 2)).json" 2>/dev/null || true)
  [ -n "$half" ] && [ "$n" -ge 2 ] &&
    c=$(awk -v h="$half" -v a="$a" 'BEGIN { if (a > 0) printf "%.2fx", 2 * h / a }')
  printf '%-10s %-12s %-12s %-9s %-9s %s\n' "$n" "$a" "$b" "$s" "$c" "$busy"
done
