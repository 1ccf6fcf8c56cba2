#!/usr/bin/env python
"""GPU: per-kernel time of the fused path under alternative launch configurations (tuning aid).

For each candidate (overrides of ``kernel_config`` per kernel, or of the chunking target) and each case,
the CUDA time of every kernel of one forward+backward (torch.profiler, mean of 10 steps). The defaults
in ``coc_kernels/ops/context_cluster/config.py`` (``KERNEL_CONFIGS``) are chosen from this table; each must then
pass the compile gate (``benchmarks/kernel_resources.py``: no spills).

    python -m benchmarks.sweep_configs [--md out.md]
"""
from __future__ import annotations

import argparse

import torch

from benchmarks._harness import kernel_times
from coc_kernels.ops import context_cluster as ops

#: the kernels one forward+backward launches (the table's, less the assignment-maps-only form)
KERNELS = [k for k in ops.KERNELS if k != "assign_only"]
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


def times_by_kernel(arch, stage, centres, dtype):
    """``{kernel: ms}`` for the op's kernels in one forward+backward step (batch 2)."""
    found = {name: ms for name, _, ms in kernel_times(arch, stage, centres, 2, dtype)}
    return {k: found[f"_{k}_kernel"] for k in KERNELS if f"_{k}_kernel" in found}


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
        change = dict(target_programs=int(cand[1:])) if isinstance(cand, str) else dict(config_overrides=cand)
        for arch, stage, centres, dtype in CASES:
            try:
                with ops.launch_policy(**change):
                    t = times_by_kernel(arch, stage, centres, dtype)
                cells = [f"{t.get(k, float('nan')):.4f}" for k in KERNELS] + [f"{sum(t.values()):.4f}"]
            except Exception as e:  # a config that does not compile is a result
                cells = [f"error: {str(e).splitlines()[0][:60]}"] + [""] * len(KERNELS)
            lines.append(f"| {name} | {arch} s{stage} {centres}c {str(dtype)[6:]} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    md = "\n".join(lines)
    print("\n" + md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()
