#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# pipeline.sh -- the pipeline benchmarks of bench/RESULTS.md, in one run:
#   1. this machine's read bandwidth (bench/membw.c)
#   2. gRPC hop latency of a decode activation (2048 floats) and prefill
#      chunk throughput across a hop (bench/bench_rpc.c)
#   3. single-stream speed of one process against a 3-stage local pipeline
#      (10-9-9) on the same model, side by side
# Usage: bench/pipeline.sh BUILD_DIR MODEL_DIR [N_GEN]
set -euo pipefail
build=${1:?usage: pipeline.sh BUILD_DIR MODEL_DIR [N_GEN]}
model=${2:?usage: pipeline.sh BUILD_DIR MODEL_DIR [N_GEN]}
n_gen=${3:-32}
echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== read bandwidth"
"$build/membw" | tail -2
echo "== gRPC hop (loopback)"
"$build/bench_rpc" 2000
for rep in 1 2; do
  echo "== one process (rep $rep)"
  "$build/layerpipe" bench -m "$model" -p 128 -n "$n_gen" --reps 2 --json | tail -1
  echo "== 3-stage pipeline, layers proportional (rep $rep)"
  "$build/layerpipe" cluster -m "$model" --stages 3 -- bench -p 128 -n "$n_gen" --reps 2 --json --stats 2>&1 \
    | grep -v '^layerpipe worker' | tail -9
done
