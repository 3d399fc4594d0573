#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# faults.sh -- the longer fault loop of issue 8: ROUNDS kills per recovery
# way (restarted: 4 x ROUNDS single requests, greedy and seeded, and ROUNDS
# rounds of 8 at once; standby and replan ROUNDS each), every output
# compared with an undisturbed run, then the pause a client sees per way
# (kill to the next token, p50 and max). The prompts are 3-6 tokens of the
# bundled model; 120 tokens are generated per request.
# Usage: bench/faults.sh BUILD_DIR [ROUNDS]
set -euo pipefail
build=$(cd "${1:?usage: faults.sh BUILD_DIR [ROUNDS]}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
export LP_BIN="$build/layerpipe" LP_TOOLS_DIR="$build" LP_WORK_DIR="$build/testdata" \
       LP_SOURCE_DIR="$here" LP_FAULT_ROUNDS="${2:-20}"
"$build/cluster_test_recover" 2>/dev/null
