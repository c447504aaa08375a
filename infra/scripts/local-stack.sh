#!/usr/bin/env bash
# The compose stack without Docker: a Prefect server (SQLite), a Dask scheduler with two
# two-stage workers (--nthreads 2), and SeaweedFS S3, all on 127.0.0.1, in the background.
#
#   infra/scripts/local-stack.sh          # then: source runs/local-stack/env.sh
#   infra/scripts/stop-local-stack.sh
#
# The Dask scheduler and workers speak TLS only, with certificates made in
# $IMAMBIG_STACK_DIR/dask-tls (infra.dask_tls, kept across restarts): env.sh points Dask's
# config at the client certificate. No service gets the imambig secrets: an encode sends
# the workers only the keys derived for their regions.
#
# Settings (environment): IMAMBIG_STACK_DIR (default runs/local-stack), PYTHON (default
# .venv/bin/python), PREFECT_PORT (4200), DASK_SCHEDULER_PORT (8786),
# DASK_DASHBOARD_PORT (8787), S3_PORT (default: a free one, kept across restarts),
# DASK_WORKERS (2).
set -euo pipefail

HOST=127.0.0.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

STACK_DIR="${IMAMBIG_STACK_DIR:-runs/local-stack}"
mkdir -p "$STACK_DIR"
STACK_DIR="$(cd "$STACK_DIR" && pwd)"
PIDS="$STACK_DIR/pids"
LOGS="$STACK_DIR/logs"
mkdir -p "$PIDS" "$LOGS" "$STACK_DIR/prefect" "$STACK_DIR/dask"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
if [[ ! -x "$PYTHON" ]]; then
    PYTHON="$(command -v python3)"
fi
BIN="$(dirname "$PYTHON")"
PREFECT_PORT="${PREFECT_PORT:-4200}"
DASK_SCHEDULER_PORT="${DASK_SCHEDULER_PORT:-8786}"
DASK_DASHBOARD_PORT="${DASK_DASHBOARD_PORT:-8787}"
DASK_WORKERS="${DASK_WORKERS:-2}"
BUCKETS=(imambig-public imambig-keys imambig-images imambig-models)

die() {
    echo "local-stack: $*" >&2
    exit 1
}

# The same tools as the tests use: the virtual environment's, even when not activated.
tool() {
    if [[ -x "$BIN/$1" ]]; then echo "$BIN/$1"; else command -v "$1" || die "$1 not found"; fi
}
PREFECT="$(tool prefect)"
DASK="$(tool dask)"

running() {
    local pid
    [[ -f "$1" ]] && pid="$(cat "$1")" && [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null
}

for f in "$PIDS"/*.pid; do
    if [[ -e "$f" ]] && running "$f"; then
        die "already running ($(basename "$f" .pid)); stop it with infra/scripts/stop-local-stack.sh"
    fi
    rm -f "$f"
done

port_free() {
    "$PYTHON" - "$1" <<'PY'
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        sys.exit(1)
PY
}
for port in "$PREFECT_PORT" "$DASK_SCHEDULER_PORT" "$DASK_DASHBOARD_PORT"; do
    port_free "$port" || die "port $port on $HOST is taken; set another (see the header)"
done

# A half-started stack is worse than none: stop whatever did start if a step fails.
up=0
cleanup() {
    if [[ "$up" != 1 ]]; then
        echo "local-stack: stopping the services started so far" >&2
        IMAMBIG_STACK_DIR="$STACK_DIR" "$ROOT/infra/scripts/stop-local-stack.sh" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

# Each service is a session leader, so stop-local-stack.sh can end it with all its
# children (Dask nannies, weed) by process group, and Ctrl-C here does not reach them.
start() {
    local name="$1"
    shift
    setsid "$@" >"$LOGS/$name.log" 2>&1 </dev/null &
    echo $! >"$PIDS/$name.pid"
}

wait_for() {
    local what="$1" seconds="$2" name="$3"
    shift 3
    for _ in $(seq "$((seconds * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        running "$PIDS/$name.pid" || die "$what exited; see $LOGS/$name.log"
        sleep 0.5
    done
    die "$what did not come up in ${seconds}s; see $LOGS/$name.log"
}

http_ok() {
    "$PYTHON" -c "import sys, urllib.request as u
u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2)" "$1"
}

# --- S3 first: its credentials go into the Dask workers' environment ------------------
s3_args=(--dir "$STACK_DIR/s3")
for b in "${BUCKETS[@]}"; do s3_args+=(--bucket "$b"); done
if [[ -n "${S3_PORT:-}" ]]; then s3_args+=(--port "$S3_PORT"); fi
start seaweedfs "$PYTHON" -m infra.seaweedfs "${s3_args[@]}"

# --- Prefect server: migrate, then serve ------------------------------------------------
export PREFECT_HOME="$STACK_DIR/prefect"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
prefect_server_env=(
    env -u PREFECT_API_URL
    PREFECT_API_DATABASE_CONNECTION_URL="sqlite+aiosqlite:///$STACK_DIR/prefect/prefect.db"
    PREFECT_SERVER_API_HOST="$HOST"
    PREFECT_SERVER_API_PORT="$PREFECT_PORT"
    PREFECT_UI_API_URL="http://$HOST:$PREFECT_PORT/api"
)
echo "migrating the Prefect database ..."
# A fresh database's migrations outlast the server's own start-up timeout.
"${prefect_server_env[@]}" "$PREFECT" server database upgrade -y >"$LOGS/prefect-migrate.log" 2>&1 \
    || die "prefect database migration failed; see $LOGS/prefect-migrate.log"
start prefect-server "${prefect_server_env[@]}" \
    "$PREFECT" server start --host "$HOST" --port "$PREFECT_PORT"
PREFECT_API_URL="http://$HOST:$PREFECT_PORT/api"

# --- Dask scheduler, TLS only ---------------------------------------------------------------
TLS_DIR="$STACK_DIR/dask-tls"
"$PYTHON" -m infra.dask_tls --out "$TLS_DIR" --keep >/dev/null \
    || die "could not write the Dask certificates to $TLS_DIR"
dask_tls=(--tls-ca-file "$TLS_DIR/ca.pem" --tls-cert "$TLS_DIR/cluster.pem")
DASK_SCHEDULER_ADDRESS="tls://$HOST:$DASK_SCHEDULER_PORT"
# One thread per process: torch threads x Dask threads never exceed the cores. No
# imambig secret in any Dask process's environment.
single_thread=(OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMEXPR_NUM_THREADS=1)
no_secrets=(-u IMAMBIG_OWNER_SECRET -u IMAMBIG_KEYSTORE_KEY -u IMAMBIG_SIGNING_KEY)
start dask-scheduler env "${no_secrets[@]}" "${single_thread[@]}" \
    "$DASK" scheduler --protocol tls --host "$HOST" --port "$DASK_SCHEDULER_PORT" \
    "${dask_tls[@]}" --dashboard-address "$HOST:$DASK_DASHBOARD_PORT"

# --- wait for S3 and read its settings ----------------------------------------------------
s3_env() { grep '^export AWS_' "$LOGS/seaweedfs.log"; }
wait_for "SeaweedFS" 90 seaweedfs s3_env
S3_EXPORTS="$(s3_env)"

# --- Dask workers, with S3 and Prefect in their environment --------------------------------
eval "$S3_EXPORTS"
export PREFECT_API_URL
wait_for "Dask scheduler" 60 dask-scheduler http_ok "http://$HOST:$DASK_DASHBOARD_PORT/health"
for i in $(seq "$DASK_WORKERS"); do
    start "dask-worker-$i" env "${no_secrets[@]}" "${single_thread[@]}" \
        "$DASK" worker "$DASK_SCHEDULER_ADDRESS" "${dask_tls[@]}" --host "$HOST" \
        --nthreads 2 --nworkers 1 \
        --name "local-$i" --dashboard-address "$HOST:0" --local-directory "$STACK_DIR/dask"
done

wait_for "Prefect server" 180 prefect-server http_ok "$PREFECT_API_URL/health"
count_workers() {
    "$PYTHON" - "$DASK_SCHEDULER_ADDRESS" "$DASK_WORKERS" "$TLS_DIR" <<'PY'
import sys
from distributed import Client, Security
tls = Security(tls_ca_file=f"{sys.argv[3]}/ca.pem", tls_client_cert=f"{sys.argv[3]}/client.pem",
               require_encryption=True)
with Client(sys.argv[1], security=tls, timeout=5) as c:
    sys.exit(0 if len(c.scheduler_info(n_workers=-1)["workers"]) >= int(sys.argv[2]) else 1)
PY
}
wait_for "Dask workers" 60 dask-worker-1 count_workers

# --- settings for clients: a file to source (it holds the S3 secret: owner-only) -----------
umask 077
{
    echo "# written by infra/scripts/local-stack.sh"
    echo "export PREFECT_API_URL=$PREFECT_API_URL"
    echo "export PREFECT_SERVER_ANALYTICS_ENABLED=false"
    echo "export DASK_SCHEDULER_ADDRESS=$DASK_SCHEDULER_ADDRESS"
    echo "export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$TLS_DIR/ca.pem"
    echo "export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$TLS_DIR/client.pem"
    echo "$S3_EXPORTS"
} >"$STACK_DIR/env.sh"
up=1

cat <<EOF
Local stack is up (logs: $LOGS).
  Prefect UI      http://$HOST:$PREFECT_PORT
  Dask scheduler  $DASK_SCHEDULER_ADDRESS   dashboard http://$HOST:$DASK_DASHBOARD_PORT
  S3 buckets      ${BUCKETS[*]}

# settings for your shell (also in $STACK_DIR/env.sh):
export PREFECT_API_URL=$PREFECT_API_URL
export DASK_SCHEDULER_ADDRESS=$DASK_SCHEDULER_ADDRESS
export DASK_DISTRIBUTED__COMM__TLS__CA_FILE=$TLS_DIR/ca.pem
export DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=$TLS_DIR/client.pem
$S3_EXPORTS

# e.g.
#   imambig encode --images s3://imambig-images/images --model s3://imambig-models/model \\
#     --public s3://imambig-public/store --keys s3://imambig-keys/store \\
#     --dask-address \$DASK_SCHEDULER_ADDRESS
# Stop with: infra/scripts/stop-local-stack.sh
EOF
