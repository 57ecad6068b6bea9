#!/usr/bin/env bash
# Chaos test of an elastic `bsp` job: starts `ptrain run` (2 servers, 2 workers, processes launch)
# on a small model, then for DURATION seconds kills, stops and starts random roles at random
# times; finally stops the job (SIGTERM: a checkpoint), checks the data ledger (`ptrain
# check-ledger`: every window of each completed data epoch exactly once) and that the final
# checkpoint loads (`ptrain inspect`), and prints a summary: events injected by kind, recovery
# time per kind (from the injection to the first step applied after the job recorded the
# event in its ledger: median, max), windows doubled and
# missing, and steps lost to server/coordinator restarts. Exit 0 when the ledger and the
# checkpoint hold.
#
# Usage: scripts/chaos.sh [--duration SECONDS] [--seed N] [--dir DIR] [--ptrain BIN]
#   defaults: 600 s, seed 1, a fresh folder under /tmp, build/cli/ptrain.
# Kinds: kill-worker (SIGKILL), stop-worker (SIGSTOP past the peer timeout, then SIGCONT),
# join-worker (`ptrain worker --run-dir`), leave-worker (SIGTERM to a joined worker),
# kill-server (SIGKILL), kill-coordinator (SIGKILL). Only the processes this script started are
# touched (the launcher's children and the workers it started itself).
set -euo pipefail

DURATION=600
SEED=1
DIR=""
HERE="$(cd "$(dirname "$0")" && pwd)"
PTRAIN="$HERE/../build/cli/ptrain"
PY=/usr/bin/python3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --dir) DIR="$2"; shift 2 ;;
    --ptrain) PTRAIN="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -x "$PTRAIN" ]] || { echo "chaos.sh: no ptrain binary at $PTRAIN (build it, or pass --ptrain)" >&2; exit 2; }
[[ -n "$DIR" ]] || DIR="$(mktemp -d /tmp/ptrain-chaos.XXXXXX)"
mkdir -p "$DIR"
cd "$DIR"
RANDOM=$SEED
PEER_TIMEOUT=2

# A corpus: the fortunes if installed, else generated text.
if [[ ! -f data/manifest.json ]]; then
  if [[ -d /usr/share/games/fortunes ]]; then
    head -c 300000 /usr/share/games/fortunes/fortunes > corpus.txt
  else
    for i in $(seq 1 20000); do echo "line $i: the quick brown fox $((i * 7919 % 1000))"; done > corpus.txt
  fi
  "$PTRAIN" prepare --input corpus.txt --tokenizer byte --val-fraction 0 --output data 2> prepare.log
fi
cat > job.yaml <<EOF
run: {dir: run, seed: $SEED, threads: 1}
data: {train: data, tokenizer: byte}
model: {seq_len: 32, n_layer: 2, n_head: 2, n_embd: 32}
train: {steps: 100000000, batch_size: 8, micro_batch: 2, eval_every: 0, log_every: 1}
cluster: {workers: 2, servers: 2, launch: processes, heartbeat_s: 0.5, peer_timeout_s: $PEER_TIMEOUT, max_restarts: 1000000}
checkpoint: {every_steps: 50, keep: 3, resume: auto}
EOF
rm -rf run
"$PTRAIN" run job.yaml > run.out 2> run.err &
LAUNCHER=$!
JOINED=()   # pids of workers this script started
EVENTS="$DIR/events.tsv"
: > "$EVENTS"
cleanup() {
  for p in "${JOINED[@]:-}"; do [[ -n "$p" ]] && kill -KILL "$p" 2>/dev/null || true; done
  kill -KILL "$LAUNCHER" 2>/dev/null || true
}
trap cleanup EXIT

steps() { [[ -f run/train.jsonl ]] && wc -l < run/train.jsonl || echo 0; }
children() { cat /proc/"$LAUNCHER"/task/*/children 2>/dev/null || true; }
role_pids() {  # pids of the launcher's children of role $1 (coordinator|server|worker)
  for c in $(children); do
    if tr '\0' ' ' < /proc/"$c"/cmdline 2>/dev/null | grep -q "ptrain $1 "; then echo "$c"; fi
  done
}
pick() { local a=("$@"); [[ ${#a[@]} -gt 0 ]] && echo "${a[RANDOM % ${#a[@]}]}"; }
now() { date +%s.%N; }  # UNIX seconds, as the ledger's times
# Recovery of an injection at UNIX time $1 whose ledger event is $2 (lost, join, leave,
# restart): seconds from the injection to the first step applied after the job recorded that
# event (both read from RUN_DIR/ledger.jsonl, whose lines carry UNIX times); "timeout" after 120 s.
recovery() {
  "$PY" - "$1" "$2" run/ledger.jsonl <<'PYEOF'
import json, sys, time
t0, kind, path = float(sys.argv[1]), sys.argv[2], sys.argv[3]
deadline = time.time() + 120
while time.time() < deadline:
    event_at = None
    try:
        for line in open(path):
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if event_at is None and j.get("event") == kind and j["time"] >= t0 - 0.5:
                event_at = j["time"]
            elif event_at is not None and "event" not in j and j["time"] >= event_at:
                print(f"{j['time'] - t0:.3f}")
                sys.exit(0)
    except FileNotFoundError:
        pass
    time.sleep(0.05)
print("timeout")
PYEOF
}

until [[ $(steps) -ge 5 ]]; do
  kill -0 "$LAUNCHER" 2>/dev/null || { echo "chaos.sh: the job exited early; see $DIR/run.err" >&2; exit 1; }
  sleep 0.2
done
echo "chaos.sh: job running in $DIR (launcher pid $LAUNCHER); injecting faults for $DURATION s"
END=$((SECONDS + DURATION))
while [[ $SECONDS -lt $END ]]; do
  sleep $((2 + RANDOM % 7))
  kill -0 "$LAUNCHER" 2>/dev/null || { echo "chaos.sh: the job exited; see $DIR/run.err" >&2; exit 1; }
  kinds=(kill-worker stop-worker join-worker join-worker kill-server kill-coordinator)
  [[ ${#JOINED[@]} -gt 0 ]] && kinds+=(leave-worker)
  kind=$(pick "${kinds[@]}")
  t0=$(now); step0=$(tail -1 run/train.jsonl | "$PY" -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])' 2>/dev/null || echo 0)
  case "$kind" in
    kill-worker)
      # Not below one worker: keep the job training (waiting is another test).
      w=$(pick $(role_pids worker) "${JOINED[@]:-}"); [[ -z "$w" ]] && continue
      [[ $(( $(role_pids worker | wc -l) + ${#JOINED[@]} )) -le 1 ]] && continue
      kill -KILL "$w" 2>/dev/null || continue ;;
    stop-worker)
      [[ $(( $(role_pids worker | wc -l) + ${#JOINED[@]} )) -le 1 ]] && continue
      w=$(pick $(role_pids worker)); [[ -z "$w" ]] && continue
      kill -STOP "$w"; (sleep $((PEER_TIMEOUT + 2)); kill -CONT "$w" 2>/dev/null || true) & ;;
    join-worker)
      "$PTRAIN" worker --run-dir run --threads 1 >> joined.log 2>&1 &
      JOINED+=($!) ;;
    leave-worker)
      w=$(pick "${JOINED[@]}"); kill -TERM "$w" 2>/dev/null || true ;;
    kill-server)
      s=$(pick $(role_pids server)); [[ -z "$s" ]] && continue
      kill -KILL "$s" ;;
    kill-coordinator)
      c=$(role_pids coordinator | head -1); [[ -z "$c" ]] && continue
      kill -KILL "$c" ;;
  esac
  case "$kind" in
    kill-worker|stop-worker) ev=lost ;; join-worker) ev=join ;; leave-worker) ev=leave ;;
    *) ev=restart ;;
  esac
  r=$(recovery "$t0" "$ev")
  printf '%s\t%s\t%s\n' "$kind" "$r" "$step0" >> "$EVENTS"
  echo "chaos.sh: $kind at step $step0: first step applied after the job recorded it: $r s"
  # Forget joined workers that exited.
  alive=(); for p in "${JOINED[@]:-}"; do [[ -n "$p" ]] && kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  JOINED=("${alive[@]:-}"); [[ -z "${JOINED[0]:-}" ]] && JOINED=()
done

echo "chaos.sh: stopping the job (SIGTERM: a checkpoint)"
for p in "${JOINED[@]:-}"; do [[ -n "$p" ]] && kill -TERM "$p" 2>/dev/null || true; done
kill -TERM "$LAUNCHER"
rc=0; wait "$LAUNCHER" || rc=$?
trap - EXIT
for p in "${JOINED[@]:-}"; do [[ -n "$p" ]] && kill -KILL "$p" 2>/dev/null || true; done
echo "chaos.sh: ptrain run exited $rc"
ledger_rc=0; "$PTRAIN" check-ledger run --json > ledger.json 2> ledger.err || ledger_rc=$?
inspect_rc=0; "$PTRAIN" inspect run/checkpoints/latest > inspect.txt 2>&1 || inspect_rc=$?
"$PY" - "$EVENTS" ledger.json run/train.jsonl <<'EOF'
import json, statistics, sys
events, ledger_json, train = sys.argv[1:4]
by = {}
for line in open(events):
    kind, r, step = line.rstrip("\n").split("\t")
    if r != "timeout":
        by.setdefault(kind, []).append(float(r))
print("| kind | events | recovery median (s) | recovery max (s) |")
print("|---|---|---|---|")
for kind in sorted(by):
    v = by[kind]
    print(f"| {kind} | {len(v)} | {statistics.median(v):.2f} | {max(v):.2f} |")
c = json.load(open(ledger_json))
# Steps lost to restarts: train.jsonl is appended across restarts, so a step that goes back
# marks a resume; the steps between it and the highest step before are run again.
lost, prev = 0, 0
for line in open(train):
    j = json.loads(line)
    if "loss" not in j:
        continue
    if j["step"] <= prev:
        lost += prev - (j["step"] - 1)
    prev = j["step"]
print(f"windows doubled: {c['doubled']}, missing: {c['missing']}; complete data epochs checked: "
      f"{len(c['complete_epochs'])}; final step {c['last_step']}; ledger {'OK' if c['ok'] else 'FAILED'}")
print(f"steps lost to server/coordinator restarts: {lost} (ledger events: {c['events']})")
EOF
echo "chaos.sh: ledger check exit $ledger_rc, final checkpoint inspect exit $inspect_rc; files in $DIR"
[[ $rc -eq 0 && $ledger_rc -eq 0 && $inspect_rc -eq 0 ]]
