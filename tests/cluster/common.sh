# shellcheck shell=bash
# What the service tests (run_slurm.sh, run_tracking_server.sh) share: they run only when asked,
# as root, with apt-get; they refuse ports already taken; they record the PID of every daemon
# they start (into PIDS; its output goes to $WORK/<name>.out) and stop daemons only by those PIDs.

service_test_gate() {  # service_test_gate "<what>": exit 0 with SKIP unless asked, root and apt-get
    local what=$1
    if [ "${CI:-}" != true ] && [ "${QUANTBENCH_SERVICE_TESTS:-}" != 1 ]; then
        echo "SKIP: $what runs only when asked (CI=true or QUANTBENCH_SERVICE_TESTS=1)"; exit 0
    fi
    if [ "$(id -u)" != 0 ]; then echo "SKIP: $what needs root"; exit 0; fi
    if ! command -v apt-get >/dev/null; then echo "SKIP: $what needs apt-get (Debian/Ubuntu)"; exit 0; fi
}

refuse_taken_ports() {  # refuse_taken_ports PORT...: exit 1 before starting anything if one is in use
    local port
    for port in "$@"; do
        if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)) != 0)"; then
            echo "REFUSED: 127.0.0.1:$port is already in use (a service of this machine?);"
            echo "         this test starts its own daemons only on free ports: set QUANTBENCH_PORT_BASE to another base"
            exit 1
        fi
    done
}

PIDS=()  # every daemon started, in start order
start() {  # start <name> <command...>: run a daemon in a background job, record its PID
    local name=$1; shift
    "$@" >"$WORK/$name.out" 2>&1 &
    PIDS+=("$!")
    echo "$!" >"$WORK/$name.pid"
}
