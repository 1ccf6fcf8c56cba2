#!/usr/bin/env bash
# Create (or update) the project's virtual environment with the real MMDetection stack:
#   torch 2.14.1 + torchvision 0.29.1 (triton comes with torch), mmengine 0.10.x,
#   mmcv 2.1.0 *with its compiled ops* (built once from the PyPI source, cached as a wheel),
#   mmdet 3.3.0, pycocotools, numpy, pytest, matplotlib, mkdocs (the docs), and this package (editable);
#   triton 3.6.0 in <venv>/triton-3.6 for the compile gate under the GPU machines' triton.
#
# Environment knobs:
#   COC_VENV         where the venv lives            (default: <repo>/.venv)
#   COC_WHEEL_CACHE  where the built mmcv wheel is kept (default: ~/.cache/coc-wheels)
#   MAX_JOBS         parallel compile jobs for mmcv  (default: nproc)
# A second run finds everything installed and the wheel cached, and takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${COC_VENV:-$ROOT/.venv}"
CACHE="${COC_WHEEL_CACHE:-$HOME/.cache/coc-wheels}"
PYTHON="${PYTHON:-python3}"
TORCH_VER=2.14.1
TV_VER=0.29.1
MMCV_VER=2.1.0
T0=$(date +%s)

say() { printf '[setup %4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment at $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

# Is a distribution installed at exactly this version? (fast: no resolver, no network)
# -I: ignore the current directory, whose *.egg-info would otherwise count as installed.
have() { "$PY" -I - "$1" "$2" <<'PYEOF'
import sys
from importlib import metadata
try:
    v = metadata.version(sys.argv[1])
except metadata.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if v.split('+')[0] == sys.argv[2] or sys.argv[2] == '*' else 1)
PYEOF
}

if ! have torch "$TORCH_VER" || ! have torchvision "$TV_VER"; then
  say "installing torch $TORCH_VER + torchvision $TV_VER (from the local disk where available)"
  "${PIP[@]}" install "torch==$TORCH_VER" "torchvision==$TV_VER"
fi

# mmcv's setup.py needs pkg_resources (setuptools < 81); torch 2.14 asks for setuptools >= 77.
if ! have mmengine '*' || ! have pycocotools '*' || ! have pytest '*' || ! have matplotlib '*' \
   || ! "$PY" -I -W ignore -c 'import pkg_resources' 2>/dev/null; then
  say "installing build tools and Python dependencies"
  "${PIP[@]}" install "setuptools>=77,<81" wheel "numpy<2" "mmengine>=0.10.4,<0.11" pycocotools \
      pytest "matplotlib>=3.7" "opencv-python>=4.8,<5" terminaltables scipy shapely six tqdm \
      "torch==$TORCH_VER"
fi

# ---- mmcv 2.1.0 with compiled ops: build once, cache the wheel -------------------------------
PYTAG=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WDIR="$CACHE/mmcv-$MMCV_VER-torch$TORCH_VER-$PYTAG"
mmcv_ops_ok() { "$PY" -c 'import mmcv, mmcv.ops; from mmcv.ops import nms, RoIAlign' >/dev/null 2>&1; }
if ! have mmcv "$MMCV_VER" || ! mmcv_ops_ok; then
  WHEEL=$(ls "$WDIR"/mmcv-"$MMCV_VER"-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$WHEEL" ]; then
    say "no cached mmcv wheel in $WDIR: building mmcv $MMCV_VER with CPU ops (about 7-10 min on 2 cores)"
    BUILD=$(mktemp -d)
    trap 'rm -rf "$BUILD"' EXIT
    "${PIP[@]}" download --no-deps --no-binary :all: "mmcv==$MMCV_VER" -d "$BUILD"
    tar -xzf "$BUILD"/mmcv-"$MMCV_VER".tar.gz -C "$BUILD"
    SRC="$BUILD/mmcv-$MMCV_VER"
    # torch 2.14 headers need C++20; mmcv 2.1.0 asks for c++14/c++17.
    sed -i -E 's/-std=c\+\+1[47]/-std=c++20/g' "$SRC/setup.py"
    grep -q 'c++20' "$SRC/setup.py" || { echo "setup: could not patch mmcv's C++ standard" >&2; exit 1; }
    # the CPU build compiles csrc/pytorch/*.cpp and csrc/pytorch/cpu/*.cpp
    NSRC=$(find "$SRC/mmcv/ops/csrc/pytorch" "$SRC/mmcv/ops/csrc/pytorch/cpu" -maxdepth 1 -name '*.cpp' | wc -l)
    say "compiling $NSRC C++ sources; a progress line follows every 30 s"
    mkdir -p "$WDIR"
    # torch's extension builder runs ninja with its output captured, so progress is read off the
    # object files appearing in the build tree.
    ( last=-1
      while sleep 30; do
        n=$(find "$SRC/build" -name '*.o' 2>/dev/null | wc -l)
        [ "$n" != "$last" ] && say "  compiled $n/$NSRC objects" && last=$n
      done ) &
    WATCH=$!
    # -g0: no debug info (much faster to compile); -O2 keeps the CPU ops fast.
    if ! (cd "$SRC" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="-O2 -g0" \
          "$PY" -m pip wheel --no-deps --no-build-isolation . -w "$WDIR" > "$BUILD/build.log" 2>&1); then
      kill "$WATCH" 2>/dev/null || true
      tail -n 60 "$BUILD/build.log" >&2
      echo "setup: building mmcv failed (log above)" >&2
      exit 1
    fi
    kill "$WATCH" 2>/dev/null || true
    WHEEL=$(ls "$WDIR"/mmcv-"$MMCV_VER"-*.whl 2>/dev/null | head -n1 || true)
    [ -n "$WHEEL" ] || { echo "setup: mmcv build produced no wheel" >&2; exit 1; }
    say "cached $WHEEL"
  else
    say "installing cached mmcv wheel $(basename "$WHEEL")"
  fi
  "${PIP[@]}" install --no-deps --force-reinstall "$WHEEL"
  # mmcv's own runtime deps (addict, yapf, packaging, ...), without touching torch.
  "${PIP[@]}" install addict packaging Pillow pyyaml "yapf<0.40.2" "numpy<2"
  mmcv_ops_ok || { echo "setup: mmcv installed but mmcv.ops does not import" >&2; exit 1; }
fi

if ! have mmdet 3.3.0; then
  # --no-deps: its dependencies are above, and its mmcv pin must not pull mmcv from PyPI (ours is built).
  say "installing mmdet 3.3.0"
  "${PIP[@]}" install --no-deps "mmdet==3.3.0"
fi

if ! have mmsegmentation 1.2.2; then
  # --no-deps like mmdet (its mmcv pin must not replace our build); its own extra dependencies next to it
  say "installing mmsegmentation 1.2.2"
  "${PIP[@]}" install prettytable ftfy regex
  "${PIP[@]}" install --no-deps "mmsegmentation==1.2.2"
fi

if ! have timm 1.0.31; then
  # the classification models (timm registry); --no-deps keeps torch/torchvision as installed above
  say "installing timm 1.0.31"
  "${PIP[@]}" install "huggingface_hub>=0.20" "safetensors>=0.4" pyyaml
  "${PIP[@]}" install --no-deps "timm==1.0.31"
fi

# timm's own model tests (tests/test_models.py of its source distribution), which tests/models/test_timm_suite.py
# runs against the coc_* models: the file of the installed version, fetched like any package file
TIMM_TESTS="$VENV/share/timm-tests/1.0.31"
if [ ! -f "$TIMM_TESTS/tests/test_models.py" ]; then
  say "fetching timm 1.0.31's test files (its source distribution)"
  TMP_SDIST="$(mktemp -d)"
  "${PIP[@]}" download --no-deps --no-binary :all: "timm==1.0.31" -d "$TMP_SDIST"
  "$PY" - "$TMP_SDIST/timm-1.0.31.tar.gz" "$TIMM_TESTS" <<'PYEOF'
import os, sys, tarfile
src, dest = sys.argv[1], sys.argv[2]
with tarfile.open(src) as tar:
    keep = [m for m in tar.getmembers() if m.isfile()
            and (m.name.startswith("timm-1.0.31/tests/") or m.name == "timm-1.0.31/pyproject.toml")]
    for m in keep:
        m.name = m.name[len("timm-1.0.31/"):]
        if os.path.isabs(m.name) or ".." in m.name.split("/"):  # regular files inside dest only
            sys.exit(f"unsafe path in the timm sdist: {m.name}")
    # extraction filters exist from Python 3.10.12 / 3.11.4 on (the project takes any 3.10+): where they do, the
    # "data" filter as well; the members are regular files with checked names either way
    tar.extractall(dest + ".partial", members=keep, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
os.replace(dest + ".partial", dest)
PYEOF
  rm -rf "$TMP_SDIST"
fi

if ! have psutil 7.2.2; then
  # mmdet's and mmseg's stock analysis tools (analysis_tools/benchmark.py) read memory and CPU through it
  say "installing psutil 7.2.2"
  "${PIP[@]}" install "psutil==7.2.2"
fi

if ! have onnx 1.23.2 || ! have onnxruntime 1.32.0 || ! have onnxscript 0.7.2; then
  # ONNX export (tools/export_onnx.py: torch.onnx's exporter needs onnxscript; onnxruntime checks the file)
  say "installing onnx 1.23.2, onnxscript 0.7.2, onnxruntime 1.32.0"
  "${PIP[@]}" install "onnx==1.23.2" "onnxscript==0.7.2" "onnxruntime==1.32.0" "numpy<2"
fi

if ! have pytest-xdist 3.8.0; then
  # make test runs the suite on two workers (pytest -n): most tests use one core
  say "installing pytest-xdist 3.8.0"
  "${PIP[@]}" install "pytest-xdist==3.8.0"
fi

if ! have ruff 0.17.6; then
  # the linter make test runs first (configured in pyproject.toml)
  say "installing ruff 0.17.6"
  "${PIP[@]}" install "ruff==0.17.6"
fi

if ! have mkdocs 1.6.1 || ! have mkdocs-material 9.8.1 || ! have mkdocstrings 1.0.8 || ! have mkdocstrings-python 2.0.11; then
  # the documentation site (make docs; tests/integration/test_docs.py builds it strictly)
  say "installing mkdocs 1.6.1, mkdocs-material 9.8.1, mkdocstrings 1.0.8 + mkdocstrings-python 2.0.11"
  "${PIP[@]}" install "mkdocs==1.6.1" "mkdocs-material==9.8.1" "mkdocstrings==1.0.8" "mkdocstrings-python==2.0.11"
fi

# triton 3.6 (the GPU machines' version) beside the project's own, for the compile gate under it
# (tests/ops/test_compile_gate.py); nothing imports it unless PYTHONPATH names the folder
T36="$VENV/triton-3.6"
if ! (cd / && PYTHONPATH="$T36" "$PY" -c 'import sys, triton; sys.exit(triton.__version__ != "3.6.0")') 2>/dev/null; then
  say "installing triton 3.6.0 beside (for the compile gate under the GPU machines' triton)"
  rm -rf "$T36"
  "${PIP[@]}" install --no-deps --target "$T36" "triton==3.6.0"
fi

# editable install of this checkout (checked from outside it, so the source tree itself doesn't count)
if ! (cd / && "$PY" -c "import os, sys, coc_kernels, coc_det
sys.exit(os.path.dirname(os.path.dirname(os.path.abspath(coc_kernels.__file__))) != sys.argv[1])" "$ROOT") 2>/dev/null; then
  say "installing this package (editable)"
  "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
fi

(cd / && "$PY" - <<'PYEOF'
import torch, torchvision, triton, mmengine, mmcv, mmdet, mmseg, mmcv.ops, pycocotools, numpy, timm, onnxruntime
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, triton {triton.__version__}, "
      f"mmengine {mmengine.__version__}, mmcv {mmcv.__version__} (ops), mmdet {mmdet.__version__}, "
      f"mmseg {mmseg.__version__}, "
      f"timm {timm.__version__}, onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}")
import coc_kernels, coc_det
assert coc_det.HAS_MMDET and coc_det.HAS_MMSEG, "coc_det did not register with mmdet and mmseg"
PYEOF
)
say "done: activate with 'source ${VENV#$ROOT/}/bin/activate'"
