#!/usr/bin/env bash
# A connection flood must not stop a job. With a file-descriptor limit of 256 for every role
# (hard and soft), up to 1800 idle connections plus junk are opened to the coordinator's control port,
# to a parameter server's data port and to the status endpoint while the job trains and
# checkpoints; the job must finish with exit 0, every checkpoint written, the status page must
# answer during the flood, and the logs must stay small (refusals are logged at a bounded rate).
# Usage: flood.sh PATH/TO/ptrain
set -uo pipefail
. "$(dirname "$0")/lib.sh"
cli_begin flood "${1:-}"
PY=/usr/bin/python3
cli_cleanup() { [ -n "${FLOOD_PID:-}" ] && kill -KILL "$FLOOD_PID" 2>/dev/null; }
prepare_corpus 80
cat > job.yaml <<YAML
run: {dir: $WORK/run, seed: 1, threads: 1}
data: {train: $WORK/data, tokenizer: byte}
model: {seq_len: 16, n_layer: 1, n_head: 2, n_embd: 16}
train: {steps: 1600, batch_size: 4, micro_batch: 2, eval_every: 0, log_every: 1}
cluster: {workers: 1, servers: 1, launch: processes}
checkpoint: {every_steps: 200, keep: 20, resume: never}
YAML

# The job, every role limited to 256 descriptors (hard and soft: nothing can raise it).
setsid bash -c "ulimit -n 256 && exec '$PTRAIN' run job.yaml" >/dev/null 2>"$WORK/job.err" &
JOB_PID=$!
for _ in $(seq 1 600); do
  [ -s run/train.jsonl ] && [ -s run/status.addr ] && break
  sleep 0.05
done
coord=$(head -n1 run/coordinator.addr)
status=$(head -n1 run/status.addr)
data=$(grep -ohE 'listening on [0-9.]+:[0-9]+ for workers' run/logs/server-0.log | head -n1 | awk '{print $3}')
[ -n "$coord" ] && [ -n "$status" ] && [ -n "$data" ] || { fail "setup: no addresses ($coord / $status / $data)"; exit 1; }

cat > flood.py <<'PY'
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
targets = sys.argv[1:]
held = []
junk = [b"x", b"GET / HTTP/1.1\r\n\r\n", b"PTRN\x01\x00", b"\x00" * 64]
end = time.time() + 6
i = 0
while time.time() < end:
    for t in targets:
        host, port = t.rsplit(":", 1)
        try:
            s = socket.create_connection((host, int(port)), timeout=1)
        except OSError:
            continue
        if i % 5 == 0:
            try:
                s.send(junk[(i // 5) % len(junk)])
            except OSError:
                pass
        held.append(s)
        i += 1
    if len(held) > 1800:
        for s in held[:600]:
            s.close()
        del held[:600]
    time.sleep(0.002)
print(i, "connections opened")
PY
$PY flood.py "$coord" "$data" "$status" > flood.out 2>&1 &
FLOOD_PID=$!
sleep 1.5
# Monitoring answers during the flood.
if ! $PY - "$status" <<'PY'
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
t0 = time.time()
s = socket.create_connection((host, int(port)), timeout=3)
s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = s.recv(64)
sys.exit(0 if data.startswith(b"HTTP/1.1 200") and time.time() - t0 < 3 else 1)
PY
then fail "the status page did not answer during the flood"; fi
wait "$FLOOD_PID"; FLOOD_PID=
timeout 120 tail --pid="$JOB_PID" -f /dev/null
wait "$JOB_PID"; rc=$?; JOB_PID=
[ $rc -eq 0 ] || { fail "the job exited $rc under the flood:"; grep -E 'error|Too many' "$WORK/job.err" | head -5; }
n=$(ls -d run/checkpoints/step-* 2>/dev/null | grep -vc '\.tmp$')
[ "$n" -eq 8 ] || fail "expected 8 checkpoints, found $n"
size=$(du -sk run/logs | cut -f1)
[ "$size" -lt 512 ] || fail "logs grew to ${size} KiB under the flood"
echo "flood: $(cat flood.out); job exit $rc; $n checkpoints; logs ${size} KiB"
grep -h "refused a connection" run/logs/*.log | head -n 2 | cut -c1-200
cli_end "the job survived the flood"
