#!/usr/bin/env bash
# Feeds `ptrain` bad inputs (config, corpus, token file, checkpoint, command line) and checks that
# each fails with the expected exit code and a message naming the problem — and that no existing
# output was overwritten or half-written by the failed command.
# Usage: bad_inputs.sh PATH/TO/ptrain
set -uo pipefail
PTRAIN=${1:?usage: bad_inputs.sh PTRAIN}
SCRIPTS=$(cd "$(dirname "$0")/../../scripts" && pwd)
WORK=$(mktemp -d /tmp/ptrain-bad-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
failures=0
cases=0

# expect CODE PATTERN -- command...   : exit code CODE and stderr matching the extended regex PATTERN
expect() {
  local code=$1 pattern=$2
  shift 3
  cases=$((cases + 1))
  local out rc
  out=$("$@" 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -Eq -- "$pattern" <<<"$out"; then
    echo "FAIL [$cases] $*"
    echo "     expected exit $code and /$pattern/, got exit $rc:"
    sed 's/^/     | /' <<<"$out" | head -8
    failures=$((failures + 1))
  else
    echo "ok   [$cases] exit $rc: $(grep -Em1 -- "$pattern" <<<"$out" | cut -c1-150)"
  fi
}

# ---- a good corpus, config and checkpoint to damage ----------------------------------------
mkdir corpus
for i in $(seq 1 40); do printf 'document %d: the quick brown fox jumps over the lazy dog %d\n%%\n' "$i" "$i"; done > corpus/a.txt
"$PTRAIN" prepare --input corpus --doc-separator % --tokenizer byte --val-fraction 0.2 --seed 3 --output data >/dev/null 2>&1 \
  || { echo "setup: prepare failed"; exit 1; }
cat > good.yaml <<'YAML'
run:
  dir: run
data:
  train: data
  val: data
model:
  seq_len: 16
  n_layer: 1
  n_head: 2
  n_embd: 16
train:
  steps: 2
  batch_size: 2
  micro_batch: 2
YAML
"$PTRAIN" init good.yaml --out good.h5 >/dev/null 2>&1 || { echo "setup: init failed"; exit 1; }
sha_before=$(sha256sum data/* good.h5 | sha256sum)

# ---- config ----------------------------------------------------------------------------------
printf 'model:\n  n_layer: [1,\n' > malformed.yaml
expect 3 'malformed.yaml:[0-9]+:[0-9]+' -- "$PTRAIN" init malformed.yaml --out x.h5
sed 's/  n_head: 2/  n_heads: 2/' good.yaml > unknown.yaml
expect 3 "unknown.yaml:[0-9]+.*model.n_heads.*did you mean 'model.n_head'" -- "$PTRAIN" init unknown.yaml --out x.h5
sed 's/  n_layer: 1/  n_layer: four/' good.yaml > type.yaml
expect 3 "type.yaml:[0-9]+.*model.n_layer.*integer" -- "$PTRAIN" init type.yaml --out x.h5
expect 3 "optim.lr" -- "$PTRAIN" init good.yaml --set optim.lr=-1 --out x.h5
expect 3 "n_embd.*n_head|n_head.*n_embd" -- "$PTRAIN" init good.yaml --set model.n_embd=15 --out x.h5
expect 3 "model.seq_len" -- "$PTRAIN" init good.yaml --set model.seq_len=0 --out x.h5
expect 3 "cluster.launch.*mpi" -- "$PTRAIN" run good.yaml --set cluster.launch=mpi
expect 3 "cluster.staleness.*applies only to cluster.sync: ssp" -- "$PTRAIN" run good.yaml --set cluster.staleness=2
expect 4 "missing.yaml" -- "$PTRAIN" run missing.yaml
expect 2 "--set|set" -- "$PTRAIN" run good.yaml --set nonsense
expect 3 "model.vocab_size.*smaller" -- "$PTRAIN" init good.yaml --set model.vocab_size=100 --out x.h5

# ---- corpus ----------------------------------------------------------------------------------
mkdir empty
expect 5 "no documents" -- "$PTRAIN" prepare --input empty --tokenizer byte --output out1
expect 4 "does-not-exist" -- "$PTRAIN" prepare --input does-not-exist --tokenizer byte --output out2
printf 'one single document\n' > one.txt
expect 5 "val.*empty|empty.*val" -- "$PTRAIN" prepare --input one.txt --tokenizer byte --output out3
printf '{"text": "fine"}\n{"text": broken\n' > bad.jsonl
expect 5 "bad.jsonl:2" -- "$PTRAIN" prepare --input bad.jsonl --tokenizer byte --output out4
expect 5 "val-fraction|val_fraction" -- "$PTRAIN" prepare --input corpus --tokenizer byte --val-fraction 1.5 --output out5
# A failed prepare over an existing output folder keeps the old files.
expect 5 "no documents" -- "$PTRAIN" prepare --input empty --tokenizer byte --output data

# ---- token files -----------------------------------------------------------------------------
head -c 40 data/train-00000.tok > truncated.tok
expect 5 "truncated.tok" -- "$PTRAIN" eval --checkpoint good.h5 --data truncated.tok
# A worker's --device is checked before it contacts anyone (nothing listens on port 1).
# cuda:999: refused before contacting anyone, as not built (8) or as no such GPU / no driver (10).
cuda_rc=8
"$PTRAIN" worker --coordinator 127.0.0.1:1 --device cuda:999 >/dev/null 2>&1 || cuda_rc=$?
[ "$cuda_rc" = 8 ] || cuda_rc=10
expect "$cuda_rc" "--device 'cuda:999'.*(not implemented yet|no CUDA driver|no GPU|driver supports)" -- "$PTRAIN" worker --coordinator 127.0.0.1:1 --device cuda:999
expect 2 "--device 'tpu' is not a device; valid devices: cpu, cuda, cuda:N" -- "$PTRAIN" worker --coordinator 127.0.0.1:1 --device tpu
cp data/train-00000.tok flipped.tok
printf '\xff' | dd of=flipped.tok bs=1 seek=100 conv=notrunc status=none
expect 5 "flipped.tok.*(CRC|checksum)" -- "$PTRAIN" eval --checkpoint good.h5 --data flipped.tok
printf 'not a token file at all, just text that is long enough to hold a header......' > text.tok
expect 5 "text.tok.*magic" -- "$PTRAIN" eval --checkpoint good.h5 --data text.tok

# ---- checkpoints -----------------------------------------------------------------------------
head -c 3000 good.h5 > trunc.h5
expect 6 "trunc.h5.*damaged or truncated" -- "$PTRAIN" inspect trunc.h5
# One byte changed on disk: the checksum block refuses it before HDF5 opens the file.
cp good.h5 flipped.h5
printf '\x55' | dd of=flipped.h5 bs=1 seek=$(($(stat -c %s good.h5) / 2)) conv=notrunc status=none
expect 6 "flipped.h5: damaged or truncated: its checksum block expects crc32c 0x[0-9a-f]{8}.*the file has crc32c" -- "$PTRAIN" eval --checkpoint flipped.h5 --data data/val-00000.tok
expect 4 "nope.h5" -- "$PTRAIN" inspect nope.h5
"$PTRAIN" init good.yaml --set model.n_embd=32 --out other.h5 >/dev/null 2>&1
expect 6 "layout" -- "$PTRAIN" inspect good.h5 --diff other.h5
cp good.h5 crc.h5
if /usr/bin/python3 -c 'import h5py' 2>/dev/null; then
  /usr/bin/python3 - "$SCRIPTS" <<'PY'
import h5py
with h5py.File("crc.h5", "r+") as f:
    d = f["model/transformer.wpe.weight"]
    d[0, 0] = d[0, 0] + 1.0
import sys
sys.path.insert(0, sys.argv[1])
import check_checkpoint  # the edit rewritten into the checksum block: the tensor's crc32c sees it
check_checkpoint.write_checksum_block("crc.h5")
PY
  expect 6 "transformer.wpe.weight.*(crc|CRC|checksum)" -- "$PTRAIN" eval --checkpoint crc.h5 --data data/val-00000.tok
  cp good.h5 version.h5
  /usr/bin/python3 -c 'import h5py, numpy as np; f = h5py.File("version.h5", "r+"); f.attrs["format_version"] = np.int32(99); f.close(); import sys; sys.path.insert(0, sys.argv[1]); import check_checkpoint; check_checkpoint.write_checksum_block("version.h5")' "$SCRIPTS"
  expect 6 "format_version.*99" -- "$PTRAIN" inspect version.h5
else
  echo "skipped: /usr/bin/python3 has no h5py (2 checkpoint corruption cases)"
fi
expect 5 "windows|batch" -- "$PTRAIN" grad --checkpoint good.h5 --data data/val-00000.tok --batch-size 100000 --out g.h5
[ -e g.h5 ] && { echo "FAIL: a failed grad left g.h5 behind"; failures=$((failures + 1)); }

sha_after=$(sha256sum data/* good.h5 | sha256sum)
if [ "$sha_before" != "$sha_after" ]; then
  echo "FAIL: a failed command changed an existing file"
  failures=$((failures + 1))
fi
ls x.h5 out1 out2 out3 out4 out5 2>/dev/null && { echo "FAIL: a failed command left output behind"; failures=$((failures + 1)); }

echo "bad inputs: $cases cases, $failures failures"
[ "$failures" -eq 0 ]
