#!/usr/bin/env python
"""Fused (Triton, compiled) vs dense reference at the real detection shapes: forward and gradients.

For every (arch, stage, centres): the share of pixels whose hard assignment agrees (near-ties can flip
between two summation orders; expected to be a handful per million), and the relative L2 error
``|a - b| / |b|`` (see :func:`rel`) of the output and of the gradients of x, value, alpha, beta. Exits non-zero if the
agreement drops below 99.99 % or a relative error exceeds 1e-4 (fp32) / 2e-2 (bf16).

    python benchmarks/check_correctness.py [--arch small medium] [--batch 2] [--dtype float32 bfloat16]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coc_kernels import cluster_assignment, context_cluster  # noqa: E402
from benchmarks.bench_mixer import CENTRES, FOLDS, HEADS, make_inputs  # noqa: E402

TOL = {"float32": 1e-4, "bfloat16": 2e-2}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: Triton interpreter, small --size only


def rel(a, b, dy):
    """``|a - b| / max(|b|, 1e-3 |dy| sqrt(numel(b)/numel(dy)))``: relative, with a floor at the scale of
    the upstream gradient, so that a gradient that is ~0 (e.g. dx where every window is one point and
    cos = 1) compares its rounding noise with the gradients' scale instead of with itself."""
    floor = 1e-3 * dy.float().norm() * (b.numel() / dy.numel()) ** 0.5
    return ((a.float() - b.float()).norm() / torch.maximum(b.float().norm(), floor).clamp_min(1e-30)).item()


def check(arch, stage, centres, batch, dtype, img=(800, 1344)):
    heads, p, fold = HEADS[arch][stage - 1], CENTRES[centres], FOLDS[stage - 1]
    x, v, a, b = make_inputs(arch, stage, batch, dtype, DEVICE, img)
    kw = dict(heads=heads, proposal=p, fold=fold)
    with torch.no_grad():
        agree = (cluster_assignment(x, a, b, impl="triton", **kw)
                 == cluster_assignment(x.float(), a, b, impl="dense", **kw)).float().mean().item()
    dy = torch.randn_like(x)
    out = {}
    for impl in ("triton", "dense"):
        xi, vi = (x, v) if impl == "triton" else (x.detach().float().requires_grad_(), v.detach().float().requires_grad_())
        y = context_cluster(xi, vi, a, b, impl=impl, **kw)
        out[impl] = (y,) + torch.autograd.grad(y, (xi, vi, a, b), dy.to(y.dtype))
        del y
    errs = [rel(t, r, dy) for t, r in zip(out["triton"], out["dense"])]
    del out
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return agree, errs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["small", "medium"])
    p.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--centres", nargs="+", type=int, default=[4, 25, 49])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344], help="image size the shapes derive from")
    p.add_argument("--md", help="write the table here")
    args = p.parse_args(argv)
    if DEVICE == "cpu" and args.size[0] * args.size[1] > 256 * 256:
        sys.exit("without CUDA the Triton kernels run in the interpreter: pass a small --size (e.g. 128 128)")
    torch.manual_seed(0)
    dev = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (Triton interpreter)"
    lines = [f"Fused vs dense on {dev}, batch {args.batch}, {args.size[0]}x{args.size[1]} input shapes", "",
             "| dtype | arch | stage | centres | assignment agreement | y | dx | dvalue | dalpha | dbeta | ok |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    ok_all = True
    for dtype in args.dtype:
        for arch in args.arch:
            for stage in args.stages:
                for centres in args.centres:
                    agree, errs = check(arch, stage, centres, args.batch, getattr(torch, dtype), tuple(args.size))
                    ok = agree >= 0.9999 and max(errs) <= TOL[dtype]
                    ok_all &= ok
                    lines.append(f"| {dtype} | {arch} | {stage} | {centres} | {100 * agree:.4f} % | "
                                 + " | ".join(f"{e:.1e}" for e in errs) + f" | {'yes' if ok else 'NO'} |")
                    print(lines[-1], flush=True)
    md = "\n".join(lines)
    print("\n" + md)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md + "\n")
    sys.exit(0 if ok_all else 1)


if __name__ == "__main__":
    main()
