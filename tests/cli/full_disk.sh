#!/usr/bin/env bash
# A full disk must fail a command with the cause on one line, never crash it (no SIGSEGV in HDF5's
# clean-up at exit), never leave a half-written file under its final name; a job whose checkpoint
# does not fit stops with the cause, and the launcher names any role that died by a signal.
# Runs on small tmpfs mounts (needs root, or CAP_SYS_ADMIN); where mounting is not possible it
# exits 77, which CTest shows as "Skipped", with the reason printed.
# Usage: full_disk.sh PATH/TO/ptrain
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cli_begin disk "${1:-}"
MNT="$WORK/mnt"
mkdir -p "$MNT"
cli_cleanup() { umount "$MNT" 2>/dev/null; }
if ! mount -t tmpfs -o size=64k tmpfs "$MNT" 2>"$WORK/mount.err"; then
  echo "skipped: cannot mount a tmpfs here ($(cat "$WORK/mount.err")); run as root to test a full disk"
  exit 77
fi
umount "$MNT"

# ---- data and configs ---------------------------------------------------------------------------
prepare_corpus 60
cat > init.yaml <<YAML
run: {dir: run, seed: 1}
data: {train: $WORK/data, tokenizer: byte}
model: {seq_len: 64, n_layer: 2, n_head: 2, n_embd: 64}
YAML

# ---- ptrain init on a disk too small for the file, at several sizes (each fails elsewhere) ------
for size in 128k 600k 1200k; do
  mount -t tmpfs -o size=$size tmpfs "$MNT"
  "$PTRAIN" init init.yaml --out "$MNT/x.h5" >/dev/null 2>"$WORK/init.err"
  rc=$?
  if [ $rc -lt 1 ] || [ $rc -gt 127 ]; then
    fail "init on a $size disk: exit $rc (wanted 1..127: a crash at exit?)"
  fi
  if ! head -n1 "$WORK/init.err" | grep -q "No space left on device (errno 28)"; then
    fail "init on a $size disk: the first line does not name the cause:"
    head -c 400 "$WORK/init.err"; echo
  fi
  left=$(ls -A "$MNT")
  [ -z "$left" ] || fail "init on a $size disk left files behind: $left"
  [ $failures -eq 0 ] && echo "ok   init on a $size disk: exit $rc: $(head -n1 "$WORK/init.err" | cut -c1-140)"
  umount "$MNT"
done

# ---- a job whose first checkpoint does not fit ------------------------------------------------
mount -t tmpfs -o size=1m tmpfs "$MNT"
cat > job.yaml <<YAML
run: {dir: $MNT/run, seed: 1, threads: 1}
data: {train: $WORK/data, tokenizer: byte}
model: {seq_len: 32, n_layer: 2, n_head: 2, n_embd: 64}
train: {steps: 4, batch_size: 4, micro_batch: 2, eval_every: 0, log_every: 1}
cluster: {workers: 1, servers: 2, launch: processes}
checkpoint: {every_steps: 2, resume: never}
YAML
timeout -k 5 120 "$PTRAIN" run job.yaml >/dev/null 2>"$WORK/job.err"
rc=$?
before=$failures
if [ $rc -lt 1 ] || [ $rc -gt 120 ]; then fail "job on a full disk: exit $rc"; fi
grep -q "No space left on device" "$WORK/job.err" || fail "job on a full disk: the cause is not named"
grep -q "died by signal" "$WORK/job.err" && fail "job on a full disk: a role crashed: $(grep 'died by signal' "$WORK/job.err")"
finals=$(find "$MNT/run/checkpoints" -maxdepth 1 -name 'step-*' ! -name '*.tmp' 2>/dev/null)
[ -z "$finals" ] || fail "job on a full disk: a checkpoint was completed: $finals"
[ -e "$MNT/run/checkpoints/latest" ] && fail "job on a full disk: latest was moved"
[ $failures -eq $before ] && echo "ok   job on a full disk: exit $rc: $(grep -m1 'No space left' "$WORK/job.err" | cut -c1-160)"
umount "$MNT"

# ---- a role that crashes is named by the launcher --------------------------------------------
sed -e "s|dir: $MNT/run|dir: $WORK/run2|" -e 's/steps: 4,/steps: 100000,/' -e 's/every_steps: 2/every_steps: 0/' \
  -e 's/launch: processes}/launch: processes, max_restarts: 0}/' job.yaml > long.yaml  # the crash ends the job
setsid "$PTRAIN" run long.yaml >/dev/null 2>"$WORK/long.err" &
JOB_PID=$!
for _ in $(seq 1 600); do
  [ -s "$WORK/run2/train.jsonl" ] && break
  sleep 0.05
done
server=$(pgrep -f -P "$JOB_PID" -- "ptrain server" | head -n1)
before=$failures
if [ -z "$server" ]; then
  fail "crash report: no server process found"
else
  kill -SEGV "$server"
  timeout 60 tail --pid="$JOB_PID" -f /dev/null
  grep -Eq "server-[0-9] \(pid $server\) died by signal 11 \(Segmentation fault\)" "$WORK/long.err" \
    || { fail "crash report: the launcher did not name the crashed server:"; tail -n 5 "$WORK/long.err"; }
fi
wait "$JOB_PID" 2>/dev/null
JOB_PID=
[ $failures -eq $before ] && echo "ok   crash report: $(grep -m1 'died by signal' "$WORK/long.err" | cut -c1-160)"

cli_end "all full-disk cases passed"
