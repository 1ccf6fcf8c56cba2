"""Test set-up. Without CUDA the Triton kernels run under the interpreter on the CPU (set before triton is
imported); with CUDA they run compiled on the GPU, and the kernel tests put their tensors there (``DEVICE``).
Every buffer the op allocates is filled with NaN first, so an element that no kernel writes fails a test."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    try:
        from coc_kernels.ops import context_cluster as ops
    except ImportError:  # pragma: no cover - no triton
        return
    monkeypatch.setattr(ops, "POISON", True)
