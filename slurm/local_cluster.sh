#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying the sbatch templates.
#
#   slurm/local_cluster.sh up       # install slurm-wlm + munge if missing, start munged, slurmctld, slurmd
#   slurm/local_cluster.sh status   # daemons, node state, queue
#   slurm/local_cluster.sh env      # prints `export SLURM_CONF=...` for sbatch/squeue/scontrol
#   slurm/local_cluster.sh down     # cancels the jobs left, stops the daemons this script started
#
# Clients need SLURM_CONF=$GVC_SLURM_DIR/slurm.conf (default /tmp/gvc-slurm/slurm.conf).
# Settings (environment):
#   GVC_SLURM_DIR           state, spool, logs, slurm.conf           (default /tmp/gvc-slurm)
#   GVC_SLURM_CTLD_PORT     slurmctld port                           (default 6817)
#   GVC_SLURMD_PORT         slurmd port                              (default 6818)
#   GVC_SLURM_UP_TIMEOUT    seconds to wait for the node to be idle  (default 60)
#
# Exit status: 0 done; 1 failed (the reason and the daemons' log tails on stderr); 3 SLURM cannot
# be installed or started here (not root, no apt-get, apt failed): one line on stdout says why.
#
# No systemd is needed: the daemons are started by hand, /run/munge is made by hand. No cgroups
# are needed: proctrack/linuxproc, task/none. The node is declared with what `slurmd -C` reports;
# SelectType=select/cons_tres with CR_CPU, so each CPU is a schedulable unit (2 one-CPU tasks fit
# on a 2-CPU machine). A job asking for more CPUs than the node has stays pending forever rather
# than failing: ask for at most what `sinfo -o %c` shows. Accounting is off, so there is no sacct:
# use `scontrol show job` and `squeue`.
set -euo pipefail

STATE=${GVC_SLURM_DIR:-/tmp/gvc-slurm}
CTLD_PORT=${GVC_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${GVC_SLURMD_PORT:-6818}
UP_TIMEOUT=${GVC_SLURM_UP_TIMEOUT:-60}
CONF=$STATE/slurm.conf
NODE=$(hostname -s)
export SLURM_CONF=$CONF
export PATH=$PATH:/usr/sbin:/sbin

log() { echo "local_cluster: $*" >&2; }
die() {
    log "error: $*"
    for f in "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" "$STATE/log/munged.log"; do
        [[ -s $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
have_slurm() { [[ -x /usr/sbin/slurmctld && -x /usr/sbin/slurmd && -x /usr/sbin/munged ]] && command -v sinfo >/dev/null; }
munge_ok() { command -v munge >/dev/null && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

install_slurm() {
    have_slurm && return 0
    if [[ $(id -u) != 0 ]]; then
        echo "SLURM is not installed and installing Debian's slurm-wlm and munge needs root (running as $(id -un))"
        exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        echo "SLURM is not installed and there is no apt-get here to install Debian's slurm-wlm and munge"
        exit 3
    fi
    log "installing slurm-wlm and munge from Debian"
    local t0=$SECONDS
    # An apt failure (no network, no such package) means SLURM cannot be installed here: exit 3.
    if ! apt-get update -qq >"$STATE/log/apt.log" 2>&1; then
        echo "SLURM is not installed and apt-get update failed: $(grep -v '^\s*$' "$STATE/log/apt.log" | tail -n 1)"
        exit 3
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
        >>"$STATE/log/apt.log" 2>&1; then
        echo "SLURM is not installed and apt-get install slurm-wlm munge failed: $(grep -v '^\s*$' "$STATE/log/apt.log" | tail -n 1)"
        exit 3
    fi
    have_slurm || die "slurm-wlm installed but slurmctld/slurmd/munged/sinfo still missing"
    log "installed in $((SECONDS - t0)) s"
}

start_munge() {
    if munge_ok; then return 0; fi
    [[ $(id -u) == 0 ]] || { echo "munged is not running and starting it needs root (running as $(id -un))"; exit 3; }
    local user=munge
    id munge >/dev/null 2>&1 || user=root
    if [[ ! -s /etc/munge/munge.key ]]; then
        install -d -m 0700 -o "$user" -g "$user" /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown "$user:$user" /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o "$user" -g "$user" -m 0755 /run/munge
    install -d -o "$user" -g "$user" -m 0700 /var/lib/munge /var/log/munge 2>/dev/null || true
    local args=(--force)   # --force: start even over a stale socket left by a killed munged
    if [[ $user == root ]]; then
        /usr/sbin/munged "${args[@]}" >"$STATE/log/munged.log" 2>&1 || die "munged did not start"
    else
        runuser -u munge -- /usr/sbin/munged "${args[@]}" >"$STATE/log/munged.log" 2>&1 || die "munged did not start"
    fi
    touch "$STATE/munged.started-here"
    local i
    for i in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged started but munge -n | unmunge fails"
}

write_conf() {
    local node_line
    node_line=$(slurmd -C 2>/dev/null | head -n 1) || true
    [[ $node_line == NodeName=* ]] || die "slurmd -C printed no node line: '$node_line'"
    # slurmd -C names the node after the short hostname; pin its address to the loopback.
    node_line="NodeName=$NODE NodeAddr=127.0.0.1 NodeHostname=$NODE ${node_line#NodeName=* }"
    cat >"$CONF" <<EOF
# Written by slurm/local_cluster.sh: a single-node test cluster, no systemd, no cgroups.
ClusterName=gvc-local
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
# A requeued job may start again only once the job credential expired (default 120 s).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=120
SlurmdTimeout=30
InactiveLimit=0
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node_line State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

cmd_up() {
    mkdir -p "$STATE/log" "$STATE/state" "$STATE/spool"
    install_slurm
    start_munge
    if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid"; then
        log "already up ($CONF)"
    else
        if [[ $(id -u) != 0 ]]; then
            echo "SLURM is installed but starting slurmctld and slurmd (which launches jobs) needs root (running as $(id -un))"
            exit 3
        fi
        # A half-started cluster (one daemon left): stop it and start both afresh.
        stop_daemons
        for p in "$CTLD_PORT" "$SLURMD_PORT"; do
            port_busy "$p" && die "port $p is in use (another slurm?); set GVC_SLURM_CTLD_PORT/GVC_SLURMD_PORT"
        done
        write_conf
        # -c: start from a clean state (no jobs left from an earlier run).
        /usr/sbin/slurmctld -c -f "$CONF" || die "slurmctld did not start"
        /usr/sbin/slurmd -f "$CONF" -N "$NODE" || die "slurmd did not start"
    fi
    local t0=$SECONDS state=""
    while ((SECONDS - t0 < UP_TIMEOUT)); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated|completing) log "node $NODE is $state ($CONF)"; return 0 ;;
        esac
        pid_alive "$STATE/slurmctld.pid" || die "slurmctld exited"
        pid_alive "$STATE/slurmd.pid" || die "slurmd exited"
        sleep 0.2
    done
    die "node $NODE not idle after ${UP_TIMEOUT} s (state: '${state:-no answer from slurmctld}')"
}

stop_pidfile() {  # stop_pidfile FILE NAME: SIGTERM, wait up to 10 s, then SIGKILL
    local f=$1 name=$2 pid i
    pid_alive "$f" || { rm -f "$f"; return 0; }
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || { rm -f "$f"; return 0; }; sleep 0.1; done
    log "$name ($pid) did not stop on SIGTERM; killing it"
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

stop_daemons() {
    stop_pidfile "$STATE/slurmd.pid" slurmd
    stop_pidfile "$STATE/slurmctld.pid" slurmctld
}

cmd_down() {
    if [[ -f $CONF ]] && pid_alive "$STATE/slurmctld.pid"; then
        local jobs i
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [[ -n $jobs ]]; then
            log "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for i in $(seq 150); do   # KillWait=5: all should be gone well within 15 s
                [[ -z $(squeue -h -t running,completing -o %i 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    stop_daemons
    if [[ -f $STATE/munged.started-here ]]; then
        # munged is shared by every SLURM daemon on the machine: leave it to others still running.
        if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
            log "munged left running: other slurm daemons use it"
        else
            stop_pidfile /run/munge/munged.pid munged
        fi
        rm -f "$STATE/munged.started-here"
    fi
    log "down"
}

cmd_status() {
    local d
    for d in slurmctld slurmd; do
        if pid_alive "$STATE/$d.pid"; then echo "$d: running (pid $(cat "$STATE/$d.pid"))"; else echo "$d: stopped"; fi
    done
    if munge_ok; then echo "munged: running"; else echo "munged: stopped"; fi
    echo "SLURM_CONF=$CONF"
    if pid_alive "$STATE/slurmctld.pid"; then
        sinfo -N -o "%N %T %c %m" 2>/dev/null || true
        squeue 2>/dev/null || true
    fi
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 {up|down|status|env}" >&2; exit 2 ;;
esac
