#!/usr/bin/env bash
# slurm-ci.sh - a real single-node SLURM cluster on localhost for atomsift's CI (.ci/run).
# Adapted from the project's SLURM feasibility study: Debian 12 (bookworm), Slurm 22.05.8 from
# Debian, as root, without systemd (every daemon is started by hand and tracked by its PID file).
#
#   .ci/slurm-ci.sh up [--accounting] [--fake-gpus N]   install (if needed) + start; idempotent
#   .ci/slurm-ci.sh selftest                            sinfo / srun / sbatch --wait smoke test
#   .ci/slurm-ci.sh down                                cancel jobs, stop every daemon it started
#   .ci/slurm-ci.sh status
#
#  The workflow itself runs from .ci/run: snakemake --profile profiles/slurm (GPU rules request
#  `--gpus=fake:1`, so CI starts the cluster with --fake-gpus).
#
#  --accounting : also run MariaDB + slurmdbd so `sacct` works (the plugin's default
#                 status command). Without it, profiles must set `slurm-status-command: squeue`.
#  --fake-gpus N: advertise N fake GPUs (gres gpu:fake:N, char devices aliasing /dev/null)
#                 so `--gpus` / `--gres=gpu:...` requests can be scheduled on a CPU-only box.
# All traffic stays on loopback: every host name / NodeAddr is localhost / 127.0.0.1.
# (slurmctld 6817, slurmd 6818 and slurmdbd 6819 bind the wildcard address - Slurm 22.05
# has no bind-address setting; mariadb binds 127.0.0.1:3306.)
set -euo pipefail

ACCOUNTING=0
FAKE_GPUS=0
CLUSTER=ci
NODE=localhost
PART=debug
DB_PASS=${SLURM_CI_DB_PASS:-slurm-ci-pw}
LOGDIR=/var/log/slurm
STATEDIR=/var/lib/slurm

log() { printf '[slurm-ci %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() { # wait_for SECONDS DESCRIPTION CMD...
  local t=$1 what=$2; shift 2
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$end" ] && die "timed out after ${t}s waiting for $what"
    sleep 0.25
  done
}

parse_opts() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --accounting) ACCOUNTING=1 ;;
      --fake-gpus) FAKE_GPUS=$2; shift ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
}

install_pkgs() {
  local pkgs=(munge slurm-client slurmctld slurmd) missing=() p
  [ "$ACCOUNTING" = 1 ] && pkgs+=(slurmdbd mariadb-server)
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { log "packages already installed"; return; }
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  # postinst scripts try invoke-rc.d; without systemd they just don't start anything.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

write_config() {
  local cpus mem gres_line=""
  cpus=$(nproc)
  mem=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  mem=$(( mem > 1024 ? mem - 512 : mem ))   # a little headroom for the daemons
  install -d -o slurm -g slurm "$LOGDIR" "$STATEDIR/slurmctld" "$STATEDIR/slurmd"
  if [ "$FAKE_GPUS" -gt 0 ]; then
    install -d "$STATEDIR/fakegpu"
    : > /etc/slurm/gres.conf
    for i in $(seq 0 $((FAKE_GPUS - 1))); do
      # a char device (aliasing /dev/null) whose name ends in the index, so slurmd
      # accepts it and sets CUDA_VISIBLE_DEVICES for the job
      [ -c "$STATEDIR/fakegpu/nvidia$i" ] || mknod "$STATEDIR/fakegpu/nvidia$i" c 1 3
      echo "NodeName=$NODE Name=gpu Type=fake File=$STATEDIR/fakegpu/nvidia$i" >> /etc/slurm/gres.conf
    done
    gres_line=" Gres=gpu:fake:$FAKE_GPUS"
  else
    rm -f /etc/slurm/gres.conf
  fi
  local acct
  if [ "$ACCOUNTING" = 1 ]; then
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi
  cat > /etc/slurm/slurm.conf <<EOF
# written by slurm-ci.sh
ClusterName=$CLUSTER
SlurmctldHost=localhost
SlurmUser=slurm
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATEDIR/slurmctld
SlurmdSpoolDir=$STATEDIR/slurmd
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobCompType=jobcomp/none
# keep finished jobs visible to squeue for 5 min (the plugin's squeue mode needs >= 3x
# its first status-check delay)
MinJobAge=300
$acct
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem$gres_line State=UNKNOWN
PartitionName=$PART Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
  if pid_alive /run/munge/munged.pid; then log "munged already running"; return; fi
  [ -s /etc/munge/munge.key ] || mungekey --create
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged --force
  wait_for 10 munged bash -c 'munge -n | unmunge'
  log "munged up (pid $(cat /run/munge/munged.pid))"
}

start_db() {
  if pid_alive /run/mysqld/mysqld.pid; then log "mariadb already running"
  else
    install -d -o mysql -g root /run/mysqld
    [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
    nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 \
      --pid-file=/run/mysqld/mysqld.pid >"$LOGDIR/mariadb.log" 2>&1 &
    wait_for 60 mariadb mysqladmin ping
    log "mariadb up (pid $(cat /run/mysqld/mysqld.pid))"
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  if pid_alive /run/slurmdbd.pid; then log "slurmdbd already running"; return; fi
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGDIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASS
EOF
  chown slurm:slurm /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf
  /usr/sbin/slurmdbd
  wait_for 30 slurmdbd bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  log "slurmdbd up (pid $(cat /run/slurmdbd.pid))"
}

node_idle() { sinfo -h -n "$NODE" -o %T | grep -Eq '^(idle|mixed|allocated)'; }

start_slurm() {
  if pid_alive /run/slurmctld.pid; then log "slurmctld already running"
  else
    # -c: start from a clean state (no old jobs, no DRAIN/DOWN node state from a past run)
    /usr/sbin/slurmctld -c
    wait_for 30 slurmctld scontrol ping
    log "slurmctld up (pid $(cat /run/slurmctld.pid))"
  fi
  if pid_alive /run/slurmd.pid; then log "slurmd already running"
  else
    /usr/sbin/slurmd -N "$NODE"     # -N: node name independent of the machine's hostname
    wait_for 10 "slurmd pid file" test -s /run/slurmd.pid
    log "slurmd up (pid $(cat /run/slurmd.pid))"
  fi
  wait_for 30 "node $NODE idle" node_idle
  if [ "$ACCOUNTING" = 1 ]; then
    wait_for 30 "cluster registration" bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    sacctmgr -i -Q add account "$CLUSTER" description=ci organization=ci >/dev/null 2>&1 || true
    sacctmgr -i -Q add user "$(id -un)" account="$CLUSTER" >/dev/null 2>&1 || true
  fi
}

cmd_up() {
  local t0=$SECONDS
  install_pkgs
  log "install step: $((SECONDS - t0))s"
  # a running cluster with a different config is restarted
  local want="acct=$ACCOUNTING gpus=$FAKE_GPUS"
  if [ -f /run/slurm-ci.mode ] && [ "$(cat /run/slurm-ci.mode)" != "$want" ]; then
    log "mode changed ($(cat /run/slurm-ci.mode) -> $want): restarting"; cmd_down
  fi
  if ! pid_alive /run/slurmctld.pid; then write_config; fi
  start_munge
  [ "$ACCOUNTING" = 1 ] && start_db
  start_slurm
  echo "$want" > /run/slurm-ci.mode
  log "cluster up in $((SECONDS - t0))s total"
  sinfo
}

stop_pidfile() { # stop_pidfile FILE NAME
  local f=$1 name=$2 pid
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  kill "$pid"
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
  if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored SIGTERM, sending SIGKILL"; kill -9 "$pid"; fi
  rm -f "$f"
  log "stopped $name ($pid)"
}

cmd_down() {
  if pid_alive /run/slurmctld.pid; then
    local jobs; jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo $jobs)"; scancel $jobs || true
      for _ in $(seq 1 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
    fi
  fi
  stop_pidfile /run/slurmd.pid slurmd
  stop_pidfile /run/slurmctld.pid slurmctld
  stop_pidfile /run/slurmdbd.pid slurmdbd
  stop_pidfile /run/mysqld/mysqld.pid mariadb
  stop_pidfile /run/munge/munged.pid munged
  rm -f /run/slurm-ci.mode
}

cmd_status() {
  local f
  for f in /run/munge/munged.pid /run/mysqld/mysqld.pid /run/slurmdbd.pid /run/slurmctld.pid /run/slurmd.pid; do
    if pid_alive "$f"; then echo "running  $(cat "$f")  $f"; else echo "stopped  -  $f"; fi
  done
  pid_alive /run/slurmctld.pid && sinfo -o "%P %a %D %T %C %G %N" || true
}

cmd_selftest() {
  sinfo
  srun -N1 -n1 --mem=100 -t 1 hostname
  local out; out=$(mktemp)
  sbatch --wait --parsable -o "$out" -t 1 --mem=100 --wrap 'echo "batch job $SLURM_JOB_ID on $(hostname)"' >/dev/null
  cat "$out"; rm -f "$out"
  if [ "$ACCOUNTING" = 1 ] || grep -q slurmdbd /etc/slurm/slurm.conf; then
    sleep 2; sacct -X -n -P -o JobIDRaw,JobName,State | tail -3
  fi
  squeue -t all -h -o '%i|%j|%T' | tail -3
  log "selftest passed"
}

ARGS=()
parse_opts "$@"
[ "$(id -u)" = 0 ] || die "run as root"
case "${ARGS[0]:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  selftest) cmd_selftest ;;
  *) sed -n '2,21p' "$0"; exit 2 ;;
esac
