#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# gguf.sh -- layerpipe and llama.cpp side by side on the same GGUF file
# (issue 9): prefill and decode tok/s, the programs alternating round by
# round so that all see the same (shared, noisy) machine; the best of each
# and the ratios at the end. Per round:
#   layerpipe        `layerpipe bench -m FILE -t T -p P -n 1 -r 1 --json` for
#                    prefill, then `-p 1 -n N` for decode (as llama-bench's
#                    tg test: from an empty context, not after the prompt;
#                    float activations: the accurate default)
#   layerpipe --fast the same with int8 activations (llama.cpp's precision)
#   llama.cpp        `llama-bench -m FILE -t T -p P -n N -r 1 -o json` (pp
#                    and tg tests), with OpenMP's default (spinning) wait
#                    policy and again with OMP_WAIT_POLICY=PASSIVE, which
#                    does far better when other processes share the cores;
#                    llama.cpp's figure is the better of the two.
# Usage: bench/gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf [ROUNDS] [THREADS] [P] [N]
#   (defaults: 3 rounds, 2 threads, 512 prompt tokens, 64 generated)
set -euo pipefail
build=$(cd "${1:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}" && pwd)
llama=${2:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}
file=${3:?usage: gguf.sh BUILD_DIR LLAMA_BENCH FILE.gguf}
rounds=${4:-3}
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

# two runs, as llama-bench's pp and tg tests: the prompt alone, then N
# tokens decoded from a near-empty context (one prompt token), so that both
# programs' decode reads the same small KV cache
run_lp() { # name [--fast]
  "$build/layerpipe" bench -m "$file" -t "$threads" -p "$np" -n 1 -r 1 --json "${@:2}" \
    >"$tmp/lp.out" 2>&1 || { cat "$tmp/lp.out"; exit 1; }
  lp_field prefill_tok_s "$tmp/lp.out" >>"$tmp/$1.pp"
  "$build/layerpipe" bench -m "$file" -t "$threads" -p 1 -n "$ng" -r 1 --json "${@:2}" \
    >"$tmp/lp.out" 2>&1 || { cat "$tmp/lp.out"; exit 1; }
  lp_field decode_tok_s "$tmp/lp.out" >>"$tmp/$1.tg"
}
run_ll() { # name [env...]
  env "${@:2}" "$llama" -m "$file" -t "$threads" -p "$np" -n "$ng" -r 1 -o json \
    >"$tmp/ll.json" 2>"$tmp/ll.err" || { cat "$tmp/ll.err"; exit 1; }
  ll_field pp "$tmp/ll.json" >>"$tmp/$1.pp"
  ll_field tg "$tmp/ll.json" >>"$tmp/$1.tg"
}
last() { printf '%.2f/%.2f' "$(tail -1 "$tmp/$1.pp")" "$(tail -1 "$tmp/$1.tg")"; }

for r in $(seq 1 "$rounds"); do
  run_lp lp
  run_ll ll
  run_lp lpfast --fast
  run_ll llpassive OMP_WAIT_POLICY=PASSIVE
  echo "round $r (prefill/decode tok/s): layerpipe $(last lp), --fast $(last lpfast)" \
       "| llama.cpp $(last ll), passive $(last llpassive) (load $(cut -d' ' -f1 /proc/loadavg))"
done
cat "$tmp/ll.pp" "$tmp/llpassive.pp" >"$tmp/llbest.pp"
cat "$tmp/ll.tg" "$tmp/llpassive.tg" >"$tmp/llbest.tg"
for k in pp tg; do
  for n in lp lpfast llbest; do eval "${n}_$k=$(best <"$tmp/$n.$k")"; done
done
awk -v a="$lp_pp" -v f="$lpfast_pp" -v l="$llbest_pp" -v b="$lp_tg" -v g="$lpfast_tg" \
    -v m="$llbest_tg" 'BEGIN {
  printf "best prefill: layerpipe %.2f, --fast %.2f, llama.cpp %.2f tok/s -> %.2fx, %.2fx\n",
         a, f, l, a / l, f / l
  printf "best decode:  layerpipe %.2f, --fast %.2f, llama.cpp %.2f tok/s -> %.2fx, %.2fx\n",
         b, g, m, b / m, g / m }'
