#!/usr/bin/env bash
# Benchmark of `ptrain prepare` beside SentencePiece (docs/benchmarks.md, "prepare"). Builds a
# corpus at bench time (not committed): the fortunes texts repeated to SIZE_MB, half as plain text
# files, a quarter as gzip'd text, a quarter as JSONL; then, in the same run:
#   ptrain prepare --tokenizer bpe --vocab-size V --threads 1 and 2 (peak RSS, MB/s per thread);
#   spm_train (BPE, the same vocabulary size, on the same sample bytes) and spm_encode of the same
#   text, one process (its encode is single-threaded).
# Usage: scripts/bench_prepare.sh [SIZE_MB=1024] [VOCAB=4096] [WORK=/tmp/ptrain-bench-prepare]
set -euo pipefail
SIZE_MB=${1:-1024}
VOCAB=${2:-4096}
WORK=${3:-/tmp/ptrain-bench-prepare}
PTRAIN=${PTRAIN:-$(cd "$(dirname "$0")/.." && pwd)/build/cli/ptrain}
SAMPLE=$((32 << 20))
rm -rf "$WORK" && mkdir -p "$WORK/in"
cd "$WORK"
cat /usr/share/games/fortunes/*.u8 2>/dev/null > seed.txt || true
[ -s seed.txt ] || cat $(find /usr/share/games/fortunes -type f ! -name '*.dat' ! -name '*.u8') > seed.txt
python3 - "$SIZE_MB" <<'PY'
import gzip, json, sys
size = int(sys.argv[1]) << 20
seed = open("seed.txt", encoding="utf-8", errors="replace").read()
docs = [d.strip() for d in seed.split("\n%\n") if d.strip()]
written, k, part = 0, 0, 0
plain = open("in/plain-0.txt", "w"); gz = gzip.open("in/packed-0.txt.gz", "wt"); js = open("in/records-0.jsonl", "w")
while written < size:
    d = docs[k % len(docs)] + f" [{k}]"
    k += 1
    r = k % 4
    if r < 2: plain.write(d + "\n%\n")
    elif r == 2: gz.write(d + "\n%\n")
    else: js.write(json.dumps({"text": d}) + "\n")
    written += len(d) + 3
for f in (plain, gz, js): f.close()
PY
# The same documents as one text file for spm_encode (one document per line, newlines escaped).
python3 - <<'PY'
import gzip, json
with open("all.txt", "w") as out:
    for name, opener in (("in/plain-0.txt", open), ("in/packed-0.txt.gz", lambda p: gzip.open(p, "rt"))):
        for d in opener(name).read().split("\n%\n"):
            if d.strip(): out.write(d.replace("\n", " ") + "\n")
    for line in open("in/records-0.jsonl"):
        out.write(json.loads(line)["text"].replace("\n", " ") + "\n")
PY
BYTES=$(stat -c %s all.txt)
echo "corpus: $(du -sh in | cut -f1) on disk, $BYTES bytes of text"
for t in 1 2; do
  rm -rf out
  /usr/bin/time -f "%M %e" -o time.txt "$PTRAIN" prepare --input in --doc-separator % --tokenizer bpe \
    --vocab-size "$VOCAB" --bpe-sample-bytes $SAMPLE --threads $t --output out 2> log.txt
  read -r rss secs < time.txt
  enc=$(grep -o 'encoded [0-9.]* MB in [0-9.]* s' log.txt | awk '{print $5}')
  echo "ptrain prepare threads=$t: total ${secs} s, encode ${enc} s, peak RSS $((rss / 1024)) MiB, encode $(python3 -c "print(round($BYTES/1e6/$enc/$t, 1))") MB/s per thread"
done
head -c $SAMPLE all.txt > sample.txt
/usr/bin/time -f "%M %e" -o time.txt spm_train --input=sample.txt --model_prefix=spm --vocab_size="$VOCAB" \
  --model_type=bpe --character_coverage=1.0 --byte_fallback=true --max_sentence_length=100000 \
  --input_sentence_size=1000000 --shuffle_input_sentence=false >/dev/null 2>&1
read -r rss secs < time.txt
echo "spm_train (bpe, vocab $VOCAB, same sample): ${secs} s, peak RSS $((rss / 1024)) MiB"
/usr/bin/time -f "%M %e" -o time.txt spm_encode --model=spm.model --output_format=id < all.txt > /dev/null
read -r rss secs < time.txt
echo "spm_encode (1 process): ${secs} s, peak RSS $((rss / 1024)) MiB, $(python3 -c "print(round($BYTES/1e6/$secs, 1))") MB/s"
