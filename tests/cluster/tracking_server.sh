# shellcheck shell=bash
# A real MLflow tracking server on PostgreSQL with MLflow's basic-auth app, private to a test.
# Sourced by tests/cluster/run_tracking_server.sh and tests/cluster/run_slurm.sh, after
# tests/cluster/common.sh (`start`, PIDS) and their `log` and WORK (their temporary directory).
#
#   tracking_server_up PG_PORT MLFLOW_PORT   # PostgreSQL + mlflow server; exports the client settings
#   mlflow_stop / mlflow_start               # the server alone (fault injection); PostgreSQL stays up
#   tracking_server_down                     # stops both (the caller's cleanup calls it)
#
# What it touches: $WORK/pg (the database cluster: initdb as the distribution's `postgres` user,
# who owns only that folder), $WORK/pgsock, $WORK/mlflow-artifacts, $WORK/auth.{ini,db}, and the
# two loopback ports. PostgreSQL is started and stopped with pg_ctl on that data directory (its PID
# file), mlflow by the PID recorded here; the host's own PostgreSQL clusters (/etc/postgresql,
# /var/lib/postgresql) are never started, stopped or read. The one host change: the Debian
# package `postgresql` is installed with apt-get when missing (its service kept from starting).
# Exports MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME / _PASSWORD (the writer) and
# QB_ADMIN_USER / QB_ADMIN_PASSWORD (the admin, for checks), QB_PG_URI (the backend store).

PG_BIN=""
MLFLOW_PID=""

_pg_install() {
    if ! dpkg -s postgresql >/dev/null 2>&1; then
        log "installing postgresql (its service kept from starting)"
        local created=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then  # ours, for this install only; an existing policy stays
            printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && created=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        if [ $created = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    fi
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
}

_pg() {  # run a PostgreSQL tool as the unprivileged `postgres` user (PostgreSQL refuses root)
    runuser -u postgres -- "$@"
}

tracking_server_up() {
    local pg_port=$1 mlflow_port=$2
    _pg_install
    python -c "import psycopg2, flask_wtf" 2>/dev/null || {
        echo "the tracking server test needs psycopg2 and Flask-WTF: pip install -e '.[dev]'"; return 1; }
    chmod 711 "$WORK"
    mkdir -m 700 "$WORK/pg" "$WORK/pgsock" && touch "$WORK/postgres.log"
    chown postgres: "$WORK/pg" "$WORK/pgsock" "$WORK/postgres.log"
    log "PostgreSQL ($PG_BIN) on 127.0.0.1:$pg_port, data directory $WORK/pg"
    _pg "$PG_BIN/initdb" -D "$WORK/pg" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
        >"$WORK/initdb.log" 2>&1
    _pg "$PG_BIN/pg_ctl" start -w -t 60 -D "$WORK/pg" -l "$WORK/postgres.log" \
        -o "-p $pg_port -k $WORK/pgsock -c listen_addresses=127.0.0.1" >/dev/null
    PG_DATA=$WORK/pg
    local db_password writer_password
    db_password=$(python -c "import secrets; print(secrets.token_hex(16))")
    _pg "$PG_BIN/psql" -h "$WORK/pgsock" -p "$pg_port" -U postgres -q -v ON_ERROR_STOP=1 \
        -c "CREATE ROLE quantbench LOGIN PASSWORD '$db_password'" -c "CREATE DATABASE mlflow OWNER quantbench"
    export QB_PG_URI="postgresql://quantbench:$db_password@127.0.0.1:$pg_port/mlflow"

    QB_ADMIN_USER=admin
    QB_ADMIN_PASSWORD=$(python -c "import secrets; print(secrets.token_hex(16))")
    export QB_ADMIN_USER QB_ADMIN_PASSWORD
    cat >"$WORK/auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///$WORK/auth.db
admin_username = $QB_ADMIN_USER
admin_password = $QB_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
    export MLFLOW_AUTH_CONFIG_PATH=$WORK/auth.ini
    # basic-auth's CSRF protection needs one static key, the same for every worker and restart
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(python -c "import secrets; print(secrets.token_hex(32))")
    export MLFLOW_FLASK_SERVER_SECRET_KEY
    MLFLOW_PORT=$mlflow_port
    mkdir "$WORK/mlflow-artifacts"
    mlflow_start
    export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
    writer_password=$(python -c "import secrets; print(secrets.token_hex(16))")
    python - "$MLFLOW_TRACKING_URI" "$writer_password" <<'PY'
import os, sys, requests
uri, password = sys.argv[1], sys.argv[2]
admin = (os.environ["QB_ADMIN_USER"], os.environ["QB_ADMIN_PASSWORD"])
r = requests.post(f"{uri}/api/2.0/mlflow/users/create", json={"username": "writer", "password": password},
                  auth=admin, timeout=30)
r.raise_for_status()
PY
    export MLFLOW_TRACKING_USERNAME=writer MLFLOW_TRACKING_PASSWORD=$writer_password
    log "mlflow server (basic-auth, PostgreSQL backend, served artifacts) at $MLFLOW_TRACKING_URI; writer account made"
}

mlflow_start() {
    # its own session (setsid): mlflow starts uvicorn and its workers as children, stopped as one group
    start mlflow setsid python -m mlflow server --backend-store-uri "$QB_PG_URI" \
        --artifacts-destination "$WORK/mlflow-artifacts" --serve-artifacts \
        --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 2 --app-name basic-auth
    MLFLOW_PID=${PIDS[-1]}
    for _ in $(seq 120); do
        if curl -fs "http://127.0.0.1:$MLFLOW_PORT/health" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$MLFLOW_PID" 2>/dev/null; then tail -n 40 "$WORK/mlflow.out"; return 1; fi
        sleep 1
    done
    echo "mlflow server did not answer on 127.0.0.1:$MLFLOW_PORT within 120 s"; tail -n 40 "$WORK/mlflow.out"; return 1
}

mlflow_stop() {  # the server and its workers: the process group of the PID recorded at its start
    if [ -n "$MLFLOW_PID" ]; then
        kill -TERM -- "-$MLFLOW_PID" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 -- "-$MLFLOW_PID" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$MLFLOW_PID" 2>/dev/null || true
        MLFLOW_PID=""
    fi
}

tracking_server_down() {
    mlflow_stop
    if [ -n "${PG_DATA:-}" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        _pg "$PG_BIN/pg_ctl" stop -w -t 60 -D "$PG_DATA" -m fast >/dev/null 2>&1 || true
    fi
}
