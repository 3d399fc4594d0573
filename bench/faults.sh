#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# faults.sh -- the longer fault loops of issue 8, every output compared with
# an undisturbed run:
#   1. ROUNDS kills per recovery way through the scheduler
#      (tests/cluster/test_recover.c with LP_FAULT_ROUNDS: restarted, 4 x
#      ROUNDS single requests, greedy and seeded, and ROUNDS rounds of 8 at
#      once; standby and replan ROUNDS each), then the pause a client sees
#      per way (kill to the next token, p50 and max);
#   2. ROUNDS x `layerpipe cluster --stages 3 -- run -n 200` with a random
#      worker killed at a random moment (the launcher restarts it);
#   3. ROUNDS x 8 concurrent streams through `layerpipe cluster -- serve`
#      (curl, streamed), a random worker killed at a random moment.
# The bundled model; prompts of a few tokens.
# Usage: bench/faults.sh BUILD_DIR [ROUNDS] [PARTS (default 123)]
set -euo pipefail
build=$(cd "${1:?usage: faults.sh BUILD_DIR [ROUNDS] [PARTS]}" && pwd)
rounds=${2:-20}
parts=${3:-123}
here=$(cd "$(dirname "$0")/.." && pwd)
lp="$build/layerpipe"
model="$here/models/layerpipe-tiny-8bit"
export LP_BIN="$lp" LP_TOOLS_DIR="$build" LP_WORK_DIR="$build/testdata" LP_SOURCE_DIR="$here"
kill_one() { # a random worker of this user's pipeline, after a random delay (0.2 .. 1.2 s)
  sleep "0.$((RANDOM % 9 + 2))$((RANDOM % 10))"
  local pids; pids=($(pgrep -f "$lp worker" || true))
  [ ${#pids[@]} -gt 0 ] && kill -9 "${pids[$((RANDOM % ${#pids[@]}))]}"
}
if [[ $parts == *1* ]]; then
  echo "== 1. through the scheduler, $rounds kills per way"
  LP_FAULT_ROUNDS=$rounds "$build/cluster_test_recover" 2>/dev/null | tail -9
fi
if [[ $parts == *2* ]]; then
  echo "== 2. layerpipe cluster -- run -n 200, $rounds kills"
  args=(-p "And it came to pass" -n 200 --temp 0 --ignore-eos --print-ids --threads 1)
  ref=$("$lp" cluster -m "$model" --stages 3 --worker-threads 1 -- run "${args[@]}" 2>/dev/null)
  same=0 mid=0 early=0 errlog=$(mktemp)
  while [ "$mid" -lt "$rounds" ] && [ $((mid + early)) -lt $((3 * rounds)) ]; do
    kill_one & k=$!
    got=$("$lp" cluster -m "$model" --stages 3 --worker-threads 1 -- run "${args[@]}" 2>"$errlog" || true)
    wait "$k"
    if ! grep -q "a stage was lost" "$errlog"; then # killed before the run began, or after it ended
      early=$((early + 1))
      continue
    fi
    mid=$((mid + 1))
    if [ "$got" = "$ref" ]; then same=$((same + 1)); else
      echo "differs; stderr:"; grep -v "^layerpipe worker" "$errlog" | tail -5; fi
  done
  echo "run -n 200: $same/$mid kills mid-generation identical to the undisturbed run ($early kills fell outside a generation)"
fi
if [[ $parts == *3* ]]; then
  echo "== 3. layerpipe cluster -- serve, 8 streams, $rounds kills"
  port_file=$(mktemp)
  "$lp" cluster -m "$model" --stages 3 --worker-threads 1 -- serve --listen 127.0.0.1:0 \
    --port-file "$port_file" --threads 1 --max-seqs 8 2>"$build/faults-serve.log" &
  srv=$!
  trap 'kill $srv 2>/dev/null || true' EXIT
  for _ in $(seq 300); do [ -s "$port_file" ] && break; sleep 0.1; done
  url="http://127.0.0.1:$(cat "$port_file")/v1/completions"
  body() { printf '{"prompt": "%s", "max_tokens": 120, "temperature": 0, "ignore_eos": true, "stream": true}' "$1"; }
  prompts=("And it came to pass" "In the beginning" "Blessed are the meek" "A fool and his money"
           "The LORD is my shepherd" "Then said Jesus" "Early to bed" "Thou shalt not")
  text() { curl -sN "$url" -H 'Content-Type: application/json' -d "$(body "$1")" |
           sed -n 's/^data: //p' | grep -v '^\[DONE\]' |
           python3 -c 'import sys, json; print("".join(c["choices"][0].get("text", "") for c in map(json.loads, sys.stdin) if c.get("choices")))'; }
  declare -a refs
  for i in "${!prompts[@]}"; do refs[$i]=$(text "${prompts[$i]}"); done
  same=0 total=0
  for r in $(seq "$rounds"); do
    dir=$(mktemp -d)
    jobs_=()
    for i in "${!prompts[@]}"; do text "${prompts[$i]}" >"$dir/$i" & jobs_+=($!); done
    kill_one & jobs_+=($!)
    wait "${jobs_[@]}" # (not the server)
    for i in "${!prompts[@]}"; do
      total=$((total + 1))
      [ "$(cat "$dir/$i")" = "${refs[$i]}" ] && same=$((same + 1))
    done
    rm -rf "$dir"
  done
  echo "serve, 8 streams: $same/$total streams identical to the undisturbed run"
  grep -c "recovered" "$build/faults-serve.log" | sed 's/^/recoveries in the log: /'
  kill $srv; wait $srv 2>/dev/null || true
fi
