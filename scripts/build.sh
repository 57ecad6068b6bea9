#!/usr/bin/env bash
# Configures and builds ptrain into build/ (Release-with-debug-info, Ninja). Prints the feature summary.
# Arguments go to `cmake --build` (e.g. `--target ptrain`: the binary only, no tests).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo | sed -n '/features:/,/Configuring done/p'
cmake --build build -j "$(nproc)" "$@"
