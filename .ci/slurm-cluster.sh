#!/usr/bin/env bash
# Start or stop a one-node Slurm cluster on localhost for the Slurm tests.
#
# Usage: .ci/slurm-cluster.sh start|stop|status [STATE_DIR]
#
# start installs the Debian packages that are missing (slurm-wlm, munge, slurmdbd,
# mariadb-server) and writes every config file into STATE_DIR. It then starts munged (unless
# a working one is already running), MariaDB, slurmdbd, slurmctld and `slurmd -N localhost`,
# registers the cluster, account and users with sacctmgr and waits until the node is idle.
# stop cancels the cluster's jobs and ends exactly the daemons that start recorded in
# STATE_DIR/pids. The database and the controller state stay in STATE_DIR, so job ids keep
# counting up across restarts; delete STATE_DIR after `stop` for a fresh cluster.
#
# Outside STATE_DIR, start changes only /etc/slurm/slurm.conf, which it replaces by a symlink
# to STATE_DIR/slurm.conf so that sinfo, sbatch and srun work without SLURM_CONF. Any file
# that was there is moved to STATE_DIR/etc-slurm.conf.orig, and stop puts it back.
#
# Must run as root. All daemons listen on 127.0.0.1 only.
#
# Environment:
#   CKPTIO_SLURM_DIR        STATE_DIR when no argument is given (default /tmp/ckptio-slurm)
#   CKPTIO_SLURM_ACCOUNT    account created for the jobs (default ckptio)
#   CKPTIO_SLURM_PARTITION  partition name (default debug)
#   CKPTIO_SLURM_FEATURE    node feature, for sbatch --constraint (default cpu)
#   CKPTIO_SLURM_DB_PORT    MariaDB TCP port on 127.0.0.1 (default 3306)
#   CKPTIO_SLURM_TIMEOUT    seconds to wait for each daemon and for the node (default 120)
set -euo pipefail

readonly CLUSTER_NAME=ckptio
readonly NODE_NAME=localhost
readonly SLURMCTLD_PORT=6817
readonly SLURMD_PORT=6818
readonly SLURMDBD_PORT=6819
readonly DAEMONS_STOP_ORDER=(slurmd slurmctld slurmdbd mariadbd munged)

ACCOUNT="${CKPTIO_SLURM_ACCOUNT:-ckptio}"
PARTITION="${CKPTIO_SLURM_PARTITION:-debug}"
FEATURE="${CKPTIO_SLURM_FEATURE:-cpu}"
DB_PORT="${CKPTIO_SLURM_DB_PORT:-3306}"
TIMEOUT="${CKPTIO_SLURM_TIMEOUT:-120}"
ETC_SLURM_CONF=/etc/slurm/slurm.conf

log() { echo "slurm-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    echo "usage: $0 start|stop|status [STATE_DIR]" >&2
    exit 2
}

# Print the last lines of every log in STATE_DIR/log, for a failed start.
show_logs() {
    local file
    for file in "$STATE"/log/*.log; do
        [[ -f $file ]] || continue
        echo "----- $file (last 20 lines)" >&2
        tail -n 20 "$file" >&2 || true
    done
}

fail_start() {
    log "error: $*"
    show_logs
    die "start failed; run '$0 stop $STATE' to end the daemons started so far"
}

# True when PID is alive and its command name is NAME, so a reused PID is never signalled.
pid_is() {
    local pid=$1 name=$2 comm
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}

recorded_pid() { cat "$STATE/pids/$1.pid" 2>/dev/null || true; }

is_running() { pid_is "$(recorded_pid "$1")" "$1"; }

# Copy the PID that a daemon wrote to its own pid file into STATE_DIR/pids, waiting for it.
record_pid() {
    local name=$1 pidfile=$2 deadline=$((SECONDS + TIMEOUT)) pid
    while ((SECONDS < deadline)); do
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if pid_is "$pid" "$name"; then
            echo "$pid" >"$STATE/pids/$name.pid"
            log "$name started, pid $pid"
            return 0
        fi
        sleep 0.5
    done
    fail_start "$name did not start within ${TIMEOUT}s (no live process in $pidfile)"
}

port_in_use() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }

require_free_port() {
    local port=$1 owner=$2
    if port_in_use "$port"; then
        fail_start "TCP port $port, needed by $owner, is already in use; stop whatever listens there (ss -ltnp 'sport = :$port')"
    fi
}

# Run CMD... until it succeeds or TIMEOUT seconds pass. WHAT names it in the error.
wait_for() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_start "timed out after ${TIMEOUT}s waiting for $what"
        sleep 1
    done
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmdbd >/dev/null || missing+=(slurmdbd)
    command -v mariadbd >/dev/null || missing+=(mariadb-server)
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

make_dirs() {
    mkdir -p "$STATE"/{pids,run,log,slurmctld,slurmd,mysql}
    chmod 0755 "$STATE"
    chown slurm:slurm "$STATE"/{run,log,slurmctld}
    chown mysql:mysql "$STATE/mysql"
    chmod 0700 "$STATE/pids"
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged is already running; using it"
        return 0
    fi
    [[ -f /etc/munge/munge.key ]] || fail_start "/etc/munge/munge.key is missing; reinstall the munge package"
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged
    record_pid munged /run/munge/munged.pid
    wait_for "munged to answer" sh -c 'munge -n </dev/null | unmunge'
}

# Random password for the slurm database user, made once per STATE_DIR.
db_password() {
    local file="$STATE/db-password"
    if [[ ! -s $file ]]; then
        (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$file")
    fi
    cat "$file"
}

start_mariadb() {
    local datadir="$STATE/mysql/data" sock="$STATE/mysql/mysqld.sock" password
    is_running mariadbd && { log "mariadbd is already running"; return 0; }
    require_free_port "$DB_PORT" "MariaDB (set CKPTIO_SLURM_DB_PORT to use another port)"
    if [[ ! -d $datadir/mysql ]]; then
        log "creating the MariaDB data directory $datadir"
        mariadb-install-db --no-defaults --user=mysql --datadir="$datadir" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$STATE/log/mariadb-install.log" 2>&1 ||
            fail_start "mariadb-install-db failed, see $STATE/log/mariadb-install.log"
    fi
    rm -f "$STATE/mysql/mysqld.pid"
    setsid mariadbd --no-defaults --user=mysql --datadir="$datadir" --socket="$sock" \
        --pid-file="$STATE/mysql/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" \
        --skip-name-resolve --log-error="$STATE/log/mariadb.log" </dev/null >/dev/null 2>&1 &
    record_pid mariadbd "$STATE/mysql/mysqld.pid"
    wait_for "MariaDB on $sock" mariadb-admin --no-defaults --socket="$sock" ping

    password=$(db_password)
    mariadb --no-defaults --socket="$sock" -u root <<SQL ||
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$password';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$password';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL
        fail_start "could not create the slurm database user in MariaDB"
}

# Print "CPUs=.. Boards=.. SocketsPerBoard=.. CoresPerSocket=.. ThreadsPerCore=.. RealMemory=.."
# from `slurmd -C`, with RealMemory lowered by 5 %, because Slurm drains a node that reports
# less memory than slurm.conf gives it.
node_hardware() {
    local line field memory
    line=$(slurmd -C | head -n 1)
    [[ $line == NodeName=* ]] || fail_start "unexpected output of 'slurmd -C': $line"
    for field in $line; do
        case $field in
            CPUs=* | Boards=* | SocketsPerBoard=* | CoresPerSocket=* | ThreadsPerCore=*)
                printf '%s ' "$field" ;;
            RealMemory=*)
                memory=${field#RealMemory=}
                printf 'RealMemory=%d' $((memory * 95 / 100)) ;;
        esac
    done
}

write_configs() {
    local hardware cpus memory def_mem_per_cpu
    hardware=$(node_hardware)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hardware")
    memory=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hardware")
    # A job's default memory is its CPUs' share of the node, so memory never keeps a job
    # from starting while its CPUs are free.
    def_mem_per_cpu=$((memory / cpus))

    cat >"$STATE/slurm.conf" <<EOF
# One-node test cluster written by $0. The next start overwrites any edit.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE_NAME(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
SlurmctldPort=$SLURMCTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem_per_cpu
EnforcePartLimits=ALL
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
# Store sbatch --comment, where the Snakemake plugin puts the rule and wildcards.
AccountingStoreFlags=job_comment
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$SLURMDBD_PORT
AccountingStorageEnforce=associations
NodeName=$NODE_NAME NodeAddr=127.0.0.1 $hardware Features=$FEATURE State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE_NAME Default=YES MaxTime=60 State=UP
EOF

    # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF and requires it to be
    # owned by its SlurmUser and unreadable to others, because it contains the database password.
    (umask 077 && cat >"$STATE/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=$NODE_NAME
DbdAddr=127.0.0.1
DbdPort=$SLURMDBD_PORT
SlurmUser=slurm
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
    )
    chown slurm:slurm "$STATE/slurmdbd.conf"
    chmod 0600 "$STATE/slurmdbd.conf"
}

link_etc_slurm_conf() {
    local target="$STATE/slurm.conf"
    mkdir -p /etc/slurm
    if [[ -L $ETC_SLURM_CONF && $(readlink "$ETC_SLURM_CONF") == "$target" ]]; then
        return 0
    fi
    if [[ -e $ETC_SLURM_CONF || -L $ETC_SLURM_CONF ]]; then
        [[ -e $STATE/etc-slurm.conf.orig || -L $STATE/etc-slurm.conf.orig ]] &&
            fail_start "$ETC_SLURM_CONF belongs to another cluster and $STATE/etc-slurm.conf.orig already exists; restore it by hand"
        mv "$ETC_SLURM_CONF" "$STATE/etc-slurm.conf.orig"
        log "moved the existing $ETC_SLURM_CONF to $STATE/etc-slurm.conf.orig"
    fi
    ln -s "$target" "$ETC_SLURM_CONF"
}

restore_etc_slurm_conf() {
    if [[ -L $ETC_SLURM_CONF && $(readlink "$ETC_SLURM_CONF") == "$STATE/slurm.conf" ]]; then
        rm -f "$ETC_SLURM_CONF"
    fi
    if [[ -e $STATE/etc-slurm.conf.orig || -L $STATE/etc-slurm.conf.orig ]]; then
        if [[ -e $ETC_SLURM_CONF || -L $ETC_SLURM_CONF ]]; then
            log "warning: $ETC_SLURM_CONF was replaced meanwhile; the original stays in $STATE/etc-slurm.conf.orig"
        else
            mv "$STATE/etc-slurm.conf.orig" "$ETC_SLURM_CONF"
            log "restored the original $ETC_SLURM_CONF"
        fi
    fi
}

start_slurmdbd() {
    is_running slurmdbd && { log "slurmdbd is already running"; return 0; }
    require_free_port "$SLURMDBD_PORT" slurmdbd
    rm -f "$STATE/run/slurmdbd.pid"
    slurmdbd
    record_pid slurmdbd "$STATE/run/slurmdbd.pid"
    wait_for "slurmdbd to answer sacctmgr" sacctmgr -n list cluster
}

# Add the cluster, the account and the users root and the caller to the database, each
# only when it is missing, so that a restart changes nothing.
register_accounting() {
    local user
    if [[ -z $(sacctmgr -n -P list cluster "$CLUSTER_NAME" format=cluster) ]]; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if [[ -z $(sacctmgr -n -P list account "$ACCOUNT" format=account) ]]; then
        sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER_NAME" \
            description="checkpoint I/O workflow tests" organization=ckptio >/dev/null
    fi
    for user in root ${SUDO_USER:-}; do
        if [[ -z $(sacctmgr -n -P list association cluster="$CLUSTER_NAME" \
            account="$ACCOUNT" user="$user" format=user) ]]; then
            sacctmgr -i add user "$user" account="$ACCOUNT" cluster="$CLUSTER_NAME" >/dev/null
        fi
    done
    log "account '$ACCOUNT' on cluster '$CLUSTER_NAME' is ready"
}

start_slurmctld() {
    is_running slurmctld && { log "slurmctld is already running"; return 0; }
    require_free_port "$SLURMCTLD_PORT" slurmctld
    rm -f "$STATE/run/slurmctld.pid"
    slurmctld -f "$STATE/slurm.conf"
    record_pid slurmctld "$STATE/run/slurmctld.pid"
    wait_for "slurmctld to answer" scontrol ping
}

start_slurmd() {
    is_running slurmd && { log "slurmd is already running"; return 0; }
    require_free_port "$SLURMD_PORT" slurmd
    rm -f "$STATE/run/slurmd.pid"
    slurmd -f "$STATE/slurm.conf" -N "$NODE_NAME"
    record_pid slurmd "$STATE/run/slurmd.pid"
}

node_state() { sinfo -h -N -n "$NODE_NAME" -o %T 2>/dev/null | head -n 1; }

wait_for_idle_node() {
    local deadline=$((SECONDS + TIMEOUT)) state="" resumed=0
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated) log "node $NODE_NAME is $state"; return 0 ;;
            drain* | down*)
                # A node left drained or down by an earlier run comes back on resume.
                if ((resumed == 0)); then
                    scontrol update nodename="$NODE_NAME" state=resume 2>/dev/null || true
                    resumed=1
                fi ;;
        esac
        sleep 1
    done
    fail_start "node $NODE_NAME is '${state:-not listed}' after ${TIMEOUT}s, expected idle ($(sinfo -h -N -o '%N %T %E' 2>&1 | head -n 3))"
}

start_cluster() {
    ((EUID == 0)) || die "must run as root, because the Slurm daemons and munged need it"
    install_packages
    make_dirs
    write_configs
    link_etc_slurm_conf
    export SLURM_CONF="$STATE/slurm.conf"
    start_munge
    start_mariadb
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    wait_for_idle_node
    log "cluster '$CLUSTER_NAME' is up: partition '$PARTITION', account '$ACCOUNT', state in $STATE"
}

# Send SIGTERM to the recorded daemon NAME, then SIGKILL if it is still alive after 20 s.
stop_daemon() {
    local name=$1 pid deadline
    pid=$(recorded_pid "$name")
    if ! pid_is "$pid" "$name"; then
        rm -f "$STATE/pids/$name.pid"
        return 0
    fi
    kill -TERM "$pid"
    deadline=$((SECONDS + 20))
    while pid_is "$pid" "$name" && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if pid_is "$pid" "$name"; then
        log "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
        kill -KILL "$pid" || true
    fi
    rm -f "$STATE/pids/$name.pid"
    log "$name (pid $pid) stopped"
}

stop_cluster() {
    local name
    local -a jobs
    ((EUID == 0)) || die "must run as root, because the daemons run as root or as their own users"
    [[ -d $STATE/pids ]] || { log "no cluster state in $STATE; nothing to stop"; restore_etc_slurm_conf; return 0; }
    export SLURM_CONF="$STATE/slurm.conf"
    if is_running slurmctld; then
        mapfile -t jobs < <(squeue -h -o %i 2>/dev/null || true)
        if ((${#jobs[@]} > 0)); then
            log "cancelling jobs: ${jobs[*]}"
            scancel "${jobs[@]}" 2>/dev/null || true
            sleep 2
        fi
    fi
    for name in "${DAEMONS_STOP_ORDER[@]}"; do
        stop_daemon "$name"
    done
    restore_etc_slurm_conf
}

status_cluster() {
    local name pid rc=0
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        pid=$(recorded_pid "$name")
        if pid_is "$pid" "$name"; then
            echo "$name: running, pid $pid"
        else
            echo "$name: not running (or not started by this script)"
            [[ $name == munged ]] || rc=1
        fi
    done
    if [[ -f $STATE/slurm.conf ]]; then
        SLURM_CONF="$STATE/slurm.conf" timeout 30 sinfo -N -o '%N %P %T %c %m %f' 2>&1 || rc=1
    else
        echo "no $STATE/slurm.conf: the cluster was never started with this state directory"
        rc=1
    fi
    return "$rc"
}

main() {
    (($# >= 1 && $# <= 2)) || usage
    STATE=${2:-${CKPTIO_SLURM_DIR:-/tmp/ckptio-slurm}}
    [[ $STATE == /* ]] || STATE="$PWD/$STATE"
    case $1 in
        start) start_cluster ;;
        stop) stop_cluster ;;
        status) status_cluster ;;
        *) usage ;;
    esac
}

main "$@"
