#!/usr/bin/env bash
# The README's test command (and what .ci/run calls): installs what is missing, builds, runs every
# test with CTest and prints its summary.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/build.sh
cd build
ctest --output-on-failure --timeout 900 -j 2 "$@"
