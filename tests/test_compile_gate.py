"""GPU compile gate, on the CPU: every kernel launch the op makes at the detection shapes (every arch of the
zoo, stages 1-4, 4/25/49 centres, fp32/fp16/bf16, both denominators, and the assignment maps) compiles
ahead of time for sm_80 and sm_90 without register spills, and for sm_100. The interpreter, which runs the
other kernel tests, proves only the math: it accepts kernels that do not compile for any GPU."""
import os
import subprocess
import sys

from coc_det.backbone import ARCH_SETTINGS, PROPOSAL_OF_CENTRES
from coc_kernels import DENOMINATORS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
        for cell in row.split("|")[4:6]:
            regs, spills, shared = (int(t) for t in cell.split("/"))
            assert spills == 0 and 0 < regs <= 255
