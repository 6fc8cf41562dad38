#!/usr/bin/env bash
# A real single-node SLURM cluster, private to this test, from the distribution's packages:
# munge, MariaDB + slurmdbd (accounting: the executor plugin reads job states with sacct),
# slurmctld and slurmd; and the MLflow tracking server on PostgreSQL with basic-auth of
# tests/cluster/tracking_server.sh, where the jobs record their runs, as a user would set it up.
# Runs the default grid's smallest slice with `--executor slurm`, checks the table, the accounting
# and the runs on the server, and stops its daemons again (also on failure). No mocks.
#
#   QUANTBENCH_SERVICE_TESTS=1 tests/cluster/run_slurm.sh    # as root, from the project root, in its venv
#
# Opt-in: runs only with CI=true or QUANTBENCH_SERVICE_TESTS=1, as root, with apt-get; prints
# "SKIP: <reason>" and exits 0 otherwise.
#
# What it touches: its own temporary directory (configs, keys, sockets, PID files, databases,
# spool, logs) and the loopback ports QUANTBENCH_PORT_BASE+0..5 (default 16817..16822:
# slurmctld, slurmd, slurmdbd, MariaDB, PostgreSQL, mlflow). Every daemon is started by this script with its own
# settings (SLURM_CONF, munged --socket/--key-file, mariadbd --no-defaults --datadir/--socket/
# --port) and stopped by the PID it recorded, never by name; scontrol, sacct, sacctmgr and sbatch
# reach only these instances (SLURM_CONF). Nothing under /etc, /run or /var is written, and no
# system service is started, stopped or queried. If a port is taken (another SLURM or database
# on this machine), it refuses before starting anything. The one host change: the Debian packages
# are installed with apt-get when missing (with services kept from starting) and stay installed,
# less the munge key their install generates where the host had none;
# the snakemake SLURM executor plugin is installed into the active virtualenv and removed again
# if this script installed it.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/cluster/common.sh
. "$REPO/tests/cluster/common.sh"
service_test_gate "the SLURM cluster test"
BASE=${QUANTBENCH_PORT_BASE:-16817}
CTLD_PORT=$BASE SLURMD_PORT=$((BASE + 1)) DBD_PORT=$((BASE + 2)) DB_PORT=$((BASE + 3))
PG_PORT=$((BASE + 4)) MLFLOW_PORT=$((BASE + 5))
HOST=$(hostname -s)
log() { echo "[slurm-test $(date +%H:%M:%S)] $*"; }
refuse_taken_ports $CTLD_PORT $SLURMD_PORT $DBD_PORT $DB_PORT $PG_PORT $MLFLOW_PORT

WORK=$(mktemp -d /tmp/quantbench-slurm.XXXXXX)

# shellcheck source=tests/cluster/tracking_server.sh
. "$REPO/tests/cluster/tracking_server.sh"

cleanup() {
    status=$?
    tracking_server_down
    log "stopping this test's daemons by PID: ${PIDS[*]:-none}"
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ "${CREATED_POLICY:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    if [ "${PLUGIN_WAS_THERE:-1}" = 0 ]; then
        python -m pip uninstall -y -q snakemake-executor-plugin-slurm snakemake-executor-plugin-slurm-jobstep || true
    fi
    if [ $status != 0 ]; then
        log "FAILED; daemon logs:"
        tail -n 30 "$WORK"/*.log "$WORK"/*.out 2>/dev/null || true
        find "$WORK/.snakemake/slurm_logs" "$WORK/results/logs" -name "*.log" -exec tail -n 40 {} + 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

if ! dpkg -s slurm-wlm slurmdbd munge mariadb-server >/dev/null 2>&1; then
    log "installing slurm-wlm, slurmdbd, munge, mariadb-server (their services kept from starting)"
    if [ ! -e /usr/sbin/policy-rc.d ]; then  # ours, for this install only; an existing policy stays as it is
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && CREATED_POLICY=1
    fi
    # munge's postinst makes /etc/munge/munge.key when there is none: a host key this test never
    # uses (it runs munged on a key of its own); where the host had none, it has none afterwards
    HOST_KEY_ABSENT=0
    [ -e /etc/munge/munge.key ] || HOST_KEY_ABSENT=1
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
    if [ "${CREATED_POLICY:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; CREATED_POLICY=0; fi
    if [ $HOST_KEY_ABSENT = 1 ]; then rm -f /etc/munge/munge.key; fi
fi
# the plugin is removed again afterwards if this script installed it: when no slurmctld answers, it
# waits ~9 s for `scontrol` at import time, in every later snakemake call on this machine
PLUGIN_WAS_THERE=0
python -m pip show -q snakemake-executor-plugin-slurm >/dev/null 2>&1 && PLUGIN_WAS_THERE=1
python -m pip install -q "snakemake-executor-plugin-slurm>=1.0"

log "munge on $WORK/munge/munge.socket"
mkdir -m 711 "$WORK/munge" && chmod 711 "$WORK"
dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1 count=1024 status=none
chmod 400 "$WORK/munge/munge.key"
MUNGE_SOCKET=$WORK/munge/munge.socket
start munged /usr/sbin/munged --foreground --force --socket="$MUNGE_SOCKET" --key-file="$WORK/munge/munge.key" \
    --pid-file="$WORK/munge/munged.pid" --log-file="$WORK/munged.log" --seed-file="$WORK/munge/munged.seed"
for _ in $(seq 30); do [ -S "$MUNGE_SOCKET" ] && break; sleep 0.5; done
munge --socket="$MUNGE_SOCKET" -n | unmunge --socket="$MUNGE_SOCKET" >/dev/null

log "mariadb on 127.0.0.1:$DB_PORT (datadir $WORK/mysql)"
DB_SOCKET=$WORK/mysql.sock
mariadb-install-db --no-defaults --user=root --datadir="$WORK/mysql" --skip-test-db >"$WORK/mariadb-install.log" 2>&1
start mariadbd /usr/sbin/mariadbd --no-defaults --user=root --datadir="$WORK/mysql" --socket="$DB_SOCKET" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --pid-file="$WORK/mysql.pid" --log-error="$WORK/mariadb.log" \
    --skip-log-bin
for _ in $(seq 60); do mariadb-admin --no-defaults --socket="$DB_SOCKET" ping >/dev/null 2>&1 && break; sleep 1; done
mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "CREATE DATABASE slurm_acct_db;
    CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'quantbench';
    CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'quantbench';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

log "slurmdbd, slurmctld, slurmd on 127.0.0.1:$DBD_PORT/$CTLD_PORT/$SLURMD_PORT (SLURM_CONF=$WORK/slurm.conf)"
export SLURM_CONF=$WORK/slurm.conf  # every slurm command below (and snakemake's) reads this one
# ... except the `srun` that snakemake-executor-plugin-slurm-jobstep starts inside each job: it
# drops every SLURM_* variable, SLURM_CONF included, so srun would read /etc/slurm/slurm.conf. A
# shim first on PATH (which the plugin keeps) hands it this cluster's configuration.
mkdir "$WORK/bin"
printf '#!/bin/sh\nSLURM_CONF=%s exec %s "$@"\n' "$SLURM_CONF" "$(command -v srun)" >"$WORK/bin/srun"
chmod 755 "$WORK/bin/srun"
export PATH=$WORK/bin:$PATH
mkdir -p "$WORK/state" "$WORK/spool"
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
cat >"$WORK/slurmdbd.conf" <<CONF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=quantbench
StorageLoc=slurm_acct_db
LogFile=$WORK/slurmdbd.log
PidFile=$WORK/slurmdbd.pid
CONF
chmod 600 "$WORK/slurmdbd.conf"
cat >"$SLURM_CONF" <<CONF
ClusterName=quantbench
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
ReturnToService=2
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
start slurmdbd slurmdbd -D
for _ in $(seq 60); do sacctmgr -n list cluster >/dev/null 2>&1 && break; sleep 1; done
sacctmgr -i add cluster quantbench >/dev/null
sacctmgr -i add account quantbench Cluster=quantbench >/dev/null
sacctmgr -i add user root Account=quantbench >/dev/null
start slurmctld slurmctld -D
start slurmd slurmd -D
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix" && break; sleep 1; done
sinfo

tracking_server_up "$PG_PORT" "$MLFLOW_PORT"  # exports MLFLOW_TRACKING_URI and the writer's credentials

log "the smallest slice of the default grid, submitted with --executor slurm, recording to $MLFLOW_TRACKING_URI"
cat >"$WORK/config.yaml" <<CONF
name: slurm
archs: [lenet300]
methods: [rtn]
budgets: [2]
seeds: [0]
reference: {epochs: 2}
CONF
(cd "$WORK" && python -m snakemake --snakefile "$REPO/Snakefile" --directory "$WORK" \
    --configfile "$WORK/config.yaml" --workflow-profile "$REPO/profiles/slurm" \
    --default-resources slurm_account=quantbench slurm_partition=main --jobs 4 \
    > "$WORK/snakemake.log" 2>&1) || { tail -n 60 "$WORK/snakemake.log"; exit 1; }

log "checking the table and the accounting"
TABLE="$WORK/results/tables/slurm/digits.md"
# a mean, then ± half its interval (one seed: a bootstrap over the test examples, from the server's examples.npz)
grep -E "^\| lenet300 +\| baseline +\| rtn +\| (\*\*)?[0-9]+\.[0-9]{2}(\*\*)? ± [0-9]+\.[0-9]{2} \(2\.0[0-9] bpw" "$TABLE"
grep -E "^\| lenet300 +\| reference +\| reference +\| [0-9]+\.[0-9]{2} ± [0-9]+\.[0-9]{2} \(32\.00 bpw" "$TABLE"
JOBS=$(sacct -n -X -o JobName%60,State%20 | grep -c COMPLETED || true)
sacct -X -o JobID,JobName%40,State,Elapsed
# the plan is written when the grid starts and tables is a local rule: the reference and the cell are the SLURM jobs
[ "$JOBS" -ge 2 ] || { echo "expected >= 2 COMPLETED SLURM jobs (reference, cell), found $JOBS"; exit 1; }
RUNS=$(python - <<'PY'
import os
from mlflow.tracking import MlflowClient
os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = \
    os.environ["QB_ADMIN_USER"], os.environ["QB_ADMIN_PASSWORD"]
client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
exp = client.get_experiment_by_name("slurm")
runs = client.search_runs([exp.experiment_id]) if exp else []
jobs = sum(r.info.status == "FINISHED" and r.data.tags.get("kind") in ("reference", "cell") for r in runs)
plans = sum(r.info.status == "FINISHED" and r.data.tags.get("kind") == "plan" for r in runs)
print(f"{jobs}+{plans}")
PY
)
[ "$RUNS" = 2+1 ] || { echo "expected 2 FINISHED job runs (reference, cell) and 1 plan on the tracking server, found $RUNS"; exit 1; }
log "OK: $JOBS jobs ran through SLURM, the table has the cell, and the tracking server has their runs and the plan ($RUNS)"
