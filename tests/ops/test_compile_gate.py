"""GPU compile gate, on the CPU: every kernel launch the op makes at the detection shapes (every arch of the
zoo, stages 1-4, 4/25/49 centres, fp32/fp16/bf16, both denominators, and the assignment maps) compiles
ahead of time for sm_80 and sm_90 without register spills, and for sm_100. The interpreter, which runs the
other kernel tests, proves only the math: it accepts kernels that do not compile for any GPU."""
import os
import subprocess
import sys

from coc_det.backbone import ARCH_SETTINGS, PROPOSAL_OF_CENTRES
from coc_kernels import DENOMINATORS

from conftest import ROOT  # noqa: E402


def test_every_launch_compiles_for_sm80_sm90_without_spills(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    md = tmp_path / "resources.md"
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "kernel_resources.py"), "--md", str(md)],
                       env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    text = md.read_text()
    # the cases recorded are every (arch, stage, centres, dtype) x (assignment maps + each denominator)
    n_cases = len(ARCH_SETTINGS) * 4 * len(PROPOSAL_OF_CENTRES) * 3 * (1 + len(DENOMINATORS))
    assert f"covering {n_cases} cases" in text
    rows = [line for line in text.splitlines() if line.startswith("| _")]
    kernels = {row.split("|")[1].strip() for row in rows}
    assert kernels == {"_pool_kernel", "_assign_kernel", "_dispatch_kernel", "_bwd_do_kernel",
                       "_bwd_main_kernel", "_bwd_pool_kernel"}
    assert rows and all(row.rstrip().endswith("| yes |") for row in rows)
    for row in rows:  # "regs / spill bytes / shared" at sm_80 and sm_90
        cells = row.split("|")
        for cell in cells[4:6]:
            regs, spills, shared = (int(t) for t in cell.split("/"))
            assert spills == 0 and 0 < regs <= 255
        # static proxies (their per-kernel targets are checked by the script: a miss is not "yes"):
        # sm_90 programs / warps per multiprocessor, layout conversions inside loops
        programs, warps = (int(t) for t in cells[7].split("/"))
        assert programs >= 1 and warps == programs * int(cells[2].split(" w=")[1].split()[0]), row
        assert int(cells[8]) >= 0, row


def test_launches_and_allocations_per_step_are_pinned():
    """Static proxy of host time (stages 2-4 are launch-bound): the fused op's launches and buffer
    allocations per call, recorded without running anything. Today: forward 3 launches / 10 buffers, backward
    3 / 8 (fp32 x), assignment maps 2 / 4. A change that adds launches or per-step allocations fails here
    and must say why (README "Static proxies")."""
    import torch

    from coc_kernels import cluster_assignment, context_cluster
    from coc_kernels.ops import context_cluster as ops
    allocated = []
    real_empty = ops._empty

    def counting_empty(shape, dtype, device):
        allocated.append(tuple(shape))
        return real_empty(shape, dtype, device)

    ops._empty = counting_empty
    try:
        x = torch.empty(2, 64, 32, 48, requires_grad=True)
        v = torch.empty(2, 64, 32, 48, requires_grad=True)
        a, b = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
        counts = {}
        with ops.record_launches(execute=False) as rec:
            y = context_cluster(x, v, a, b, heads=2, proposal=5, fold=4, impl="triton")
        counts["forward"] = (len(rec), len(allocated))
        allocated.clear()
        with ops.record_launches(execute=False) as rec:
            y.backward(torch.empty_like(y))
        counts["backward"] = (len(rec), len(allocated))
        allocated.clear()
        with ops.record_launches(execute=False) as rec:
            cluster_assignment(x, a, b, heads=2, proposal=5, fold=4, impl="triton")
        counts["assignment"] = (len(rec), len(allocated))
    finally:
        ops._empty = real_empty
    assert counts == {"forward": (3, 10), "backward": (3, 8), "assignment": (2, 4)}
