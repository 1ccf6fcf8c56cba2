"""Test set-up. Without CUDA the Triton kernels run under the interpreter on the CPU (set before triton is
imported); with CUDA they run compiled on the GPU, and the kernel tests put their tensors there (``DEVICE``).
Every buffer the op allocates is filled with NaN first, so an element that no kernel writes fails a test.

Layout, by what a test needs: ``ops/`` torch + triton (the op, its kernels, the compile gate), ``models/`` torch +
triton (timm where installed: skipped otherwise), ``integration/`` mmdet, mmseg, mmengine, timm, onnx, the tools
and benchmarks. ``benchmarks/gpu_check.sh`` runs ``ops/`` and ``models/`` compiled on a GPU. Helpers shared by
all (this file, ``original_coc.py``, ``data/``) stay here; this folder is on ``sys.path`` for them."""
import os
import os.path as osp
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the shipped launch configurations (tests of the tuner turn it on), and never the user's tuning cache
os.environ.setdefault("COC_TUNING", "0")
os.environ.setdefault("COC_TUNING_CACHE", os.path.join(tempfile.mkdtemp(prefix="coc-tuning-"), "tuning.json"))

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the repository root
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: Marks tests whose Triton cases the interpreter cannot fail: its ``tl.argmax`` takes the first maximum
#: whatever ``tie_break_left`` says, and it runs programs one after another (bitwise deterministic whatever
#: the kernels do). On the CPU those cases check the math only; benchmarks/gpu_check.sh runs them compiled.
only_compiled_can_fail = pytest.mark.only_compiled_can_fail


#: the longest files (the compile gates: 10-14 min of a 2-core machine's suite) run first. ``make test`` hands files
#: to its two workers in collection order (``--dist loadfile --no-loadscope-reorder``; xdist's default starts the
#: files with the most tests first), and a long file started last ends the run alone while the other worker idles
LONGEST_FIRST = ("test_compile_gate.py", "test_compile_gate_36.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def pytest_configure(config):
    config.addinivalue_line("markers", "only_compiled_can_fail: the Triton interpreter cannot fail this test's "
                                       "triton cases (tie rule, determinism); run it compiled on a GPU")


def pytest_terminal_summary(terminalreporter):
    if DEVICE == "cuda":
        return
    ran = [r for r in terminalreporter.stats.get("passed", []) if "only_compiled_can_fail" in r.keywords]
    if ran:
        terminalreporter.write_line(
            f"note: {len(ran)} passed tests are marked only_compiled_can_fail: their triton cases ran in the Triton "
            "interpreter, which cannot fail them (argmax tie rule, determinism); benchmarks/gpu_check.sh runs them "
            "compiled on a GPU")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_outputs():
    try:
        from coc_kernels.ops import context_cluster as ops
    except ImportError:  # pragma: no cover - no triton
        yield
        return
    with ops.launch_policy(poison=True):
        yield
