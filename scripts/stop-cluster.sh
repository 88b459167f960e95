#!/usr/bin/env bash
# Stop what scripts/start-cluster.sh started: SIGTERM to the nodes, then the head,
# waiting for each to exit (SIGKILL after a grace period), then remove the state.
#   scripts/stop-cluster.sh [PORT]
set -uo pipefail
USER_NAME=${USER:-$(id -un)}
if [ -n "${ORION_CLUSTER_DIR:-}" ]; then DIR=$ORION_CLUSTER_DIR
elif [ $# -ge 1 ]; then DIR=/tmp/orion-cluster-$USER_NAME-$1
else DIR=$(cat "/tmp/orion-cluster-$USER_NAME.last" 2>/dev/null || true)
fi
if [ -z "$DIR" ] || [ ! -d "$DIR" ]; then echo "stop-cluster: no cluster state found" >&2; exit 0; fi

# Alive and not a zombie: our processes were orphaned by start-cluster.sh, so their
# zombies wait for init to reap them (slowly, or never in some containers).
running() {
    kill -0 "$1" 2>/dev/null || return 1
    local state
    state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 0
    [ "$state" != "Z" ]
}

stop_pid() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        running "$pid" || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
}

for f in "$DIR"/node-*.pid; do [ -e "$f" ] && stop_pid "$(cat "$f")"; done
[ -e "$DIR/head.pid" ] && stop_pid "$(cat "$DIR/head.pid")"
rm -rf "$DIR"
echo "stopped"
