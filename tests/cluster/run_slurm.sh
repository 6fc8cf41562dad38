#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, from the distribution's packages: munge,
# MariaDB + slurmdbd (accounting: the executor plugin reads job states with sacct), slurmctld and
# slurmd. Runs the default grid's smallest slice with `--executor slurm`, checks the table and
# the accounting, and shuts everything down again (also on failure). No mocks.
#
#   sudo tests/cluster/run_slurm.sh            # from the project root, in its virtualenv
#
# Needs root (daemons, /etc/slurm) and apt; prints "SKIP: <reason>" and exits 0 without them.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then echo "SKIP: the SLURM cluster test needs root"; exit 0; fi
if ! command -v apt-get >/dev/null; then echo "SKIP: the SLURM cluster test needs apt-get (Debian/Ubuntu)"; exit 0; fi
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/quantbench-slurm.XXXXXX)
HOST=$(hostname -s)
export DEBIAN_FRONTEND=noninteractive

log() { echo "[slurm-test $(date +%H:%M:%S)] $*"; }

cleanup() {
    status=$?
    log "shutting down"
    scontrol shutdown >/dev/null 2>&1 || true
    pkill -x slurmd >/dev/null 2>&1 || true
    pkill -x slurmctld >/dev/null 2>&1 || true
    pkill -x slurmdbd >/dev/null 2>&1 || true
    mysqladmin shutdown >/dev/null 2>&1 || true
    pkill -x munged >/dev/null 2>&1 || true
    if [ "${PLUGIN_WAS_THERE:-1}" = 0 ]; then
        python -m pip uninstall -y -q snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep || true
    fi
    if [ $status != 0 ]; then
        log "FAILED; daemon logs:"
        tail -n 30 "$WORK"/*.log 2>/dev/null || true
    fi
    exit $status
}
trap cleanup EXIT

log "installing slurm-wlm, slurmdbd, munge, mariadb-server"
if ! dpkg -s slurm-wlm slurmdbd munge mariadb-server >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
fi
# the plugin is removed again afterwards if this script installed it: when no slurmctld answers, it
# waits ~9 s for `scontrol` at import time, in every later snakemake call on this machine
PLUGIN_WAS_THERE=0
python -m pip show -q snakemake-executor-plugin-slurm >/dev/null 2>&1 && PLUGIN_WAS_THERE=1
python -m pip install -q "snakemake-executor-plugin-slurm>=1.0"

log "munge"
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
runuser -u munge -- /usr/sbin/munged --force
munge -n | unmunge >/dev/null

log "mariadb + slurmdbd"
mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
(mysqld_safe --skip-networking=0 --bind-address=127.0.0.1 >"$WORK/mariadb.log" 2>&1 &)
for _ in $(seq 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
          CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'quantbench';
          GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
CPUS=$(nproc)
cat >/etc/slurm/slurmdbd.conf <<CONF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=quantbench
StorageLoc=slurm_acct_db
LogFile=$WORK/slurmdbd.log
PidFile=/run/slurmdbd.pid
CONF
chmod 600 /etc/slurm/slurmdbd.conf
cat >/etc/slurm/slurm.conf <<CONF
ClusterName=quantbench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
slurmdbd
for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster quantbench >/dev/null || true
sacctmgr -i add account quantbench Cluster=quantbench >/dev/null || true
sacctmgr -i add user root Account=quantbench >/dev/null || true

log "slurmctld + slurmd"
slurmctld
slurmd
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix" && break; sleep 1; done
sinfo

log "the smallest slice of the default grid, submitted with --executor slurm"
cat >"$WORK/config.yaml" <<CONF
name: slurm
archs: [lenet300]
methods: [rtn]
budgets: [2]
seeds: [0]
reference: {epochs: 2}
CONF
START=$(date +%Y-%m-%dT%H:%M:%S)  # only this run's jobs count below
(cd "$WORK" && python -m snakemake --snakefile "$REPO/Snakefile" --directory "$WORK" \
    --configfile "$WORK/config.yaml" --workflow-profile "$REPO/profiles/slurm" \
    --default-resources slurm_account=quantbench slurm_partition=main --jobs 4 \
    > "$WORK/snakemake.log" 2>&1) || { tail -n 60 "$WORK/snakemake.log"; exit 1; }

log "checking the table and the accounting"
TABLE="$WORK/results/tables/slurm/digits.md"
grep -E "^\| lenet300 +\| baseline +\| rtn +\| (\*\*)?[0-9]+\.[0-9]{2}(\*\*)? \(2\.0[0-9] bpw" "$TABLE"
grep -E "^\| lenet300 +\| reference +\| reference +\| [0-9]+\.[0-9]{2} \(32\.00 bpw" "$TABLE"
JOBS=$(sacct -n -X -S "$START" -o JobName%60,State%20 | grep -c COMPLETED || true)
sacct -X -S "$START" -o JobID,JobName%40,State,Elapsed
[ "$JOBS" -ge 3 ] || { echo "expected >= 3 COMPLETED SLURM jobs (tracking, reference, cell), found $JOBS"; exit 1; }
log "OK: $JOBS jobs ran through SLURM and the table has the cell"
rm -rf "$WORK"
