#!/usr/bin/env python
"""Whole Context Cluster backbone, forward+backward at detection size: fused mixer vs the original's.

    python benchmarks/bench_backbone.py [--variants small-25 medium-49] [--batch 2] [--size 800 1344]
                                        [--amp] [--impls dense triton] [--json out.json] [--md out.md]

``dense`` runs every mixer through the original's dense formulation (the baseline); ``triton`` through
the fused kernels; ``reference`` through the memory-light torch path; ``triton+cp`` the fused kernels with
``with_cp=True`` (activation checkpointing: the memory it saves). ``--amp`` runs under bf16 autocast.
Time: median of CUDA-event timings after warm-up; memory: peak allocated above the model and input.
On a CPU it runs forward only, batch 1, so that it finishes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._report import report  # noqa: E402
from coc_det.backbone import PROPOSAL_OF_CENTRES, ContextCluster  # noqa: E402
from coc_kernels.functional import _pair  # noqa: E402
from coc_kernels.reference import context_cluster_dense  # noqa: E402

ON_GPU = torch.cuda.is_available()


def _original_forward(self, x):
    """The original Cluster.forward's arithmetic as it ran: the dense formulation called directly, so an
    enclosing autocast applies to it (the public op computes in fp32 inside on every path instead)."""
    out = context_cluster_dense(self.f(x), self.v(x), self.sim_alpha, self.sim_beta, heads=self.heads,
                                proposal=_pair(self.proposal, "proposal"), fold=_pair(self.fold, "fold"),
                                denominator=self.denominator)
    return self.proj(out)


def set_impl(model, impl):
    """Mixer implementation of every block; ``dense`` is the original's, autocast included (the baseline)."""
    for m in model.modules():
        if hasattr(m, "impl") and hasattr(m, "sim_alpha"):
            m.impl = impl
            if impl == "dense":
                m.forward = types.MethodType(_original_forward, m)


def bench(variant, impl, batch, size, amp, reps, warmup):
    arch, centres = variant.split("-")
    proposal = PROPOSAL_OF_CENTRES[int(centres)]
    device = "cuda" if ON_GPU else "cpu"
    mixer, _, cp = impl.partition("+")  # "triton+cp": with activation checkpointing of every block
    model = ContextCluster(arch, proposal=proposal, with_cp=cp == "cp").to(device)
    set_impl(model, mixer)
    x = torch.randn(batch, 3, *size, device=device)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if amp else torch.enable_grad

    def step():
        with ctx():
            outs = model(x)
        if ON_GPU:
            sum(o.float().sum() for o in outs).backward()

    times = []
    for i in range(warmup + reps):
        if ON_GPU:
            torch.cuda.synchronize()
        t = time.perf_counter()
        if ON_GPU:
            step()
            torch.cuda.synchronize()
        else:
            with torch.no_grad(), ctx():
                model(x)
        if i >= warmup:
            times.append((time.perf_counter() - t) * 1e3)
        model.zero_grad(set_to_none=True)
    res = dict(variant=variant, impl=impl, batch=batch, size=list(size), amp=amp,
               ms=statistics.median(times), what="fwd+bwd" if ON_GPU else "fwd")
    if ON_GPU:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        res["peak_extra_gb"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 30
        model.zero_grad(set_to_none=True)
    del model
    if ON_GPU:
        torch.cuda.empty_cache()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["small-25", "medium-49"])
    p.add_argument("--impls", nargs="+", default=["dense", "triton", "triton+cp"] if ON_GPU else ["dense", "reference"],
                   help="mixer implementations; '+cp' adds with_cp=True (activation checkpointing)")
    p.add_argument("--batch", type=int, default=2 if ON_GPU else 1)
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344])
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--reps", type=int, default=10 if ON_GPU else 2)
    p.add_argument("--warmup", type=int, default=3 if ON_GPU else 1)
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    rows = []
    for variant in args.variants:
        for impl in args.impls:
            try:
                r = bench(variant, impl, args.batch, args.size, args.amp, args.reps, args.warmup)
            except torch.cuda.OutOfMemoryError:
                r = dict(variant=variant, impl=impl, error="OOM")
                torch.cuda.empty_cache()
            rows.append(r)
            print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name() if ON_GPU else f"CPU ({torch.get_num_threads()} threads)"
    what = "fwd+bwd" if ON_GPU else "forward only"
    lines = [f"Backbone benchmark on {dev}, torch {torch.__version__}, batch {args.batch}, "
             f"{args.size[0]}x{args.size[1]}, {'bf16 autocast' if args.amp else 'fp32'}, {what}", "",
             "| variant | impl | time (ms) | peak extra memory (GB) | speed-up vs dense |", "|---|---|---|---|---|"]
    base = {r["variant"]: r for r in rows if r.get("impl") == "dense" and "ms" in r}
    for r in rows:
        ref = base.get(r["variant"])
        ratio = f"{ref['ms'] / r['ms']:.1f}x" if ref and "ms" in r else "-"
        ms = f"{r['ms']:.1f}" if "ms" in r else r.get("error", "-")
        mem = f"{r['peak_extra_gb']:.2f}" if "peak_extra_gb" in r else "-"
        lines.append(f"| {r['variant']} | {r['impl']} | {ms} | {mem} | {ratio} |")
    report("\n".join(lines), rows, dev, args.json, args.md)


if __name__ == "__main__":
    main()
