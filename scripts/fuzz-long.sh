#!/usr/bin/env bash
# A long fuzzing campaign over every libFuzzer target (tests/fuzz): each runs for SECONDS (default
# 1800) on its growing corpus in build/tests/fuzz/corpus_NAME (the frame decoder: corpus/), with
# the same limits as its CTest campaign, and the executions per target are summed at the end (the
# figures docs/reliability.md records). Findings (crash-*, leak-*, oom-*, timeout-* files) are
# left in build/tests/fuzz/findings/; keep a fixed one in tests/fuzz/regressions/NAME/.
# Usage: scripts/fuzz-long.sh [BUILD_DIR] [SECONDS]
set -euo pipefail
BUILD=${1:-build}
SECONDS_EACH=${2:-1800}
FUZZ="$BUILD/tests/fuzz"
cmake --build "$BUILD" --target fuzz_targets >/dev/null
mkdir -p "$FUZZ/findings"
printf '%-16s %14s %10s\n' target executions exec/s
for name in frame_decoder auth_handshake config token_file status_request checkpoint; do
  bin="$FUZZ/fuzz_$name"
  corpus="$FUZZ/corpus_$name"
  extra=()
  case $name in
    frame_decoder) corpus="$FUZZ/corpus"; extra=(-write_seeds="$corpus" -max_len=8192 -malloc_limit_mb=64) ;;
    checkpoint) extra=(-write_seeds="$corpus" -max_len=65536 -malloc_limit_mb=256) ;;
    *) extra=(-max_len=4096 -malloc_limit_mb=256) ;;
  esac
  mkdir -p "$corpus"
  log="$FUZZ/findings/$name.log"
  "$bin" "${extra[@]}" -max_total_time="$SECONDS_EACH" \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$FUZZ/findings/$name-" \
    "$corpus" >"$log" 2>&1 || echo "$name: stopped with a finding, see $log"
  execs=$(awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}' "$log")
  rate=$(awk -v e="$execs" -v t="$SECONDS_EACH" 'BEGIN {printf "%.0f", e / t}')
  printf '%-16s %14s %10s\n' "$name" "$execs" "$rate"
done
