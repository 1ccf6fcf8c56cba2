#!/usr/bin/env python
"""GPU: per-kernel time of the fused path under alternative launch configurations (tuning aid).

For each candidate (overrides of ``launch_config`` per kernel, or of the chunking target) and each case,
the CUDA time of every kernel of one forward+backward (torch.profiler, mean of 10 steps). The defaults
in ``coc_kernels/ops/context_cluster.py`` are chosen from this table; each must then pass the compile gate
(``benchmarks/kernel_resources.py``: no spills).

    python benchmarks/sweep_configs.py [--md out.md]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.bench_mixer import CENTRES, FOLDS, HEADS, make_inputs  # noqa: E402
from coc_kernels import context_cluster  # noqa: E402
from coc_kernels.ops import context_cluster as ops  # noqa: E402

KERNELS = ["pool", "assign", "dispatch", "bwd_do", "bwd_main", "bwd_pool"]
CANDIDATES = {
    "default": {},
    "stages=2": {"*": {"num_stages": 2}},
    "stages=3": {"*": {"num_stages": 3}},
    "BN=128 (1-dot kernels)": {k: {"BLOCK_N": 128} for k in ("pool", "dispatch", "bwd_do", "bwd_pool")},
    "warps=4 (1-dot kernels)": {k: {"num_warps": 4} for k in ("pool", "dispatch", "bwd_do", "bwd_pool")},
    "assign/bwd_main BN=32": {"assign": {"BLOCK_N": 32}, "bwd_main": {"BLOCK_N": 32}},
    "assign/bwd_main warps=4": {"assign": {"num_warps": 4}, "bwd_main": {"num_warps": 4}},
    "target=4096": "T4096",
}
CASES = [("small", 1, 25, torch.float32), ("small", 1, 49, torch.float32), ("small", 4, 49, torch.float32)]


def kernel_times(arch, stage, centres, dtype):
    from torch.profiler import ProfilerActivity, profile
    heads, p, fold = HEADS[arch][stage - 1], CENTRES[centres], FOLDS[stage - 1]
    x, v, a, b = make_inputs(arch, stage, 2, dtype, "cuda")
    dy = torch.randn_like(x)

    def step():
        y = context_cluster(x, v, a, b, heads=heads, proposal=p, fold=fold, impl="triton")
        torch.autograd.grad(y, (x, v, a, b), dy)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        t = (getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)) / 10 / 1e3
        for k in KERNELS:
            if e.key == f"_{k}_kernel":
                out[k] = t
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--md")
    p.add_argument("--only", nargs="*", help="candidate names to run")
    args = p.parse_args(argv)
    lines = [f"Per-kernel CUDA time (ms per fwd+bwd) on {torch.cuda.get_device_name()}, batch 2, 800x1344", "",
             "| candidate | case | " + " | ".join(KERNELS) + " | sum |", "|---|---|" + "---|" * (len(KERNELS) + 1)]
    for name, cand in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        ops.CONFIG_OVERRIDES.clear()
        target = ops.TARGET_PROGRAMS
        if isinstance(cand, str):
            ops.TARGET_PROGRAMS = int(cand[1:])
        else:
            ops.CONFIG_OVERRIDES.update(cand)
        for arch, stage, centres, dtype in CASES:
            try:
                t = kernel_times(arch, stage, centres, dtype)
                cells = [f"{t.get(k, float('nan')):.4f}" for k in KERNELS] + [f"{sum(t.values()):.4f}"]
            except Exception as e:  # a config that does not compile is a result
                cells = [f"error: {str(e).splitlines()[0][:60]}"] + [""] * len(KERNELS)
            lines.append(f"| {name} | {arch} s{stage} {centres}c {str(dtype)[6:]} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
        ops.TARGET_PROGRAMS = target
    ops.CONFIG_OVERRIDES.clear()
    md = "\n".join(lines)
    print("\n" + md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
