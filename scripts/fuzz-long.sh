#!/usr/bin/env bash
# A long fuzzing campaign over every libFuzzer target (tests/fuzz): each runs for SECONDS (default
# 1800) on its growing corpus in build/tests/fuzz/corpus_NAME (the frame decoder: corpus/), with
# the same limits as its CTest campaign, and the executions per target are summed at the end (the
# figures docs/reliability.md records, with the CPU seconds each got where /usr/bin/time exists).
# Findings (crash-*, leak-*, oom-*, timeout-* files) are left in build/tests/fuzz/findings/; keep
# a fixed one in tests/fuzz/regressions/NAME/. An input that runs longer than 30 s is a finding
# too (a hang). Run it niced on a shared machine:
#   nice -n 19 scripts/fuzz-long.sh build 3600
# Usage: scripts/fuzz-long.sh [BUILD_DIR] [SECONDS] [TARGET...]   (default: every target)
# Each target is brought up to date first, unless NO_BUILD=1 (a build running beside it).
set -euo pipefail
BUILD=${1:-build}
SECONDS_EACH=${2:-1800}
shift $(($# < 2 ? $# : 2))
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(frame_decoder auth_handshake config token_file status_request checkpoint)
fi
FUZZ="$BUILD/tests/fuzz"
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$FUZZ/findings"
printf '%-16s %14s %8s %10s %8s\n' target executions seconds exec/s cpu_s
for name in "${TARGETS[@]}"; do
  bin="$FUZZ/fuzz_$name"
  [ "${NO_BUILD:-0}" = 1 ] || cmake --build "$BUILD" --target "fuzz_${name}_bin" >/dev/null
  corpus="$FUZZ/corpus_$name"
  extra=()
  case $name in
    frame_decoder) corpus="$FUZZ/corpus"; extra=(-write_seeds="$corpus" -max_len=8192 -malloc_limit_mb=64) ;;
    # -detect_leaks=0: HDF5 keeps blocks on its free lists between files, which LeakSanitizer's
    # per-input check reports as leaks inside libhdf5 (they do not reproduce on their own).
    checkpoint) extra=(-write_seeds="$corpus" -max_len=65536 -malloc_limit_mb=256 -detect_leaks=0) ;;
    *) extra=(-max_len=4096 -malloc_limit_mb=256) ;;
  esac
  mkdir -p "$corpus"
  # Read-only seeds beside the growing corpus: the kept findings, and the shipped configs.
  seeds=()
  [ -d "$SRC/tests/fuzz/regressions/$name" ] && seeds+=("$SRC/tests/fuzz/regressions/$name")
  [ "$name" = config ] && seeds+=("$SRC/configs")
  log="$FUZZ/findings/$name.log"
  timer=()
  [ -x /usr/bin/time ] && timer=(/usr/bin/time -f '%U %S' -o "$FUZZ/findings/$name.cpu")
  start=$(date +%s)
  "${timer[@]}" "$bin" "${extra[@]}" -max_total_time="$SECONDS_EACH" -timeout=30 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$FUZZ/findings/$name-" \
    "$corpus" "${seeds[@]}" >"$log" 2>&1 || echo "$name: stopped with a finding, see $log"
  execs=$(awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}' "$log")
  took=$(($(date +%s) - start))  # shorter than asked when it stopped at a finding
  [ "$took" -gt 0 ] || took=1
  rate=$(awk -v e="$execs" -v t="$took" 'BEGIN {printf "%.0f", e / t}')
  # CPU seconds it got (user + system): on a shared machine exec/s says more per CPU second.
  cpu=-
  [ -s "$FUZZ/findings/$name.cpu" ] && cpu=$(awk 'END {printf "%.0f", $1 + $2}' "$FUZZ/findings/$name.cpu")
  printf '%-16s %14s %8s %10s %8s\n' "$name" "$execs" "$took" "$rate" "$cpu"
done
