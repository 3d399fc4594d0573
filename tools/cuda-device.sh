#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# cuda-device.sh -- the CUDA backend's tests and benchmarks on the GPU machine,
# which has no package registry (and none of gRPC, jansson, ...): build here,
# pack the binaries with the shared libraries they need, run there.
#   here:  tools/cuda-device.sh pack     builds $LP_CUDA_BUILD (default
#                                        build-cuda; nvcc 13, sm_90 machine code
#                                        only) and packs the binaries and their
#                                        libraries into build-cuda-carry/lp.tgz
#                                        (compressed: the tree that travels is
#                                        limited to 64 MiB)
#   there: tools/cuda-device.sh run      (the device tool's command, with
#                                        carry: ["build-cuda-carry"]) unpacks
#          it and runs the CUDA kernel tests, the HF golden cases on CUDA,
#          compute-sanitizer, and the benchmarks of bench/RESULTS.md; logs go
#          to $OUT (or out/).
# `run` steps: tests | ring | sanitize | bench | profile | serve (default:
# tests ring bench sanitize), e.g. `run tests bench`. `serve` alone also runs
# here on the CPU for a dry run: LP_SERVE_DEVICE=cpu LP_SERVE_MODEL=DIR
# LP_BIN_DIR=build tools/cuda-device.sh run serve.
# Only layerpipe's own programs see the carried libraries (LD_LIBRARY_PATH):
# python3 and the CUDA tools keep the machine's.
set -u -o pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

pack() {
    local nvcc=${NVCC:-/usr/local/cuda-13.0/bin/nvcc} bd=${LP_CUDA_BUILD:-build-cuda}
    cmake -S . -B "$bd" -DCMAKE_BUILD_TYPE=Release -DLAYERPIPE_CUDA=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90-real >/dev/null || return 1
    local bins="layerpipe lp_genmodel backend_test_cuda engine_test_golden bench_rpc"
    # shellcheck disable=SC2086
    cmake --build "$bd" -j"$(nproc)" --target $bins >/dev/null || return 1
    local tmp=build-cuda-carry/.pack
    rm -rf build-cuda-carry && mkdir -p "$tmp/bin" "$tmp/lib"
    for b in $bins; do cp "$bd/$b" "$tmp/bin/"; done
    # every shared library the binaries load, except the C and C++ runtimes
    # (the GPU machine's are newer than this machine's)
    for b in $bins; do ldd "$bd/$b"; done | awk '$3 ~ /^\// {print $3}' | sort -u |
        grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux-x86-64|libgcc_s|libstdc\+\+)\.so' |
        while read -r lib; do cp -L "$lib" "$tmp/lib/"; done
    strip "$tmp"/bin/*
    # the Qwen3 tokenizer, for serve on the generated models (no npm there)
    local tok
    tok=$(tools/fetch-qwen3-tokenizer.sh "$bd/testdata/qwen3-tokenizer") || return 1
    mkdir -p "$tmp/tok" && cp "$tok/tokenizer.json" "$tok/tokenizer_config.json" "$tmp/tok/"
    tar -C "$tmp" -czf build-cuda-carry/lp.tgz bin lib tok && rm -rf "$tmp"
    du -sh build-cuda-carry
}

# The packed binaries into build-cuda-carry/{bin,lib} (once).
unpack() {
    [ -f build-cuda-carry/lp.tgz ] && [ ! -x build-cuda-carry/bin/layerpipe ] &&
        tar -C build-cuda-carry -xzf build-cuda-carry/lp.tgz
    return 0
}

# Runs a command with the carried libraries first on the library path.
lp() { LD_LIBRARY_PATH=$here/build-cuda-carry/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$@"; }

run_tests() {
    local c=build-cuda-carry/bin work=/tmp/lp-testdata
    mkdir -p "$work"
    export LP_BIN=$here/$c/layerpipe LP_TOOLS_DIR=$here/$c LP_GOLDEN_DIR=$here/tests/golden
    export LP_WORK_DIR=$work LP_SOURCE_DIR=$here
    echo "== backend/test_cuda"
    lp "$c/backend_test_cuda" 2>&1 | tee "$OUT/test_cuda.log" | grep -v "^ok" | tail -30
    local rc=${PIPESTATUS[0]}
    echo "test_cuda rc=$rc"
    if [ "$rc" != 0 ]; then # which feature: each off in turn
        for v in LP_CUDA_NO_PDL=1 LP_CUDA_NO_FOLD=1 LP_CUDA_NO_TC=1 LP_CUDA_NO_GRAPHS=1; do
            env "$v" LD_LIBRARY_PATH="$here/build-cuda-carry/lib" "$c/backend_test_cuda" \
                >"$OUT/test_cuda_$v.log" 2>&1
            echo "test_cuda with $v: rc=$? $(tail -1 "$OUT/test_cuda_$v.log")"
        done
    fi
    echo "== engine/test_golden (CPU and --device cuda)"
    lp "$c/engine_test_golden" >"$OUT/test_golden.log" 2>&1
    echo "test_golden rc=$?"
    grep -E "cuda|FAIL|fail" "$OUT/test_golden.log" | head -60
    tail -3 "$OUT/test_golden.log"
}

run_sanitize() {
    local c=build-cuda-carry/bin
    local cs
    cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
    echo "== compute-sanitizer memcheck (kernel tests only): ${cs:-not found}"
    [ -n "$cs" ] || return 0
    LP_CUDA_TEST_KERNELS_ONLY=1 lp timeout 120 "$cs" --tool memcheck \
        --error-exitcode 9 "$c/backend_test_cuda" >"$OUT/memcheck.log" 2>&1
    echo "memcheck rc=$?"
    tail -5 "$OUT/memcheck.log"
}

# The SM clock and load every 200 ms while the benchmarks run (clocks as found:
# this script never sets them); summarized at the end of the step.
clocks_start() {
    nvidia-smi --query-gpu=clocks.sm,clocks.mem,utilization.gpu,power.draw \
        --format=csv,noheader,nounits -lms 200 >"$OUT/clocks.csv" 2>/dev/null &
    clocks_pid=$!
}
clocks_stop() {
    kill "$clocks_pid" 2>/dev/null
    wait "$clocks_pid" 2>/dev/null
    python3 - "$OUT/clocks.csv" <<'EOF' 2>&1 | tee -a "$OUT/bench.log"
import sys, statistics
rows = []
for line in open(sys.argv[1]):
    f = [x.strip() for x in line.split(",")]
    try: rows.append((float(f[0]), float(f[1]), float(f[2]), float(f[3])))
    except (ValueError, IndexError): pass
busy = [r for r in rows if r[2] >= 50]
for name, rs in (("all samples", rows), ("GPU busy >= 50%", busy)):
    if rs:
        sm = sorted(r[0] for r in rs)
        print(f"SM clock, {name} ({len(rs)}): min {sm[0]:.0f} median {statistics.median(sm):.0f} "
              f"max {sm[-1]:.0f} MHz; memory {rs[0][1]:.0f} MHz; power median "
              f"{statistics.median(r[3] for r in rs):.0f} W")
EOF
}

run_bench() {
    local c=build-cuda-carry/bin m=/tmp/lp-models log=$OUT/bench.log
    mkdir -p "$m"
    clocks_start
    local shape="--layers 28 --hidden 2048 --heads 16 --kv-heads 8 --head-dim 128
                 --intermediate 6144 --vocab 151936 --tied 1 --threads 16"
    echo "== copy bandwidth (PyTorch, 4 GiB device-to-device, read + write bytes)" | tee -a "$log"
    python3 - <<'EOF' 2>&1 | tee -a "$log"
import torch
a = torch.empty(1 << 30, dtype=torch.float32, device="cuda"); b = torch.empty_like(a)
a.uniform_()
for _ in range(3): b.copy_(a)
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
ts = []
for _ in range(10):
    s.record(); b.copy_(a); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
ts.sort(); ms = ts[len(ts) // 2]
print(f"copy: {torch.cuda.get_device_name()}: {2 * a.numel() * 4 / ms / 1e6:.0f} GB/s (median of 10, {ms:.3f} ms)")
EOF
    for fmt in mlx8 hf-bf16; do
        local dir=$m/q17-$fmt
        echo "== Qwen3-1.7B shape, $fmt" | tee -a "$log"
        [ -f "$dir/config.json" ] || lp "$c/lp_genmodel" --out "$dir" --seed 7 --format "$fmt" $shape \
            >/dev/null 2>&1 || { echo "lp_genmodel $fmt failed" | tee -a "$log"; continue; }
        du -sh "$dir" | tee -a "$log"
        lp "$c/layerpipe" bench -m "$dir" --device cuda -p 128 -n 256 -r 2 --json 2>&1 | tail -4 | tee -a "$log"
        echo "-- prefill 512" | tee -a "$log"
        lp "$c/layerpipe" bench -m "$dir" --device cuda -p 512 -n 4 -b 512 -r 2 --json 2>&1 | tail -4 | tee -a "$log"
        for n in 8 32 64; do
            echo "-- concurrency $n" | tee -a "$log"
            lp "$c/layerpipe" bench -m "$dir" --device cuda -p 32 -n 64 -C "$n" -r 1 --json 2>&1 |
                tail -4 | tee -a "$log"
        done
    done
    clocks_stop
}

# A ring of a CPU coordinator (14 layers) and a GPU worker (14 layers) against
# one CPU process, on a 28-layer MLX 8-bit model: logits within 1e-4 per row.
run_ring() {
    local c=build-cuda-carry/bin m=/tmp/lp-ring-model port=/tmp/lp-ring.port
    local ids="1 17 33 49 65 81 97 113 129 145 161 177 193 209 225 241"
    echo "== mixed ring: CPU coordinator + GPU worker"
    [ -f "$m/config.json" ] || lp "$c/lp_genmodel" --out "$m" --seed 202 --format mlx8 --group 64 \
        --tied 1 --layers 28 --hidden 64 --heads 4 --kv-heads 2 --head-dim 32 --intermediate 128 \
        --vocab 256 >/dev/null 2>&1
    rm -f "$port"
    lp "$c/layerpipe" worker -m "$m" --device cuda --listen 127.0.0.1:0 --port-file "$port" \
        >"$OUT/ring_worker.log" 2>&1 &
    local wpid=$!
    for _ in $(seq 100); do [ -s "$port" ] && break; sleep 0.1; done
    lp "$c/layerpipe" logits -m "$m" --tokens "$ids" -o /tmp/lp-ring.f32 \
        --workers "127.0.0.1:$(cat "$port")" --plan 14,14 >"$OUT/ring.log" 2>&1
    echo "ring rc=$?"
    lp "$c/layerpipe" logits -m "$m" --tokens "$ids" -o /tmp/lp-one.f32 >>"$OUT/ring.log" 2>&1
    kill "$wpid" 2>/dev/null
    wait "$wpid" 2>/dev/null
    python3 - <<'EOF' 2>&1 | tee -a "$OUT/ring.log"
import numpy as np
a = np.fromfile("/tmp/lp-ring.f32", dtype=np.float32).reshape(-1, 256)
b = np.fromfile("/tmp/lp-one.f32", dtype=np.float32).reshape(-1, 256)
e = max(np.linalg.norm(x - y) / np.linalg.norm(y) for x, y in zip(a, b))
print(f"ring (CPU + NVIDIA H200 worker) vs one CPU process: {len(a)} rows, worst rel L2 {e:.3g}",
      "ok" if e <= 1e-4 else "FAIL")
EOF
}

# Where a batch-1 decode step's time goes: decode with the defaults and with
# each feature off (graphs, PDL, folded steps, tensor cores), then Nsight
# Compute's per-kernel time and DRAM bytes of two decode steps (graphs off,
# so that every kernel is a plain launch) and of a 512-token prefill.
run_profile() {
    local c=build-cuda-carry/bin dir=/tmp/lp-models/q17-mlx8 log=$OUT/profile.log
    local shape="--layers 28 --hidden 2048 --heads 16 --kv-heads 8 --head-dim 128
                 --intermediate 6144 --vocab 151936 --tied 1 --threads 16"
    mkdir -p /tmp/lp-models
    # shellcheck disable=SC2086
    [ -f "$dir/config.json" ] || lp "$c/lp_genmodel" --out "$dir" --seed 7 --format mlx8 $shape \
        >/dev/null 2>&1
    echo "== decode, 16 + 128 tokens, each feature off in turn" | tee -a "$log"
    for v in LP_NONE=1 LP_CUDA_NO_GRAPHS=1 LP_CUDA_NO_PDL=1 LP_CUDA_NO_FOLD=1; do
        printf '%-20s ' "$v" | tee -a "$log"
        env "$v" LD_LIBRARY_PATH="$here/build-cuda-carry/lib" "$c/layerpipe" bench -m "$dir" \
            --device cuda -p 16 -n 128 -r 1 2>&1 | grep decode: | tee -a "$log"
    done
    local ncu
    ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
    echo "== ncu: ${ncu:-not found}" | tee -a "$log"
    [ -n "$ncu" ] || return 0
    # ncu_summary NAME SKIP COUNT BENCH-ARGS...: per-kernel time and DRAM bytes
    ncu_summary() {
        local name=$1 skip=$2 count=$3
        shift 3
        LP_CUDA_NO_GRAPHS=1 lp timeout 90 "$ncu" --clock-control none --launch-skip "$skip" \
            --launch-count "$count" --metrics gpu__time_duration.sum,dram__bytes_read.sum \
            --print-summary per-kernel "$c/layerpipe" bench -m "$dir" --device cuda "$@" \
            >"$OUT/ncu_$name.log" 2>&1
        echo "ncu $name rc=$?" | tee -a "$log"
        grep -E "^  [a-z_]|k_|gpu__time_duration|dram__bytes|invocations" "$OUT/ncu_$name.log" |
            head -90 | tee -a "$log"
    }
    ncu_summary decode 600 288 -p 16 -b 16 -n 16 -r 1
    ncu_summary prefill 6 180 -p 512 -b 512 -n 1 -r 1
}

# serve --device cuda with 64 streams at once (curl, temperature 0), each
# against the same request alone: the text must be equal.
run_serve() {
    local c=${LP_BIN_DIR:-build-cuda-carry/bin} m=${LP_SERVE_MODEL:-/tmp/lp-models/q17-mlx8}
    local dev=${LP_SERVE_DEVICE:-cuda} port=/tmp/lp-serve.port
    local shape="--layers 28 --hidden 2048 --heads 16 --kv-heads 8 --head-dim 128
                 --intermediate 6144 --vocab 151936 --tied 1 --threads 16"
    mkdir -p /tmp/lp-models
    # shellcheck disable=SC2086
    [ -f "$m/config.json" ] || lp "$c/lp_genmodel" --out "$m" --seed 7 --format mlx8 $shape \
        >/dev/null 2>&1
    # serve needs a tokenizer: the Qwen3 one (the generated model has its vocabulary)
    [ -f "$m/tokenizer.json" ] || cp "${LP_TOK_DIR:-build-cuda-carry/tok}"/tokenizer*.json "$m/"
    rm -f "$port"
    echo "== serve --device $dev: 64 streams at once against each alone"
    lp "$c/layerpipe" serve -m "$m" --device "$dev" --listen 127.0.0.1:0 --port-file "$port" \
        --max-seqs 64 --ctx 256 >"$OUT/serve.log" 2>&1 &
    local spid=$!
    for _ in $(seq 600); do [ -s "$port" ] && break; sleep 0.1; done
    if [ ! -s "$port" ]; then
        echo "serve did not start:"; tail -5 "$OUT/serve.log"; kill "$spid" 2>/dev/null; return 0
    fi
    local url="http://127.0.0.1:$(cat "$port")/v1/completions" dir=/tmp/lp-serve-out
    rm -rf "$dir" && mkdir -p "$dir/alone" "$dir/crowd"
    req() { curl -s "$url" -H 'Content-Type: application/json' \
        -d "{\"prompt\": [$(( $1 * 7 + 1 )), $(( $1 * 13 + 5 )), 42], \"max_tokens\": 32, \"temperature\": 0, \"ignore_eos\": true}" |
        python3 -c 'import sys, json; print(json.load(sys.stdin)["choices"][0]["text"])'; }
    for i in $(seq 0 63); do req "$i" >"$dir/alone/$i"; done
    local t0; t0=$(date +%s.%N)
    for i in $(seq 0 63); do req "$i" >"$dir/crowd/$i" & done
    wait $(jobs -p | grep -v "^$spid$")
    local t1; t1=$(date +%s.%N)
    local same=0
    for i in $(seq 0 63); do
        [ -s "$dir/alone/$i" ] && cmp -s "$dir/alone/$i" "$dir/crowd/$i" && same=$((same + 1))
    done
    local empty=0
    for i in $(seq 0 63); do [ -s "$dir/alone/$i" ] || empty=$((empty + 1)); done
    echo "serve --device $dev, 64 streams at once: $same/64 equal to alone ($empty empty answers), $(python3 -c "print(f'{64 * 32 / ($t1 - $t0):.0f}')") tok/s through HTTP" | tee -a "$OUT/serve.log"
    head -c 300 "$dir/alone/0"; echo
    kill "$spid" 2>/dev/null
    wait "$spid" 2>/dev/null
}

case "${1:-}" in
pack) pack ;;
run)
    shift
    # logs are written to a scratch folder and packed into $OUT/logs.tgz
    # after every step (the device tool brings back at most 8 files)
    dest=${OUT:-$here/out}
    OUT=$(mktemp -d /tmp/lp-logs.XXXXXX)
    mkdir -p "$dest"
    unpack
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv 2>&1 |
        tee "$OUT/gpu.txt"
    steps=${*:-tests ring bench sanitize}
    for s in $steps; do
        "run_$s"
        tar -C "$OUT" -czf "$dest/logs.tgz" .
    done
    ;;
*)
    echo "usage: tools/cuda-device.sh pack | run [tests] [ring] [sanitize] [bench] [profile] [serve]" >&2
    exit 2
    ;;
esac
