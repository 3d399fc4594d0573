#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# serve.sh -- the serving benchmarks of bench/RESULTS.md (issue 13), in one run:
#   1. `layerpipe serve`, one process (2 threads), driven by the openai Node SDK
#      (bench/serve_load.mjs) at 1, 2, 4, 8, 16, 32 concurrent streams:
#      aggregate tok/s, TTFT and inter-token latency p50/p99, stage busy %;
#   2. the pipeline's own speed-up on 2 cores: a 2-stage pipeline, one
#      thread per stage, each process pinned to its own core, against one
#      process with one thread pinned to one core, at 1 and 4+ streams
#      (`bench --concurrency`), with each stage's busy share (--stats);
#   3. one stream through a 3-stage pipeline (2 threads each) against one
#      process, side by side.
# Without node (the GPU machine) or with SKIP_SERVE=1, part 1 runs the same
# levels through `bench --concurrency` instead of the HTTP API.
# The model needs a tokenizer for the chat API: the real Qwen3 tokenizer is
# copied in (tools/fetch-qwen3-tokenizer.sh) when the folder has none.
# PARTS (environment) picks parts, e.g. PARTS=1 (default: 1 2 3); SERVE_CPUS
# and NODE_CPUS pin part 1's server and load generator (taskset lists).
# Usage: bench/serve.sh BUILD_DIR MODEL_DIR [LEVELS] [MAX_TOKENS] [PLAN2]
#   PLAN2: the 2-stage split, coordinator first (default 11,17 for 28 layers:
#   the coordinator's embedding and tied head weigh about six layers)
set -euo pipefail
build=$(cd "${1:?usage: serve.sh BUILD_DIR MODEL_DIR}" && pwd)
model=${2:?usage: serve.sh BUILD_DIR MODEL_DIR}
levels=${3:-1,2,4,8,16,32}
max_tokens=${4:-64}
plan2=${5:-11,17}
here=$(cd "$(dirname "$0")/.." && pwd)
lp="$build/layerpipe"
parts=" ${PARTS:-1 2 3} "
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
if [[ $parts == *" 1 "* ]]; then
if [ -n "${SKIP_SERVE:-}" ] || ! command -v node >/dev/null 2>&1; then
  echo "== 1. serve under the openai SDK: skipped (SKIP_SERVE set or no node here)"
  echo "== 1b. the same levels through bench --concurrency (2 threads)"
  for n in ${levels//,/ }; do
    taskset -c 0,1 "$lp" bench -m "$model" -p 16 -n "$max_tokens" --reps 1 --threads 2 \
      --concurrency "$n" --json | tail -1
  done
else
if [ ! -f "$model/tokenizer.json" ]; then
  tokdir=$("$here/tools/fetch-qwen3-tokenizer.sh" "$build/testdata/qwen3-tokenizer")
  cp "$tokdir/tokenizer.json" "$tokdir/tokenizer_config.json" "$model/"
fi
node_path=$("$here/tools/fetch-openai-node.sh" "$build/testdata/openai-node")

echo "== 1. serve, one process, 2 threads, openai SDK load ($levels streams, $max_tokens tokens each)"
portfile=$(mktemp)
${SERVE_CPUS:+taskset -c "$SERVE_CPUS"} "$lp" serve -m "$model" --listen 127.0.0.1:0 --port-file "$portfile" --threads 2 \
  --max-seqs 32 --ctx 512 --model-name layerpipe 2>"$build/serve-bench.log" &
srv=$!
trap 'kill $srv 2>/dev/null || true' EXIT
for _ in $(seq 600); do [ -s "$portfile" ] && break; sleep 0.2; done
port=$(cat "$portfile")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.2; done
LP_NODE_MODULES="$node_path" ${NODE_CPUS:+taskset -c "$NODE_CPUS"} node "$here/bench/serve_load.mjs" "http://127.0.0.1:$port" "$levels" "$max_tokens"
kill $srv; wait $srv 2>/dev/null || true
trap - EXIT
fi
fi

if [[ $parts == *" 2 "* ]]; then
echo "== 2. pipeline speed-up on 2 cores (1 thread per process, pinned)"
for n in 1 4 8; do
  echo "-- one process, core 0, --concurrency $n"
  taskset -c 0 "$lp" bench -m "$model" -p 16 -n 32 --reps 1 --threads 1 --concurrency "$n" --json | tail -1
  echo "-- 2 stages ($plan2), coordinator on core 0, worker on core 1, --concurrency $n"
  wport=$(mktemp)
  taskset -c 1 "$lp" worker -m "$model" --listen 127.0.0.1:0 --port-file "$wport" --threads 1 \
    2>/dev/null &
  wk=$!
  for _ in $(seq 600); do [ -s "$wport" ] && break; sleep 0.2; done
  taskset -c 0 "$lp" bench -m "$model" -p 16 -n 32 --reps 1 --threads 1 --concurrency "$n" \
    --workers "127.0.0.1:$(cat "$wport")" --plan "$plan2" --json --stats 2>&1 | grep -v '^layerpipe' | tail -6
  kill $wk; wait $wk 2>/dev/null || true
done

fi

if [[ $parts == *" 3 "* ]]; then
echo "== 3. one stream: one process against 3 stages (2 threads each), side by side"
for rep in 1 2; do
  "$lp" bench -m "$model" -p 16 -n 64 --reps 1 --threads 2 --json | tail -1
  "$lp" cluster -m "$model" --stages 3 --plan 10,9,9 --worker-threads 2 -- \
    bench -p 16 -n 64 --reps 1 --threads 2 --json 2>&1 | tail -1
done
fi
