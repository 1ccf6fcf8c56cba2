#!/usr/bin/env bash
# One-shot GPU check for a machine with only torch + triton (no mmcv/mmdet/mmengine):
#   1. fused vs dense correctness at the real detection shapes (forward + gradients, fp32 and bf16),
#   2. the mixer benchmark (every stage and centre count; torch.compile baseline at stage 1),
#   3. the backbone benchmark (small-25 and medium-49, fp32 and bf16 autocast).
# Tables land in OUT_DIR (default: bench_out). Sized to finish within ~6 minutes on an H100/H200.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-bench_out}
mkdir -p "$OUT"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python}
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
  | tee "$OUT/env.txt"
run() { echo "== $*"; local t=$SECONDS; "$@" || status=1; echo "   ($((SECONDS - t)) s)"; }
run $PY benchmarks/check_correctness.py --md "$OUT/correctness.md"
run $PY benchmarks/bench_mixer.py --impls dense reference triton --json "$OUT/mixer.json" --md "$OUT/mixer.md"
run $PY benchmarks/bench_mixer.py --arch small --stages 1 --centres 25 --impls dense dense+compile triton \
    --json "$OUT/mixer_compile.json" --md "$OUT/mixer_compile.md"
run $PY benchmarks/bench_backbone.py --json "$OUT/backbone_fp32.json" --md "$OUT/backbone_fp32.md"
run $PY benchmarks/bench_backbone.py --amp --json "$OUT/backbone_bf16.json" --md "$OUT/backbone_bf16.md"
cat "$OUT"/*.md
exit $status
