#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the `slurm` tests and for trying the job
# templates: munged, slurmctld and slurmd (Debian's slurm-wlm 22.05) started directly as daemons,
# as root, without systemd. Idempotent: `up` on a running cluster with the same configuration does
# nothing; `down` when nothing runs does nothing.
#
#   scripts/slurm/local-cluster.sh up       start (installs slurm-wlm and munge when missing)
#   scripts/slurm/local-cluster.sh down     cancel every job, stop the daemons this script started
#   scripts/slurm/local-cluster.sh status   "up" (exit 0) or "down" (exit 1), and sinfo
#
# Settings (environment): PTRAIN_SLURM_DIR (state, logs, pid files; default /tmp/ptrain-slurm),
# PTRAIN_SLURM_CPUS (CPUs the node advertises; default max(8, nproc): more tasks than cores run at
# once), PTRAIN_SLURM_TIMEOUT (seconds to wait for the node; default 60).
#
# Why the configuration looks the way it does:
#   - no cgroups (proctrack/linuxproc, task/none): nothing to set up in a container;
#   - the node claims more CPUs than it has and SlurmdParameters=config_overrides keeps it from
#     being drained for that; EnforcePartLimits=ALL refuses an impossible request at once instead
#     of leaving it pending forever;
#   - MpiDefault=pmix: Debian's Open MPI speaks PMIx only (srun --mpi=pmi2 or none cannot start
#     an MPI rank);
#   - fast scheduling for tests: batch_sched_delay=0 and 2 s scheduler passes; cred_expire=20
#     makes a requeued job eligible again after 21 s (the default waits 121 s);
#   - jobcomp/filetxt keeps one line per finished job (there is no accounting database).
set -euo pipefail

DIR=${PTRAIN_SLURM_DIR:-/tmp/ptrain-slurm}
NCPU=$(nproc)
CPUS=${PTRAIN_SLURM_CPUS:-$(( NCPU > 8 ? NCPU : 8 ))}
TIMEOUT=${PTRAIN_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
MARK="# written by ptrain scripts/slurm/local-cluster.sh"

say() { echo "local-cluster: $*" >&2; }
die() { say "error: $*"; exit 1; }

# A pid file names a live process that is not a zombie (PID 1 in containers may reap late).
alive() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1  # a daemon removes its pid file as it exits
  [ -n "$pid" ] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

# Stops the daemon of a pid file: TERM, up to 10 s, then KILL. Checks the command line first so
# that a reused pid is never signalled.
stop() {
  local name=$1 pf=$2 pid
  alive "$pf" || { rm -f "$pf"; return 0; }
  pid=$(cat "$pf" 2>/dev/null) || return 0
  if ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name"; then
    say "$name: pid $pid is not $name; left alone"; rm -f "$pf"; return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do alive "$pf" || break; sleep 0.1; done
  alive "$pf" && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$pf"
}

ours() { [ -f "$CONF" ] && grep -qF "$MARK" "$CONF"; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1 || true; }

conf_text() {
  local host
  host=$(hostname -s)
  cat <<CONF
$MARK
ClusterName=ptrain-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=20
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MpiDefault=pmix
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
OverTimeLimit=0
WaitTime=0
MessageTimeout=10
JobRequeue=1
EnforcePartLimits=ALL
NodeName=${host} NodeHostname=${host} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (the daemons run as root here)"
  if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends slurm-wlm munge >/dev/null 2>&1 \
      || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null 2>&1 &&
           DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
             --no-install-recommends slurm-wlm munge >/dev/null 2>&1; } \
      || die "cannot install slurm-wlm and munge with apt-get"
  fi
  mkdir -p "$DIR"/state "$DIR"/spool "$DIR"/log

  # munged runs as the munge user with its key 0400 and a world-searchable socket folder.
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --force --keyfile=/etc/munge/munge.key >/dev/null 2>&1 \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  fi
  chown -R munge:munge /etc/munge && chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    runuser -u munge -- /usr/sbin/munged || die "munged did not start"
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munged does not answer"
    cp /run/munge/munged.pid "$DIR/munged.pid"  # started here: `down` stops it
  fi

  if [ -f "$CONF" ] && ! ours; then
    cp -n "$CONF" "$CONF.before-ptrain"
    say "kept the existing $CONF as $CONF.before-ptrain"
  fi
  mkdir -p /etc/slurm
  local changed=0 text
  text=$(conf_text)
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$text" ]; then
    printf '%s\n' "$text" >"$CONF"
    chmod 644 "$CONF"
    changed=1
  fi
  if [ $changed = 1 ]; then
    stop slurmd "$DIR/slurmd.pid"
    stop slurmctld "$DIR/slurmctld.pid"
  fi
  # -c: a fresh controller forgets earlier jobs; without -D both daemonize and write pid files.
  alive "$DIR/slurmctld.pid" || slurmctld -c -i || die "slurmctld did not start: $DIR/log/slurmctld.log"
  alive "$DIR/slurmd.pid" || slurmd -N "$(hostname -s)" || die "slurmd did not start: $DIR/log/slurmd.log"

  local deadline=$(( $(date +%s) + TIMEOUT )) st=""
  while [ "$(date +%s)" -lt "$deadline" ]; do
    st=$(node_state)
    case "$st" in
      idle|mixed|allocated|completing) say "up: node $(hostname -s) $st, $CPUS CPUs"; return 0 ;;
      down*|drain*|fail*) scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
  die "the node is not ready after ${TIMEOUT} s (state '${st}')"
}

down() {
  if alive "$DIR/slurmctld.pid" && ours; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// }" ]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel --full --signal=KILL $jobs 2>/dev/null || true
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 20); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop slurmd "$DIR/slurmd.pid"
  stop slurmctld "$DIR/slurmctld.pid"
  stop munged "$DIR/munged.pid"
  say "down"
}

status() {
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && ours; then
    echo "up"
    sinfo 2>/dev/null || true
    return 0
  fi
  echo "down"
  return 1
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
