#!/usr/bin/env bash
# Chaos test: a head and 3 nodes run a 3,110-task DAG while processes are killed
# every second (and the head once). Exit 0 = every result right, nothing hung,
# no orphans. Options: --duration S --nodes N --workers-per-node W --seed N
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/chaos.py "$@"
