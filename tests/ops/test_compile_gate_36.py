"""The compile gate under triton 3.6, the GPU machines' version (a file of its own: the suite runs files in
parallel, and this one need not wait behind the triton 3.8 sweep of ``test_compile_gate.py``)."""
import os

from test_compile_gate import TRITON_36, _check_table, _run_gate


def test_detection_launches_hold_the_gate_under_triton_36(tmp_path):
    """Triton 3.6 (the GPU machines'), which lays the same code out differently (under it the kernels before
    2026-12-02 read every tile with a warp's lanes along channels): the small detection backbone's launches
    in fp32 and bf16 (medium and base give the same specialisations; fp16 and the other tile widths of the zoo
    are in the full sweep,
    ``PYTHONPATH=.venv/triton-3.6 python -m benchmarks.kernel_resources``)."""
    import triton
    here = triton.__version__.startswith("3.6.")  # the GPU machines run it as their own
    assert here or os.path.isdir(os.path.join(TRITON_36, "triton")), (
        f"no triton 3.6 at {TRITON_36}: tools/setup_env.sh installs it there (or set COC_TRITON36_DIR)")
    archs = ("small",)
    text = _run_gate(tmp_path, None if here else TRITON_36, ("--arch", *archs))
    assert "Kernel resources (triton 3.6." in text
    _check_table(text, len(archs))
