#!/usr/bin/env bash
# Start a head and N worker nodes in the background on this machine, wait until
# all N are registered, and print the head's address.
#   scripts/start-cluster.sh N [PORT]
# State (pids, logs) goes to $ORION_CLUSTER_DIR (default: /tmp/orion-cluster-$USER-PORT,
# remembered in /tmp/orion-cluster-$USER.last for stop-cluster.sh).
set -euo pipefail

usage() { echo "usage: $0 N [PORT]" >&2; exit 2; }
[ $# -ge 1 ] && [ $# -le 2 ] || usage
N=$1
PORT=${2:-6380}
[[ "$N" =~ ^[0-9]+$ ]] && [ "$N" -ge 1 ] || usage
[[ "$PORT" =~ ^[0-9]+$ ]] || usage

ORION=${ORION:-orion}
PYTHON=${PYTHON:-python3}
if ! command -v "$ORION" >/dev/null 2>&1; then ORION="$PYTHON -m orion.cli"; fi
USER_NAME=${USER:-$(id -un)}
DIR=${ORION_CLUSTER_DIR:-/tmp/orion-cluster-$USER_NAME-$PORT}
mkdir -p "$DIR"
echo "$DIR" > "/tmp/orion-cluster-$USER_NAME.last"
WORKERS_PER_NODE=${ORION_WORKERS_PER_NODE:-1}

# setsid: each process leads its own group, so stop-cluster.sh can signal it alone.
setsid $ORION head --port "$PORT" > "$DIR/head.log" 2>&1 < /dev/null &
echo $! > "$DIR/head.pid"

ADDRESS=""
for _ in $(seq 1 100); do
    ADDRESS=$(head -n 1 "$DIR/head.log" 2>/dev/null | grep -E '^tcp://' || true)
    [ -n "$ADDRESS" ] && break
    if ! kill -0 "$(cat "$DIR/head.pid")" 2>/dev/null; then
        echo "start-cluster: the head failed to start:" >&2; cat "$DIR/head.log" >&2; exit 1
    fi
    sleep 0.1
done
[ -n "$ADDRESS" ] || { echo "start-cluster: the head printed no address" >&2; exit 1; }
echo "$ADDRESS" > "$DIR/address"

for i in $(seq 1 "$N"); do
    setsid $ORION worker --address "$ADDRESS" --num-workers "$WORKERS_PER_NODE" --node-id "node-$i" \
        > "$DIR/node-$i.log" 2>&1 < /dev/null &
    echo $! > "$DIR/node-$i.pid"
done

for _ in $(seq 1 300); do
    ALIVE=$($ORION status --address "$ADDRESS" --json 2>/dev/null \
        | $PYTHON -c 'import json,sys; print(sum(n["alive"] for n in json.load(sys.stdin)["nodes"]))' 2>/dev/null || echo 0)
    if [ "$ALIVE" -ge "$N" ]; then
        echo "$ADDRESS"
        exit 0
    fi
    sleep 0.1
done
echo "start-cluster: only $ALIVE of $N nodes registered; logs in $DIR" >&2
exit 1
