#!/usr/bin/env bash
# Shared torchrun launcher of dist_train.sh / dist_test.sh: _dist_run.sh NPROC SCRIPT [script args...]
# NNODES, NODE_RANK, MASTER_ADDR, PORT come from the environment (defaults: 1 node, 127.0.0.1, 29500);
# PYTHON defaults to the project's .venv when there is one.
set -euo pipefail
NPROC=$1
SCRIPT=$2
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python; fi
fi
PYTHONPATH="$ROOT:${PYTHONPATH:-}" exec "$PYTHON" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --nproc_per_node="$NPROC" --master_port="${PORT:-29500}" \
    "$SCRIPT" "$@" --launcher pytorch
