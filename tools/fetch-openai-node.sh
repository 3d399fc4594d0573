#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the official OpenAI Node SDK (npm package `openai`) under DEST
# and prints DEST/node_modules, for the API tests (tests/api/). Does nothing
# but print when it is already there; a lock keeps tests running in
# parallel from installing twice at once.
# Usage: tools/fetch-openai-node.sh DEST
set -euo pipefail
dest=${1:?usage: fetch-openai-node.sh DEST}
mkdir -p "$dest"
exec 9>"$dest/.fetch.lock"
flock 9
if [ ! -s "$dest/node_modules/openai/package.json" ]; then
  for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "fetch-openai-node: $tool is not installed (needed for the openai npm package)" >&2
      exit 1
    fi
  done
  npm install --silent --no-audit --no-fund --prefix "$dest" openai@6 >&2
fi
[ -s "$dest/node_modules/openai/package.json" ] || { echo "fetch-openai-node: openai missing after install" >&2; exit 1; }
echo "$dest/node_modules"
