#!/usr/bin/env bash
# Usage: tools/dist_test.sh CONFIG CHECKPOINT GPUS [test.py args, e.g. --out results.pkl]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT. Without CUDA, GPUS counts CPU processes (gloo).
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 CONFIG CHECKPOINT GPUS [test.py args...]" >&2; exit 2; }
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
shift 3
exec "$(dirname "${BASH_SOURCE[0]}")/_dist_run.sh" "$GPUS" "$(dirname "${BASH_SOURCE[0]}")/test.py" "$CONFIG" "$CHECKPOINT" "$@"
