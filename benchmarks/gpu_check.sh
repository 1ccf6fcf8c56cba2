#!/usr/bin/env bash
# One-shot GPU check for a machine with only torch + triton (no mmcv/mmdet/mmengine):
#   1. every test that needs only torch + triton (tests/ops: the op, kernels, edge cases, compile gate;
#      tests/models: backbone, public-model fidelity, compiled backbone), compiled on the GPU (outputs poisoned
#      with NaN); this is where the tests marked only_compiled_can_fail (tie rule, determinism) can fail: the
#      CPU's Triton interpreter cannot fail them,
#   1b. launch tuning on this GPU (shipped vs chosen configurations, their times; the runs below use the choices),
#   2. fused vs dense correctness at the real detection shapes (forward + gradients, fp32 and bf16),
#   3. the mixer benchmark (every stage and centre count, fp32; bf16; torch.compile baseline at stage 1)
#      and the per-kernel time of the fused path at stage 1,
#   4. the backbone benchmark (small-25 and medium-49, fp32 and bf16 autocast): the original eager and
#      compiled, the fused op eager, compiled (the backbone's compile switch, with and without CUDA graphs)
#      and with activation checkpointing,
#   5. the Mask R-CNN training step (benchmarks/bench_train.py) where mmdet is installed.
#   (with .gpu_old from benchmarks/prepare_gpu_check.sh: the earlier kernels' mixer times beside today's;
#   and today's kernels with the FMA dots of before 2026-12-03, COC_DOT_PRECISION=ieee, at stage 1)
# Tables land in OUT_DIR (default: bench_out); a summary is printed last. Measured on an H100 (2026-11-26):
# about 4 minutes before the compiled backbone variants were added (not yet run with them: budget for
# 2-3 more minutes of inductor compilation). Tuning aid, not part of the check: benchmarks/sweep_configs.py.
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -uo pipefail
OUT=${1:-bench_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
# the scripts run as modules from the repository root (python -m benchmarks.NAME): the root comes first on the
# path, so the package in the working tree is the one measured, installed or not
PY=${PYTHON:-python}
export PYTHONUNBUFFERED=1
status=0
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  $PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'; date -u; } \
  | tee "$OUT/env.txt"
T0=$SECONDS
run() { echo "== [$((SECONDS - T0)) s] $*"; local t=$SECONDS; "$@" || status=1; echo "   ($((SECONDS - t)) s)"; }
run $PY -m pytest -q -p no:cacheprovider tests/ops tests/models
# launch tuning on this GPU (benchmarks/tune.py): per shape class and kernel the shipped configuration beside the
# chosen one, their median times, the candidates that passed the check; the benchmarks below run with these choices
# (their tables name them), and the choices are kept as a pinned file for other machines with this GPU
export COC_TUNING_CACHE="$OUT/tuning_cache.json"
run $PY -m benchmarks.tune --arch small medium --stages 1 2 3 4 --centres 4 25 49 --dtype float32 bfloat16 \
    --md "$OUT/tuning.md" --pin "$OUT/tuning_pinned.json"
run $PY -m benchmarks.check_correctness --md "$OUT/correctness.md"
run $PY -m benchmarks.bench_mixer --impls dense triton --json "$OUT/mixer.json" --md "$OUT/mixer.md"
run $PY -m benchmarks.bench_mixer --arch small --dtype bfloat16 --impls dense triton --json "$OUT/mixer_bf16.json" \
    --md "$OUT/mixer_bf16.md"
run $PY -m benchmarks.bench_mixer --arch small --stages 1 --centres 25 49 --impls dense+compile triton \
    --json "$OUT/mixer_compile.json" --md "$OUT/mixer_compile.md" --profile
run $PY -m benchmarks.bench_mixer --arch small --stages 4 --centres 49 --impls triton --profile --reps 5
# the earlier kernels in the same run (benchmarks/prepare_gpu_check.sh puts them in .gpu_old, carried along):
# the op and its per-kernel times at stage 1, then every stage, so old and new read side by side
# (run from .gpu_old, which comes first on the path: its coc_kernels, the rest from the root; until 2026-12-05 the
# scripts put the root first themselves, so these rows timed today's kernels a second time)
old() { (cd .gpu_old && PYTHONPATH="$ROOT" "$@"); }
if [ -d .gpu_old/coc_kernels ]; then
  echo "== earlier kernels: $(cat .gpu_old/COMMIT 2>/dev/null)" | tee "$OUT/mixer_old.md"
  run old $PY -m benchmarks.bench_mixer --arch small --stages 1 --centres 25 49 --impls triton \
      --profile --md "$OUT/mixer_old_stage1.md"
  run old $PY -m benchmarks.bench_mixer --arch small --impls triton --md "$OUT/mixer_old.md"
  run $PY -m benchmarks.bench_mixer --arch small --stages 1 --centres 25 49 --impls triton --profile \
      --md "$OUT/mixer_new_stage1.md"
fi
# the FMA dots ("ieee", the default before 2026-12-03) against today's tensor-core split dots, same run
run env COC_DOT_PRECISION=ieee $PY -m benchmarks.bench_mixer --arch small --stages 1 --centres 25 49 --impls triton \
    --profile --md "$OUT/mixer_ieee_stage1.md"
# whole backbone, side by side: original eager / torch.compile of it / fused eager / fused + compile switch
# (+ CUDA graphs) / fused + activation checkpointing; fp32 and bf16; compile time in its own column
run $PY -m benchmarks.bench_backbone --variants small-25 medium-49 --reps 5 --json "$OUT/backbone_fp32.json" \
    --md "$OUT/backbone_fp32.md"
run $PY -m benchmarks.bench_backbone --variants small-25 --reps 5 --amp --json "$OUT/backbone_bf16.json" \
    --md "$OUT/backbone_bf16.md"
# the Mask R-CNN training step needs mmdet (mmcv with CUDA ops), which this machine may not have
if $PY -c 'import mmdet, mmcv.ops' 2>/dev/null; then
  run $PY -m benchmarks.bench_train --configs configs/mask-rcnn_coc-small-25_fpn_1x_coco.py --iters 5 \
      --json "$OUT/train.json" --md "$OUT/train.md"
else
  echo "== bench_train.py skipped: mmdet / mmcv ops not installed here" | tee "$OUT/train.md"
fi
echo "== total $((SECONDS - T0)) s, status $status"

cat "$OUT"/tuning.md "$OUT"/correctness.md "$OUT"/mixer*.md "$OUT"/backbone*.md "$OUT"/train.md
exit $status
