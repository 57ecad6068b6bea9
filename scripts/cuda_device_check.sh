#!/usr/bin/env bash
# The CUDA backend's checks on a GPU machine, in one go: build, the `cuda` tests (and under
# compute-sanitizer memcheck when it is installed), `bench train` on the GPT-2 124M shape in bf16 and
# fp32/TF32, and the attention microbenchmark (flash-style vs materialised, T 1024 and 4096). Every result goes to $OUT
# (default build/cuda-check/), with a summary.md to paste into docs/benchmarks.md.
# Usage: OUT=DIR scripts/cuda_device_check.sh [BUILD_DIR]     (each step bounded; failures recorded)
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-cuda}
OUT=${OUT:-build/cuda-check}
mkdir -p "$OUT"
JOBS=$(nproc)
SUMMARY="$OUT/summary.md"
log() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME TIMEOUT_S CMD...: runs CMD with its output in $OUT/NAME.txt, records the exit code
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  log "- $name: exit $rc in $((SECONDS - t0)) s ($OUT/$name.txt)"
  return $rc
}

: >"$SUMMARY"
log "# CUDA device check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
log ""
log "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
log "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"
log "- nvcc: $(nvcc --version 2>/dev/null | tail -1 || /usr/local/cuda/bin/nvcc --version | tail -1)"
log ""

step configure 300 cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPTRAIN_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES=90 || { log "configure failed: stop"; exit 1; }
grep -E "✓|✗" "$OUT/configure.txt" >>"$SUMMARY"
step build 900 cmake --build "$BUILD" -j "$JOBS" --target ptrain test_cuda test_worker || {
  log "build failed: stop"; tail -30 "$OUT/build.txt" >>"$SUMMARY"; exit 1; }

step ctest-cuda 600 ctest --test-dir "$BUILD" -L cuda --output-on-failure --timeout 300
grep -E "tests passed|tests failed|Skipped|\*\*\*Failed|Passed|Not Run" "$OUT/ctest-cuda.txt" | tail -20 >>"$SUMMARY"
step ctest-cuda-math 300 ctest --test-dir "$BUILD" -R "cuda math" --output-on-failure
# The GELU epilogue cases again, for their printed record: whether cuBLASLt ran each epilogue (or
# why it fell back) and the largest error of the fused results against the CPU backend.
step cuda-gelu-epilogue 600 "$BUILD/tests/test_cuda" --test-case="*GELU*"
grep -E "GELU epilogue|largest error" "$OUT/cuda-gelu-epilogue.txt" | head -40 >>"$SUMMARY"

if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 600 compute-sanitizer --tool "$tool" --error-exitcode 99 \
      "$BUILD/tests/test_cuda" --test-case="cuda: *" --test-case-exclude="*trajectory*"
    grep -E "ERROR SUMMARY|========= " "$OUT/sanitizer-$tool.txt" | tail -5 >>"$SUMMARY"
  done
fi

PTRAIN="$BUILD/cli/ptrain"
for mode in "bf16 --set device.precision=bf16" "tf32 --set device.precision=fp32 --set device.allow_tf32=true"; do
  name=${mode%% *}
  args=${mode#* }
  # shellcheck disable=SC2086
  step "bench-train-$name" 600 "$PTRAIN" bench train configs/gpt2-124m.yaml --device cuda $args \
    --steps 5 --warmup 2 --json
  tail -1 "$OUT/bench-train-$name.txt" >>"$SUMMARY"
done
step bench-train-bf16-profile 600 "$PTRAIN" bench train configs/gpt2-124m.yaml --device cuda \
  --set device.precision=bf16 --steps 2 --warmup 1 --profile

for T in 1024 4096; do
  step "bench-attention-T$T" 600 "$PTRAIN" bench attention --device cuda --seq-len "$T" --json
  tail -1 "$OUT/bench-attention-T$T.txt" >>"$SUMMARY"
done
log ""
log "done $(date -u +%Y-%m-%dT%H:%M:%SZ)"
