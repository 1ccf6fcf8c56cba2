#!/usr/bin/env bash
# Put an earlier commit's kernels beside today's, for benchmarks/gpu_check.sh to time both in the same run:
#   bash benchmarks/prepare_gpu_check.sh [COMMIT]      (default: 40bb8f7, the kernels before issue 25)
# writes .gpu_old/coc_kernels (ignored by git); pass it to the device run with carry=[".gpu_old"].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
COMMIT=${1:-40bb8f7}
rm -rf .gpu_old && mkdir -p .gpu_old
git archive "$COMMIT" coc_kernels | tar -x -C .gpu_old
echo "$COMMIT" > .gpu_old/COMMIT
echo "kernels of $(git log -1 --format='%h %ad %s' --date=short "$COMMIT") in .gpu_old/coc_kernels"
# the old kernels run under today's coc_det and benchmarks (gpu_check.sh): refuse a pair that does not import
if ! (cd .gpu_old && PYTHONPATH="$OLDPWD" python -c '
import os, coc_kernels, coc_det.backbone, benchmarks._harness
assert os.path.abspath(coc_kernels.__file__).startswith(os.getcwd()), coc_kernels.__file__'); then
  echo "the kernels of $COMMIT do not import under today's coc_det / benchmarks: pick a later commit" >&2
  exit 1
fi
