#!/usr/bin/env bash
# Benchmark of the data plane's overlap with compute (cluster.bucket_mb; docs/benchmarks.md
# "Overlap"). For CONFIG (e.g. configs/bench-small.yaml), REPEATS rounds, each running the same
# `cluster.launch: processes` job (2 workers, 2 servers, TCP on loopback, STEPS steps, byte
# tokens of a seeded random text) once per bucket size in BUCKETS, interleaved so that a load
# change hits every candidate alike. Per run it prints the mean over the steps after the first
# WARMUP of train.jsonl's step_s and its phases: pull_s (a worker blocked on weights), compute_s,
# push_s (a worker blocked on pushes), wait_s (the coordinator's last-push-to-applied), then a
# summary: per bucket size the range of step_s and its ratio to bucket_mb 0 (no overlap) in the
# same round.
# Usage: scripts/bench_overlap.sh CONFIG [REPEATS=3] [STEPS=8] [WARMUP=2] [BUCKETS="0 25 4"]
set -euo pipefail
CONFIG=${1:?usage: bench_overlap.sh CONFIG [REPEATS] [STEPS] [WARMUP] [BUCKETS]}
REPEATS=${2:-3}
STEPS=${3:-8}
WARMUP=${4:-2}
BUCKETS=${5:-"0 25 4"}
PTRAIN=${PTRAIN:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/ptrain}
WORK=$(mktemp -d /tmp/ptrain-bench-overlap.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# A seeded random text, about 40 windows per step for every step of a run.
python3 - "$WORK/text.txt" <<'PY'
import random, sys
random.seed(7)
words = ["".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9)))
         for _ in range(5000)]
with open(sys.argv[1], "w") as f:
    for _ in range(400000):
        f.write(random.choice(words) + (" " if random.random() < 0.9 else "\n"))
PY
"$PTRAIN" prepare --input "$WORK/text.txt" --tokenizer byte --val-fraction 0 --output "$WORK/data" \
  >/dev/null 2>&1

results="$WORK/results.txt"
for round in $(seq 1 "$REPEATS"); do
  for b in $BUCKETS; do
    run="$WORK/run-$round-$b"
    "$PTRAIN" run "$CONFIG" --set cluster.workers=2 --set cluster.servers=2 \
      --set cluster.launch=processes --set "cluster.bucket_mb=$b" \
      --set "train.steps=$((STEPS + WARMUP))" --set train.log_every=1 --set train.eval_every=0 \
      --set "data.train=$WORK/data/manifest.json" --set data.val= --set data.tokenizer=byte \
      --set "run.dir=$run" --set checkpoint.every_steps=0 --set checkpoint.resume=never \
      >"$run.log" 2>&1 || { echo "bench_overlap: the job with bucket_mb $b failed:"; tail -20 "$run.log"; exit 1; }
    python3 - "$run/train.jsonl" "$WARMUP" "$round" "$b" >>"$results" <<'PY'
import json, sys
path, warmup, rnd, b = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in open(path) if '"loss"' in l]
rows = [r for r in rows if r["step"] > warmup]
mean = lambda k: sum(r[k] for r in rows) / len(rows)
print(rnd, b, *("%.4f" % mean(k) for k in ("step_s", "pull_s", "compute_s", "push_s", "wait_s")))
PY
    tail -1 "$results" | awk '{printf "round %s bucket_mb %-5s step_s %s  pull_s %s  compute_s %s  push_s %s  wait_s %s\n", $1, $2, $3, $4, $5, $6, $7}'
  done
done
python3 - "$results" <<'PY'
import sys, collections
rows = [l.split() for l in open(sys.argv[1])]
by = collections.defaultdict(list)
base = {r[0]: float(r[2]) for r in rows if float(r[1]) == 0}
for r in rows:
    by[r[1]].append((float(r[2]), float(r[2]) / base[r[0]] if r[0] in base else float("nan"),
                     [float(x) for x in r[3:]]))
print("summary (step_s range, ratio to bucket_mb 0 in the same round, mean phases pull/compute/push/wait):")
for b, v in by.items():
    s = [x[0] for x in v]; q = [x[1] for x in v]
    ph = [sum(x[2][i] for x in v) / len(v) for i in range(4)]
    print("  bucket_mb %-5s step_s %.3f-%.3f  ratio %.2f-%.2f  phases %.3f / %.3f / %.3f / %.3f"
          % (b, min(s), max(s), min(q), max(q), *ph))
PY
