#!/usr/bin/env bash
# Benchmark of `ptrain prepare` beside SentencePiece (docs/benchmarks.md, "prepare"). Builds a
# synthetic-plus-real corpus at bench time (never committed, deleted at the end):
#   real: the fortunes texts and the licence texts of /usr/share/common-licenses, each document
#         tagged with a running number so that no two are equal;
#   synthetic: documents of words drawn (seeded) from the real texts' vocabulary;
# together repeated to SIZE_MB of text, spread over several files: half plain text (documents
# between `%` lines), a quarter gzip'd text, a quarter JSONL ({"text": ...}). Then, REPEATS times,
# interleaved so that a load change hits every candidate alike:
#   ptrain prepare --tokenizer bpe --vocab-size V at --threads 1 and 2 (peak RSS; encode MB/s per
#   thread: prepare's third pass, which reads, decompresses, splits, encodes and writes);
#   spm_encode (one process, single-threaded) of the first SPM_SLICE_MB of the same text, with a
#   model trained once by spm_train (BPE, the same vocabulary, the same 32 MiB sample).
# Wall-clock rates and rates per CPU-second (user + system time, which a loaded machine disturbs
# far less) are both printed.
# Prints one line per run and a summary of ranges.
# Usage: scripts/bench_prepare.sh [SIZE_MB=2048] [VOCAB=4096] [WORK=/tmp/ptrain-bench-prepare]
#                                 [REPEATS=2] [SPM_SLICE_MB=256]
# KEEP=1 keeps WORK (and a later run with the same SIZE_MB reuses its corpus); REPEATS=0 only builds
# the corpus and the SentencePiece model.
set -euo pipefail
SIZE_MB=${1:-2048}
VOCAB=${2:-4096}
WORK=${3:-/tmp/ptrain-bench-prepare}
REPEATS=${4:-2}
SPM_SLICE_MB=${5:-256}
PTRAIN=${PTRAIN:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/ptrain}
SAMPLE=$((32 << 20))
for tool in spm_train spm_encode /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "bench_prepare: $tool is missing (apt-get install sentencepiece time)" >&2; exit 1; }
done
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT  # the corpus is large: never leave it behind
if [ "$(cat "$WORK/corpus-size" 2>/dev/null)" = "$SIZE_MB" ]; then
  cd "$WORK"
else
rm -rf "$WORK" && mkdir -p "$WORK/in"
cd "$WORK"
cat /usr/share/games/fortunes/*.u8 2>/dev/null > seed.txt || true
[ -s seed.txt ] || cat $(find /usr/share/games/fortunes -type f ! -name '*.dat' ! -name '*.u8') > seed.txt
for f in /usr/share/common-licenses/*; do [ -f "$f" ] && { printf '%%\n'; cat "$f"; printf '\n'; } >> seed.txt; done
python3 - "$SIZE_MB" <<'PY'
import gzip, json, random, sys
size = int(sys.argv[1]) << 20
seed = open("seed.txt", encoding="utf-8", errors="replace").read()
real = [d.strip() for d in seed.split("\n%\n") if d.strip()]
words = seed.split()
rng = random.Random(1)
synthetic = []
for _ in range(20000):
    n = rng.randint(20, 400)
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(max(1, n // 10))]
    synthetic.append("\n".join(lines))
docs = [d for pair in zip(real * (len(synthetic) // len(real) + 1), synthetic) for d in pair]
per_file = 256 << 20
written, k, index = 0, 0, 0
def opener(kind, i):
    if kind == "plain": return open(f"in/plain-{i:03d}.txt", "w")
    if kind == "gz": return gzip.open(f"in/packed-{i:03d}.txt.gz", "wt", compresslevel=6)
    return open(f"in/records-{i:03d}.jsonl", "w")
out = {kind: [opener(kind, 0), 0, 0] for kind in ("plain", "gz", "jsonl")}
spm = open("all.txt", "w")  # the same documents, one a line (newlines as spaces), for spm_encode
while written < size:
    d = docs[k % len(docs)] + f" [{k}]"
    k += 1
    kind = ("plain", "plain", "gz", "jsonl")[k % 4]
    f = out[kind]
    if f[1] >= per_file:
        f[0].close(); f[2] += 1; f[0] = opener(kind, f[2]); f[1] = 0
    f[0].write(json.dumps({"text": d}) + "\n" if kind == "jsonl" else d + "\n%\n")
    f[1] += len(d) + 3
    spm.write(d.replace("\n", " ") + "\n")
    written += len(d) + 3
for f in out.values(): f[0].close()
spm.close()
PY
echo "$SIZE_MB" > corpus-size
fi
BYTES=$(stat -c %s all.txt)
head -c $((SPM_SLICE_MB << 20)) all.txt > slice.txt
SLICE=$(stat -c %s slice.txt)
echo "corpus: $(ls in | wc -l) files, $(du -sh in | cut -f1) on disk, $BYTES bytes of text; $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
df -h "$WORK" | tail -1
head -c $SAMPLE all.txt > sample.txt
/usr/bin/time -f "%M %e" -o time.txt spm_train --input=sample.txt --model_prefix=spm --vocab_size="$VOCAB" \
  --model_type=bpe --character_coverage=1.0 --byte_fallback=true --max_sentence_length=100000 \
  --input_sentence_size=1000000 --shuffle_input_sentence=false >/dev/null 2>&1
read -r rss secs < time.txt
echo "spm_train (bpe, vocab $VOCAB, the same 32 MiB sample): ${secs} s, peak RSS $((rss / 1024)) MiB"
rm -f sample.txt
: > results.txt
for r in $(seq 1 "$REPEATS"); do
  for t in 1 2; do
    rm -rf out
    /usr/bin/time -f "%M %e %U %S" -o time.txt "$PTRAIN" prepare --input in --doc-separator % --tokenizer bpe \
      --vocab-size "$VOCAB" --bpe-sample-bytes $SAMPLE --threads $t --output out 2> log.txt
    read -r rss secs user sys < time.txt
    enc=$(grep -o 'encoded [0-9.]* MB in [0-9.]* s' log.txt | tail -1 | awk '{print $5}')
    rate=$(python3 -c "print(round($BYTES/1e6/$enc/$t, 2))")
    cpu=$(python3 -c "print(round($BYTES/1e6/($user+$sys), 2))")
    echo "run $r: ptrain prepare threads=$t: total ${secs} s, encode ${enc} s = ${rate} MB/s per thread, ${cpu} MB per CPU-second (whole command: count, bpe training, encode), peak RSS $((rss / 1024)) MiB, load $(cut -d' ' -f1 /proc/loadavg)"
    echo "ptrain$t $rate $((rss / 1024)) $cpu" >> results.txt
    rm -rf out
  done
  /usr/bin/time -f "%M %e %U %S" -o time.txt spm_encode --model=spm.model --output_format=id < slice.txt > /dev/null
  read -r rss secs user sys < time.txt
  rate=$(python3 -c "print(round($SLICE/1e6/$secs, 2))")
  cpu=$(python3 -c "print(round($SLICE/1e6/($user+$sys), 2))")
  echo "run $r: spm_encode (1 process) of the first $SPM_SLICE_MB MiB: ${secs} s = ${rate} MB/s, ${cpu} MB per CPU-second, peak RSS $((rss / 1024)) MiB, load $(cut -d' ' -f1 /proc/loadavg)"
  echo "spm $rate $((rss / 1024)) $cpu" >> results.txt
done
python3 - <<'PY'
rows = {}
for line in open("results.txt"):
    name, rate, rss, cpu = line.split()
    rows.setdefault(name, []).append((float(rate), int(rss), float(cpu)))
def rng(v): return f"{min(v)}–{max(v)}" if min(v) != max(v) else f"{v[0]}"
for name, label in (("ptrain1", "ptrain 1 thread"), ("ptrain2", "ptrain 2 threads"), ("spm", "spm_encode")):
    v = rows.get(name, [])
    if v: print(f"summary: {label}: {rng([r for r, _, _ in v])} MB/s per thread (wall), {rng([c for _, _, c in v])} MB per CPU-second, peak RSS {rng([m for _, m, _ in v])} MiB")
if rows.get("ptrain1") and rows.get("spm"):
    for i, what in ((0, "wall"), (2, "CPU time")):
        lo = min(r[i] for r in rows["ptrain1"]) / max(r[i] for r in rows["spm"])
        hi = max(r[i] for r in rows["ptrain1"]) / min(r[i] for r in rows["spm"])
        print(f"summary: ptrain 1 thread / spm_encode per thread ({what}): {lo:.1f}x–{hi:.1f}x")
PY
