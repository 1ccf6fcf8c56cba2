#!/usr/bin/env bash
# Usage: tools/dist_train.sh CONFIG GPUS [train.py args...]
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR, PORT. Without CUDA, GPUS counts CPU processes (gloo).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 CONFIG GPUS [train.py args...]" >&2; exit 2; }
CONFIG=$1
GPUS=$2
shift 2
exec "$(dirname "${BASH_SOURCE[0]}")/_dist_run.sh" "$GPUS" "$(dirname "${BASH_SOURCE[0]}")/train.py" "$CONFIG" "$@"
