#!/usr/bin/env bash
# Runs a service test (e.g. tests/cluster/run_slurm.sh) beside decoys of the host's own services
# and checks that the test left them alone:
#   * decoy processes named slurmd, slurmctld, slurmdbd, munged, mariadbd and postgres (copies of
#     `sleep`) must still run afterwards: a test that stops daemons by name would kill them;
#   * /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf and /etc/munge/munge.key must be byte for
#     byte as before; where slurm.conf is absent, a decoy with known content stands in for it and
#     is removed again afterwards (an existing file is only read); so must the host's PostgreSQL
#     cluster configurations (/etc/postgresql/*/*/*.conf) and, where it exists before, the list of
#     /var/lib/postgresql (a package installed by the test may add its own default cluster).
#
#   QUANTBENCH_SERVICE_TESTS=1 tests/cluster/host_untouched.sh tests/cluster/run_slurm.sh
#
# Touches: its temporary directory, its decoy processes (stopped by PID), and /etc/slurm/slurm.conf
# only where none existed. Opt-in and root, like the tests it wraps; prints SKIP otherwise.
set -euo pipefail

if [ $# -lt 1 ]; then echo "usage: $0 TEST_SCRIPT [ARGS...]"; exit 2; fi
if [ "${CI:-}" != true ] && [ "${QUANTBENCH_SERVICE_TESTS:-}" != 1 ]; then
    echo "SKIP: the service tests run only when asked (CI=true or QUANTBENCH_SERVICE_TESTS=1)"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "SKIP: the service tests need root"; exit 0; fi

DECOYS=$(mktemp -d /tmp/quantbench-decoys.XXXXXX)
WATCHED=(/etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf /etc/munge/munge.key /etc/postgresql/*/*/*.conf)
DECOY_CONF=""
DECOY_DIR=0
DECOY_PIDS=()

finish() {
    status=$?
    for pid in "${DECOY_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$DECOY_CONF" ]; then rm -f "$DECOY_CONF"; fi
    if [ "$DECOY_DIR" = 1 ]; then rmdir /etc/slurm 2>/dev/null || true; fi
    rm -rf "$DECOYS"
    exit $status
}
trap finish EXIT

if [ ! -e /etc/slurm/slurm.conf ]; then
    [ -d /etc/slurm ] || { mkdir /etc/slurm && DECOY_DIR=1; }
    printf '# quantbench decoy: a host cluster configuration the tests must not touch\nClusterName=decoy\n' \
        >/etc/slurm/slurm.conf
    DECOY_CONF=/etc/slurm/slurm.conf
fi
PG_HOME=0  # where the host has PostgreSQL (installed before), its clusters must stay as they are
[ -d /var/lib/postgresql ] && PG_HOME=1
snapshot() {
    for f in "${WATCHED[@]}"; do
        if [ -e "$f" ]; then sha256sum "$f"; else echo "absent  $f"; fi
    done
    if [ $PG_HOME = 1 ]; then find /var/lib/postgresql -maxdepth 3 | sort; fi
}
snapshot >"$DECOYS/before"

for name in slurmd slurmctld slurmdbd munged mariadbd postgres; do
    cp "$(command -v sleep)" "$DECOYS/$name"
    "$DECOYS/$name" 100000 &
    DECOY_PIDS+=("$!")
done
echo "[host-untouched] decoys running: ${DECOY_PIDS[*]}; watching ${WATCHED[*]}"

"$@"

snapshot >"$DECOYS/after"
failed=0
if ! diff "$DECOYS/before" "$DECOYS/after"; then echo "[host-untouched] FAILED: a host file changed"; failed=1; fi
for pid in "${DECOY_PIDS[@]}"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "[host-untouched] FAILED: decoy $(cat "/proc/$pid/comm" 2>/dev/null || echo "PID $pid") was stopped"
        failed=1
    fi
done
[ $failed = 0 ] && echo "[host-untouched] OK: ${#DECOY_PIDS[@]} decoy daemons still running, ${#WATCHED[@]} host files unchanged"
exit $failed
