# Shared by the job-level shell tests in tests/cli (sourced, not run): a scratch folder that is
# removed on every exit path together with the job a test started, failure counting, and a small
# prepared byte-level corpus.
#
#   . "$(dirname "$0")/lib.sh"
#   cli_begin NAME "$1"        # PTRAIN (absolute), WORK (fresh, the current folder), failures=0
#   cli_cleanup() { ...; }     # optional: run on exit after the job is killed, before WORK goes
#   prepare_corpus 60          # WORK/data: 60 short documents, byte tokenizer, 20% validation
#   JOB_PID=...                # a job started with setsid: its process group is killed on exit
#   fail "what went wrong"     # counted; cli_end exits 1 when any was counted
#   cli_end "all passed"

cli_begin() {
  PTRAIN=$(realpath "${2:?usage: $1 PTRAIN}")
  WORK=$(mktemp -d "/tmp/ptrain-$1-XXXXXX")
  failures=0
  JOB_PID=
  trap cli_exit EXIT
  cd "$WORK" || exit 1
}

cli_exit() {
  [ -n "${JOB_PID:-}" ] && kill -KILL -- "-$JOB_PID" 2>/dev/null
  if declare -F cli_cleanup >/dev/null; then cli_cleanup; fi
  cd / && rm -rf "$WORK"
}

fail() {
  echo "FAIL $*"
  failures=$((failures + 1))
}

# prepare_corpus DOCS: WORK/data, prepared from DOCS one-line documents separated by '%'.
prepare_corpus() {
  mkdir -p "$WORK/corpus"
  for i in $(seq 1 "$1"); do
    printf 'document %d: the quick brown fox jumps over the lazy dog, %d times\n%%\n' "$i" "$i"
  done > "$WORK/corpus/a.txt"
  "$PTRAIN" prepare --input "$WORK/corpus" --doc-separator % --tokenizer byte --val-fraction 0.2 \
    --seed 3 --output "$WORK/data" >/dev/null 2>&1 || { echo "setup: prepare failed"; exit 1; }
}

# cli_end MESSAGE: exit 1 naming the count when anything failed; else print MESSAGE.
cli_end() {
  if [ "$failures" -ne 0 ]; then
    echo "$failures failure(s)"
    exit 1
  fi
  echo "$1"
}
