#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# gguf.sh -- layerpipe and llama.cpp side by side on the same GGUF file
# (issue 9): prefill and decode tok/s, alternating the two programs round by
# round so that both see the same (shared, noisy) machine; the best of each
# and their ratio at the end.
#   layerpipe: `layerpipe bench -m FILE -t T -p P -n N -r 1 --json`
#   llama.cpp: `llama-bench -m FILE -t T -p P -n N -r 1 -o json` (its pp and
#              tg tests: prefill of P tokens, decode of N tokens)
# Usage: bench/gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf [ROUNDS] [THREADS] [P] [N]
#   (defaults: 5 rounds, 2 threads, 512 prompt tokens, 64 generated)
set -euo pipefail
build=$(cd "${1:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}" && pwd)
llama=${2:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}
file=${3:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}
rounds=${4:-5}
threads=${5:-2}
np=${6:-512}
ng=${7:-64}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) CPUs;" \
     "$file ($(du -h "$file" | cut -f1)), $threads threads, prompt $np, gen $ng"

lp_field() { sed -n "s/.*\"$1\": *\([0-9.]*\).*/\1/p" "$2" | tail -1; }
# llama-bench -o json: one object per test; avg_ts of the pp / tg test
ll_field() {
  python3 -c 'import json,sys
for t in json.load(open(sys.argv[1])):
    if (t["n_prompt"] > 0) == (sys.argv[2] == "pp"): print(t["avg_ts"])' "$2" "$1"
}
best() { sort -g | tail -1; }

: >"$tmp/lp_pp"; : >"$tmp/lp_tg"; : >"$tmp/ll_pp"; : >"$tmp/ll_tg"
for r in $(seq 1 "$rounds"); do
  "$build/layerpipe" bench -m "$file" -t "$threads" -p "$np" -n "$ng" -r 1 --json \
    >"$tmp/lp.out" 2>&1 || { cat "$tmp/lp.out"; exit 1; }
  lp_field prefill_tok_s "$tmp/lp.out" >>"$tmp/lp_pp"
  lp_field decode_tok_s "$tmp/lp.out" >>"$tmp/lp_tg"
  "$llama" -m "$file" -t "$threads" -p "$np" -n "$ng" -r 1 -o json >"$tmp/ll.json" 2>"$tmp/ll.err" ||
    { cat "$tmp/ll.err"; exit 1; }
  ll_field pp "$tmp/ll.json" >>"$tmp/ll_pp"
  ll_field tg "$tmp/ll.json" >>"$tmp/ll_tg"
  printf 'round %d: layerpipe prefill %s decode %s | llama.cpp prefill %.2f decode %.2f (load %s)\n' \
    "$r" "$(tail -1 "$tmp/lp_pp")" "$(tail -1 "$tmp/lp_tg")" "$(tail -1 "$tmp/ll_pp")" \
    "$(tail -1 "$tmp/ll_tg")" "$(cut -d' ' -f1 /proc/loadavg)"
done
lpp=$(best <"$tmp/lp_pp"); ltg=$(best <"$tmp/lp_tg")
cpp=$(best <"$tmp/ll_pp"); ctg=$(best <"$tmp/ll_tg")
awk -v a="$lpp" -v b="$cpp" -v c="$ltg" -v d="$ctg" 'BEGIN {
  printf "best: prefill layerpipe %.2f / llama.cpp %.2f tok/s = %.2fx; decode %.2f / %.2f tok/s = %.2fx\n",
         a, b, a / b, c, d, c / d }'
