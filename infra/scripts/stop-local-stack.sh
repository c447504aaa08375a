#!/usr/bin/env bash
# Stops what infra/scripts/local-stack.sh started, by the process ids it recorded: each
# service's whole process group (Dask nannies and their workers, the Prefect server's
# children), newest first. Data (Prefect database, S3 objects) stays in the stack folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
STACK_DIR="${IMAMBIG_STACK_DIR:-runs/local-stack}"
PIDS="$STACK_DIR/pids"
GRACE_SECONDS="${GRACE_SECONDS:-15}"

if [[ ! -d "$PIDS" ]]; then
    echo "nothing to stop (no $PIDS)"
    exit 0
fi

alive() { kill -0 -- "-$1" 2>/dev/null || kill -0 "$1" 2>/dev/null; }

stop_one() {
    local file="$1" name pid
    name="$(basename "$file" .pid)"
    pid="$(cat "$file" 2>/dev/null || true)"
    if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! alive "$pid"; then
        rm -f "$file"
        return
    fi
    # Each service was started as a session leader, so its pid is its process group.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq "$((GRACE_SECONDS * 4))"); do
        alive "$pid" || break
        sleep 0.25
    done
    if alive "$pid"; then
        echo "$name did not stop in ${GRACE_SECONDS}s; killing it"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$file"
    echo "stopped $name (pid $pid)"
}

# Workers before their scheduler, clients before the servers they report to.
shopt -s nullglob
for file in "$PIDS"/dask-worker-*.pid "$PIDS"/dask-scheduler.pid \
    "$PIDS"/prefect-server.pid "$PIDS"/seaweedfs.pid "$PIDS"/*.pid; do
    [[ -e "$file" ]] && stop_one "$file"
done
exit 0
