#!/usr/bin/env bash
# A real single-node Slurm on this Debian machine, as root, without systemd, for tests and CI:
# munged, MariaDB + slurmdbd (so `sacct` works: submitit reads job states from it), slurmctld,
# slurmd. Idempotent: running `up` again restarts nothing that is healthy.
#
#   bash env/local-slurm.sh up          install what is missing, configure, start, check
#   bash env/local-slurm.sh down        stop the daemons this script started (by pidfile)
#   bash env/local-slurm.sh status      exit 0 when the node answers
#
# LOCAL_SLURM_CPUS=N advertises N CPUs (default: the real count; more lets CI run array tasks
# side by side on 2 cores).
set -uo pipefail

CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
RUN=/run/slurm
LOG=/var/log/slurm
STATE=/var/lib/slurm
HOST=$(hostname -s)

say() { printf '[local-slurm] %s\n' "$*" >&2; }

# wait_for SECONDS WHAT CMD...: poll CMD until it succeeds
wait_for() {
    local limit=$1 what=$2 end
    shift 2
    end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || { say "gave up after ${limit}s waiting for $what"; return 1; }
        sleep 0.2
    done
}

# alive PIDFILE COMM: the recorded process runs and is COMM. A zombie counts as dead: PID 1 here
# is no init that reaps at once, and kill -0 succeeds on a zombie.
alive() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ && $(cat /proc/$pid/comm 2>/dev/null) == "$2" ]] || return 1
    [[ $(sed -E 's/^.*\) (.).*/\1/' /proc/$pid/stat 2>/dev/null) != Z ]]
}

stop() {  # stop PIDFILE COMM: TERM, then KILL after 20 s
    local pid i
    alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid=$(cat "$1")
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 200; i++)); do alive "$1" "$2" || break; sleep 0.1; done
    alive "$1" "$2" && kill -KILL "$pid" 2>/dev/null
    rm -f "$1"
}

install() {
    local missing=() p
    for p in slurmctld slurmd slurmdbd slurm-client munge mariadb-server; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" \
            >/tmp/local-slurm-apt.log 2>&1 || { tail -20 /tmp/local-slurm-apt.log >&2; return 1; }
}

# write_if_changed FILE: stdin to FILE; exit 0 when the content changed (daemons must restart)
write_if_changed() {
    local tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
    mv "$tmp" "$1" && chmod 0644 "$1"
}

configure() {
    getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >>/etc/hosts
    mkdir -p $RUN $LOG $STATE/ctld $STATE/d /etc/slurm
    chown slurm:slurm $RUN $LOG $STATE/ctld
    [[ -s /etc/munge/munge.key ]] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown -R munge:munge /etc/munge && chmod 0400 /etc/munge/munge.key
    local node mem extra=""
    node=$(slurmd -C | sed -nE '1{s/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//; p}')  # the hardware as slurmd sees it
    if ((CPUS != $(nproc))); then node="CPUs=$CPUS"; extra="SlurmdParameters=config_overrides"; fi
    mem=$(($(free -m | awk '/^Mem:/{print $2}') * 95 / 100))  # more than the node has would drain it
    CONF_CHANGED=0
    write_if_changed /etc/slurm/slurm.conf <<EOF && CONF_CHANGED=1
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# schedule at once (default intervals make each afterok link wait ~3 s)
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
# cancel a job whose dependency failed instead of leaving it pending forever
DependencyParameters=kill_invalid_depend
KillWait=5
ReturnToService=2
$extra
NodeName=$HOST NodeAddr=127.0.0.1 $node RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    write_if_changed /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
    chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf  # slurmdbd insists
}

node_ready() { [[ $(sinfo -h -n "$HOST" -o %t 2>/dev/null) =~ ^(idle|mix|alloc)$ ]]; }

start() {
    if ! alive /run/munge/munged.pid munged; then
        mkdir -p /run/munge /var/lib/munge /var/log/munge
        chown munge:munge /run/munge /var/lib/munge /var/log/munge
        runuser -u munge -- /usr/sbin/munged --force || return 1
    fi
    wait_for 20 munge bash -c 'munge -n | unmunge' || return 1
    if ! alive /run/mysqld/mysqld.pid mariadbd; then
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
        [[ -d /var/lib/mysql/mysql ]] || mariadb-install-db --user=mysql >/dev/null || return 1
        setsid /usr/sbin/mariadbd --user=mysql --skip-networking --pid-file=/run/mysqld/mysqld.pid \
            --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    fi
    wait_for 60 mariadb mariadb-admin --silent ping || return 1
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || return 1
    alive $RUN/slurmdbd.pid slurmdbd || slurmdbd || return 1
    wait_for 60 slurmdbd sacctmgr -n list cluster || return 1
    if ((CONF_CHANGED)); then stop $RUN/slurmd.pid slurmd; stop $RUN/slurmctld.pid slurmctld; fi
    alive $RUN/slurmctld.pid slurmctld || slurmctld || return 1
    wait_for 60 slurmctld bash -c 'scontrol ping | grep -q UP' || return 1
    alive $RUN/slurmd.pid slurmd || slurmd || return 1
    wait_for 60 "node $HOST" node_ready || { tail -5 $LOG/slurmctld.log >&2; return 1; }
    wait_for 60 "cluster in the accounting DB" bash -c 'sacctmgr -n -P list cluster format=cluster | grep -qx local'
}

up() {
    [[ $(id -u) == 0 ]] || { say "needs root"; return 1; }
    install && configure && start || return 1
    [[ $(srun -t 1 hostname) == $(hostname) ]] || { say "srun does not run jobs"; return 1; }
    say "up: $(sinfo -h -o '%P %D %t %c CPUs')"
}

down() {
    stop $RUN/slurmd.pid slurmd
    stop $RUN/slurmctld.pid slurmctld
    stop $RUN/slurmdbd.pid slurmdbd
    stop /run/mysqld/mysqld.pid mariadbd
    stop /run/munge/munged.pid munged
}

case ${1:-up} in
    up) up ;;
    down) down ;;
    status) node_ready ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
