#!/usr/bin/env bash
# Install (if needed) and start a single-node Slurm TEST cluster on this machine: munged, slurmctld and
# slurmd on localhost, no cgroups, no systemd, no accounting. Idempotent: when the cluster already
# answers, it only checks it. Root only (it may install packages and starts daemons).
#
# Self-contained, so that a Slurm the machine already has (its /etc/slurm, its state in /var/spool, its
# daemons on ports 6817/6818, another ClusterName) neither confuses it nor is touched by it: its config,
# state, spool, pid and log files all live under $AUTOMODEL_SLURM_DIR (default
# /var/lib/automodel-test-slurm), ClusterName=automodel-test, ports 6917/6918. Clients find it through
# SLURM_CONF=$AUTOMODEL_SLURM_DIR/slurm.conf (the tests set it; the last line of the output says so).
# Only munged is shared with the machine (one per machine; started if it is not running).
#
#   automodel-plugins/automodel-slurm/ci/start_slurm.sh          # start (or check) the cluster
#   automodel-plugins/automodel-slurm/ci/start_slurm.sh stop     # stop its slurmd and slurmctld (--all: munged too)
#
# Partitions: `debug` (default): this machine. `ghosts`: this machine plus three nodes that never
# come up (State=DOWN), so that multi-node batch scripts can be checked with `sbatch --test-only`.
# Tuned for tests: a requeued job restarts in ~12 s (cred_expire=10, sched_interval=2), KillWait=5.
set -euo pipefail

BASE=${AUTOMODEL_SLURM_DIR:-/var/lib/automodel-test-slurm}
CLUSTER=automodel-test
CONF="$BASE/slurm.conf"
RUN_DIR="$BASE/run"
LOG_DIR="$BASE/log"
STATE="$BASE/state"
SPOOL="$BASE/spool"
export SLURM_CONF="$CONF"  # every scontrol / sinfo below talks to this cluster, never the machine's own

log() { echo "start_slurm: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages, writes $BASE and starts daemons)"

stop_pid() {  # stop the daemon whose pid file is $1 (only that process)
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

if [ "${1:-}" = stop ]; then
    stop_pid "$RUN_DIR/slurmd.pid"
    stop_pid "$RUN_DIR/slurmctld.pid"
    [ "${2:-}" = --all ] && stop_pid /run/munge/munged.pid
    log "stopped the test cluster's slurmd and slurmctld${2:+ and munged}"
    exit 0
fi

t0=$(date +%s.%N)

# 1. packages ----------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
    # Where a real systemd runs (a CI runner VM), the packages just started their own services with the
    # machine's /etc/slurm: stop those we caused (a Slurm that was there before is left alone).
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        systemctl stop slurmd slurmctld >/dev/null 2>&1 || true
    fi
fi

# 2. munge -------------------------------------------------------------------------------------
if ! munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -f /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || create-munge-key -f >/dev/null; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n </dev/null | unmunge >/dev/null 2>&1 || die "munged did not start (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf --------------------------------------------------------------------------------
HOST=$(hostname -s)
NODE_LINE=$(slurmd -C | head -n 1)                      # NodeName=<host> CPUs=.. Boards=.. ... RealMemory=..
NODE_LINE=$(sed -E 's/ RealMemory=[0-9]+//' <<<"$NODE_LINE")
MEM=$(( $(free -m | awk '/^Mem:/ {print $2}') * 9 / 10 ))
CPUS=$(sed -nE 's/.* CPUs=([0-9]+).*/\1/p' <<<"$NODE_LINE")
mkdir -p "$BASE" "$RUN_DIR" "$LOG_DIR" "$STATE" "$SPOOL"
# state written by a cluster of another name (an older layout of this script) would stop slurmctld with
# "CLUSTER NAME MISMATCH": it is only this test cluster's own queue, so start it afresh
if [ -f "$STATE/clustername" ] && [ "$(cat "$STATE/clustername")" != "$CLUSTER" ]; then
    log "state in $STATE belongs to cluster '$(cat "$STATE/clustername")', not '$CLUSTER': clearing it"
    stop_pid "$RUN_DIR/slurmd.pid"
    stop_pid "$RUN_DIR/slurmctld.pid"
    find "$STATE" -mindepth 1 -delete
fi
NEW_CONF=$(cat <<CONF
# written by automodel-slurm ci/start_slurm.sh: a single-node test cluster, separate from any other
# Slurm on this machine (own state, spool, pid and log files under $BASE; own ports and name)
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
KillWait=5
EnforcePartLimits=ALL
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
$NODE_LINE RealMemory=$MEM NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
)
changed=0
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$NEW_CONF" ]; then
    printf '%s\n' "$NEW_CONF" >"$CONF"
    changed=1
fi

# 4. daemons -----------------------------------------------------------------------------------
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then
    stop_pid "$RUN_DIR/slurmd.pid"
    stop_pid "$RUN_DIR/slurmctld.pid"
fi
if ! alive "$RUN_DIR/slurmctld.pid"; then
    setsid nohup slurmctld -D -i -f "$CONF" >>"$LOG_DIR/slurmctld.out" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/slurmctld.pid"
    log "started slurmctld (pid $(cat "$RUN_DIR/slurmctld.pid"))"
fi
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
scontrol ping | grep -q UP || die "slurmctld does not answer; see $LOG_DIR/slurmctld.log"
if ! alive "$RUN_DIR/slurmd.pid"; then
    setsid nohup slurmd -D -f "$CONF" >>"$LOG_DIR/slurmd.out" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/slurmd.pid"
    log "started slurmd (pid $(cat "$RUN_DIR/slurmd.pid"))"
fi

# 5. wait for the node -------------------------------------------------------------------------
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)
    case "$state" in idle|mixed|allocated|completing) break ;; esac
    sleep 0.1
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    down*|drain*)  # e.g. left DOWN by an earlier unclean stop
        scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        sleep 1; state=$(sinfo -h -n "$HOST" -o %T | head -n 1) ;;
esac
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $HOST is '$state', not idle; see $LOG_DIR/slurmd.log and $LOG_DIR/slurmctld.log" ;;
esac
t1=$(date +%s.%N)
log "cluster up: node $HOST ($CPUS CPUs) is $state, partitions: $(sinfo -h -o %P | tr '\n' ' ')($(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s)"
log "use it with: export SLURM_CONF=$CONF"
