#!/usr/bin/env bash
# The cluster record, tested for real: an MLflow tracking server on PostgreSQL with MLflow's
# basic-auth app and served artifacts (tests/cluster/tracking_server.sh), private to this test.
# A grid slice runs against it with 4 parallel jobs, its tables are regenerated from the server
# alone and compared with the same slice on the SQLite default; then faults are injected and
# checked: the server stopped while cells run and restarted, the server down when a job starts,
# a writer with a wrong password and one without credentials. No mocks.
#
#   QUANTBENCH_SERVICE_TESTS=1 tests/cluster/run_tracking_server.sh   # as root, from the project root, in its venv
#
# Opt-in: runs only with CI=true or QUANTBENCH_SERVICE_TESTS=1, as root, with apt-get; prints
# "SKIP: <reason>" and exits 0 otherwise. Touches its temporary directory and the loopback ports
# QUANTBENCH_PORT_BASE+4 and +5 (default 16821: PostgreSQL, 16822: mlflow); refuses if either is
# taken. Stops what it started by PID (mlflow's process group, pg_ctl on its own data directory).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/cluster/common.sh
. "$REPO/tests/cluster/common.sh"
service_test_gate "the tracking server test"
BASE=${QUANTBENCH_PORT_BASE:-16817}
PG_PORT=$((BASE + 4)) MLFLOW_PORT=$((BASE + 5))
log() { echo "[tracking-test $(date +%H:%M:%S)] $*"; }
refuse_taken_ports $PG_PORT $MLFLOW_PORT

WORK=$(mktemp -d /tmp/quantbench-tracking.XXXXXX)
# shellcheck source=tests/cluster/tracking_server.sh
. "$REPO/tests/cluster/tracking_server.sh"
cleanup() {
    status=$?
    [ -n "${GRID_PID:-}" ] && kill -TERM "$GRID_PID" 2>/dev/null || true
    log "stopping the tracking server and PostgreSQL (by PID / pg_ctl on $WORK/pg)"
    tracking_server_down
    if [ $status != 0 ]; then
        log "FAILED; logs:"
        tail -n 30 "$WORK"/*.out "$WORK"/*.log "$WORK"/*/snakemake.log 2>/dev/null || true
        find "$WORK" -path "*/results/logs/*" -name "*.log" -exec tail -n 20 {} + 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit $status
}
trap cleanup EXIT

tracking_server_up "$PG_PORT" "$MLFLOW_PORT"
SERVER_URI=$MLFLOW_TRACKING_URI

grid() {  # grid <dir> <grid name> [snakemake args...]: the slice, from <dir>, with the default profile
    local dir=$1 name=$2; shift 2
    mkdir -p "$dir"
    cat >"$dir/config.yaml" <<CONF
name: $name
archs: [lenet300]
methods: [rtn, msq, qat, lsq]
budgets: [2, 4]
seeds: [0]
reference: {epochs: 2}
method_params: {qat: {epochs: 30}, lsq: {epochs: 30}}  # long enough to be running when the server stops
CONF
    (cd "$dir" && python -m snakemake --snakefile "$REPO/Snakefile" --directory "$dir" --configfile "$dir/config.yaml" \
        --cores 4 "$@" >>"$dir/snakemake.log" 2>&1)
}
count() {  # count <experiment> <status|ALL>: job runs on the server (read as the admin; not the plan's)
    python - "$1" "$2" <<'PY'
import os, sys
from mlflow.tracking import MlflowClient
os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = \
    os.environ["QB_ADMIN_USER"], os.environ["QB_ADMIN_PASSWORD"]
client = MlflowClient(os.environ["QB_SERVER_URI"])
exp = client.get_experiment_by_name(sys.argv[1])
runs = client.search_runs([exp.experiment_id], max_results=10000) if exp else []
print(sum(1 for r in runs if sys.argv[2] in ("ALL", r.info.status) and r.data.tags.get("kind") != "plan"))
PY
}
export QB_SERVER_URI=$SERVER_URI
running_ids() {  # ids of the RUNNING runs of experiment "server", one per line (REST, as the admin: fast)
    curl -fs -u "$QB_ADMIN_USER:$QB_ADMIN_PASSWORD" "$SERVER_URI/api/2.0/mlflow/experiments/get-by-name?experiment_name=server" |
        python3 -c "import json,sys; print(json.load(sys.stdin)['experiment']['experiment_id'])" |
        { read -r id; curl -fs -u "$QB_ADMIN_USER:$QB_ADMIN_PASSWORD" -H 'Content-Type: application/json' \
            -d "{\"experiment_ids\": [\"$id\"], \"filter\": \"attributes.status = 'RUNNING' and tags.kind = 'cell'\", \"max_results\": 100}" \
            "$SERVER_URI/api/2.0/mlflow/runs/search"; } |
        python3 -c "import json,sys; [print(r['info']['run_id']) for r in json.load(sys.stdin).get('runs', [])]"
}

log "1. the slice (1 reference + 8 cells) with 4 parallel jobs against $SERVER_URI; the server is stopped while cells run"
grid "$WORK/server" server &
GRID_PID=$!
for _ in $(seq 600); do  # wait until two cells are running
    running_ids >"$WORK/running" 2>/dev/null || true
    [ "$(wc -l <"$WORK/running")" -ge 2 ] && break
    kill -0 "$GRID_PID" 2>/dev/null || { echo "the grid ended before two cells ran at once"; exit 1; }
    sleep 0.5
done
mlflow_stop
RUNNING_AT_STOP=$(wc -l <"$WORK/running")
log "   server stopped with $RUNNING_AT_STOP cell runs RUNNING; down for 20 s"
sleep 20
mlflow_start
log "   server restarted"
FIRST=0
wait "$GRID_PID" || FIRST=$?
GRID_PID=""
FAILED_JOBS=$(grep -c "^Error in rule" "$WORK/server/snakemake.log" || true)
log "   first snakemake: exit $FIRST, $FAILED_JOBS failed job(s) (those that started while the server was down); rerunning"
grid "$WORK/server" server
EXPECTED=9
FINISHED=$(count server FINISHED)
TOTAL=$(count server ALL)
python - <<'PY' >"$WORK/server-cells.txt"
import os
from collections import Counter
from mlflow.tracking import MlflowClient
os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = \
    os.environ["QB_ADMIN_USER"], os.environ["QB_ADMIN_PASSWORD"]
client = MlflowClient(os.environ["QB_SERVER_URI"])
exp = client.get_experiment_by_name("server")
runs = client.search_runs([exp.experiment_id], max_results=10000)
finished = Counter(r.data.tags["cell_id"] for r in runs if r.info.status == "FINISHED" and "cell_id" in r.data.tags)
print(len(finished), sum(1 for n in finished.values() if n > 1))
PY
read -r CELLS_WITH_RUN DUPLICATES <"$WORK/server-cells.txt"
LOST=$((EXPECTED - CELLS_WITH_RUN))
SURVIVED=$(python - "$WORK/running" <<'PY'
import os, sys
from mlflow.tracking import MlflowClient
os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = \
    os.environ["QB_ADMIN_USER"], os.environ["QB_ADMIN_PASSWORD"]
client = MlflowClient(os.environ["QB_SERVER_URI"])
print(sum(client.get_run(i).info.status == "FINISHED" for i in open(sys.argv[1]).read().split()))
PY
)
log "   $SURVIVED of the $RUNNING_AT_STOP runs in flight at the stop closed FINISHED after the restart"
[ "$SURVIVED" = "$RUNNING_AT_STOP" ] || { echo "runs in flight across the restart did not finish"; exit 1; }

log "2. the tables regenerated from the server alone (local run records removed), against the SQLite default"
rm -rf "$WORK/server/results/runs" "$WORK/server/results/tables"
(cd "$WORK/server" && quantbench tables --experiment server --results-dir results --tracking-uri "$SERVER_URI" >/dev/null)
(unset MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; grid "$WORK/sqlite" server)
SQLITE_RUNS=$(cd "$WORK/sqlite" && python -c "
import mlflow; mlflow.set_tracking_uri('sqlite:///results/mlflow.db')
print(int((mlflow.search_runs(experiment_names=['server'])['tags.kind'] != 'plan').sum()))")
for t in "$WORK/server/results/tables/server/digits.md" "$WORK/sqlite/results/tables/server/digits.md"; do
    grep '^|' "$t" >"$t.rows"
done
diff "$WORK/server/results/tables/server/digits.md.rows" "$WORK/sqlite/results/tables/server/digits.md.rows"
cat "$WORK/server/results/tables/server/digits.md.rows"
[ "$SQLITE_RUNS" = "$FINISHED" ] || { echo "run counts differ: server $FINISHED FINISHED, SQLite $SQLITE_RUNS"; exit 1; }

log "3. the server down when a job starts"
mlflow_stop
T0=$(date +%s)
DOWN=0
grid "$WORK/down" down || DOWN=$?
DOWN_S=$(( $(date +%s) - T0 ))
[ "$DOWN" != 0 ] || { echo "a grid against a stopped server succeeded"; exit 1; }
grep -rh "is unreachable" "$WORK/down" | grep -F "$SERVER_URI" | head -n 1
mlflow_start

log "4. writers with a wrong password and without credentials"
BEFORE=$(count server ALL)
REFUSED=0
for who in wrong none; do
    RC=0
    if [ $who = wrong ]; then
        MLFLOW_TRACKING_PASSWORD=not-the-password grid "$WORK/intruder-$who" "intruder" || RC=$?
    else
        (unset MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD; grid "$WORK/intruder-$who" "intruder") || RC=$?
    fi
    [ "$RC" != 0 ] || { echo "a writer with $who credentials was not refused"; exit 1; }
    grep -rh "refused" "$WORK/intruder-$who" | grep -F "$SERVER_URI" | head -n 1
    if find "$WORK/intruder-$who/results/runs" -name metrics.json 2>/dev/null | grep -q .; then
        echo "a refused writer left run records"; exit 1
    fi
    REFUSED=$((REFUSED + 1))
done
AFTER=$(count server ALL)
[ "$(count intruder ALL)" = 0 ] && [ "$BEFORE" = "$AFTER" ] || { echo "a refused writer wrote to the server"; exit 1; }

echo
echo "tracking server test: runs recorded = $FINISHED FINISHED of $TOTAL on the server (expected $EXPECTED cells;" \
     "SQLite: $SQLITE_RUNS), faults injected = 4 (server stopped for 20 s with $RUNNING_AT_STOP cell runs RUNNING," \
     "$SURVIVED of them FINISHED after it restarted;" \
     "server down at a job's start: the grid failed in ${DOWN_S} s naming the URI; $REFUSED writers without valid credentials refused)," \
     "failed jobs rerun = $FAILED_JOBS, runs lost = $LOST, duplicates = $DUPLICATES, tables identical to SQLite"
[ "$LOST" = 0 ] && [ "$DUPLICATES" = 0 ] || exit 1
