#!/usr/bin/env python
"""Whole Context Cluster backbone, forward+backward at detection size: ours vs the original, eager and compiled,
side by side in one run.

    python -m benchmarks.bench_backbone [--variants small-25 medium-49] [--batch 2] [--size 800 1344] [--amp]
                                        [--impls dense dense+compile triton triton+compile ...] [--json F] [--md F]

Implementations (``MIXER[+FLAG...]``):

* ``dense``: every mixer runs the original's dense formulation, autocast applying to it as in the original
  (the baseline every ratio refers to); ``dense+compile``: ``torch.compile(model)`` of that backbone with
  torch's defaults, the alternative a user would try first;
* ``triton``: the fused kernels; ``triton+compile``: the backbone's own switch ``compile=True`` (one graph,
  the fused op opaque, inductor fusing GroupNorm / layer scale / residuals / MLP); ``+graphs`` adds CUDA
  graphs (``mode="reduce-overhead"``); ``+cp``: ``with_cp=True`` (activation checkpointing);
* ``light``: the memory-light torch path.

Time: median of CUDA-event timings after warm-up; the first call's time (compilation included) is
reported on its own. Memory: peak allocated above the model and input during one step. On a CPU it runs
forward only, batch 1, so that it finishes; ``--backend aot_eager`` there captures the graphs without
inductor's (slow on these CPUs) code generation.
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks._harness import (ON_GPU, baseline_rows, compile_options, configurations_line, parse_impl, peak_extra_gb,
                                 set_impl, time_steps)
from benchmarks._report import report
from coc_det.backbone import COMPILE_DEFAULTS, PROPOSAL_OF_CENTRES, ContextCluster


def build(impl: str, arch: str, proposal: int, device: str, backend: str = "inductor"):
    """``(model, callable)`` of one implementation: the callable runs the (maybe compiled) model."""
    mixer, flags = parse_impl(impl)
    model = ContextCluster(arch, proposal=proposal, with_cp="cp" in flags).to(device)
    set_impl(model, mixer)
    options = compile_options(flags, backend)
    if options is None:
        return model, model
    if mixer == "dense":  # the user's alternative: torch.compile of the original model, torch's defaults
        return model, torch.compile(model, **options)
    model.compile_cfg = dict(COMPILE_DEFAULTS, **options)  # the backbone's own switch
    return model, model


def bench(variant, impl, batch, size, amp, reps, warmup, backend="inductor"):
    arch, centres = variant.split("-")
    proposal = PROPOSAL_OF_CENTRES[int(centres)]
    device = "cuda" if ON_GPU else "cpu"
    # a fresh dynamo cache per variant: compiled graphs of earlier models would count against its per-function
    # limit, past which torch runs the model eager without saying so in the table
    torch._dynamo.reset()
    model, run = build(impl, arch, proposal, device, backend)
    x = torch.randn(batch, 3, *size, device=device)
    ctx = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if amp else torch.enable_grad

    def step():
        if ON_GPU:
            with ctx():
                outs = run(x)
            sum(o.float().sum() for o in outs).backward()
        else:
            with torch.no_grad(), ctx():
                run(x)

    first_ms, ms = time_steps(step, warmup, reps, after=lambda: model.zero_grad(set_to_none=True))
    res = dict(variant=variant, impl=impl, batch=batch, size=list(size), amp=amp, ms=ms, first_call_ms=first_ms,
               what="fwd+bwd" if ON_GPU else "fwd")
    peak = peak_extra_gb(step)
    if peak is not None:
        res["peak_extra_gb"] = peak
    model = run = None  # free them before the next row (not del: the closures above name them)
    if ON_GPU:
        torch.cuda.empty_cache()
    return res


def table(rows, title):
    lines = [title, "", "| variant | impl | time (ms) | first call (ms, incl. compile) | peak extra memory (GB) "
                        "| vs dense | vs dense+compile |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.1f}" if "ms" in r else r.get("error", "-")
        first = f"{r['first_call_ms']:.0f}" if "first_call_ms" in r else "-"
        mem = f"{r['peak_extra_gb']:.2f}" if "peak_extra_gb" in r else "-"
        ratios = [f"{r['ms'] / ref['ms']:.2f}x time" if ref and "ms" in r else "-"
                  for ref in baseline_rows(rows, r, "variant", "ms")]
        lines.append(f"| {r['variant']} | {r['impl']} | {ms} | {first} | {mem} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=["small-25", "medium-49"])
    p.add_argument("--impls", nargs="+",
                   default=["dense", "dense+compile", "triton", "triton+compile", "triton+compile+graphs",
                            "triton+cp"] if ON_GPU else ["dense", "light"],
                   help="MIXER[+compile][+graphs][+cp], see above")
    p.add_argument("--batch", type=int, default=2 if ON_GPU else 1)
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344])
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the +compile variants")
    p.add_argument("--reps", type=int, default=10 if ON_GPU else 2)
    p.add_argument("--warmup", type=int, default=3 if ON_GPU else 1)
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    for impl in args.impls:
        parse_impl(impl)  # refuse a typo before anything runs
    rows = []
    for variant in args.variants:
        for impl in args.impls:
            try:
                r = bench(variant, impl, args.batch, args.size, args.amp, args.reps, args.warmup, args.backend)
            except torch.cuda.OutOfMemoryError:
                r = dict(variant=variant, impl=impl, error="OOM")
                torch.cuda.empty_cache()
            except Exception as e:  # one failing row (a compile error) is a finding, not the end of the table
                first_line = (str(e).splitlines() or [""])[0][:120].replace("|", "/")
                r = dict(variant=variant, impl=impl, error=f"{type(e).__name__}: {first_line}")
                torch._dynamo.reset()
            rows.append(r)
            print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name() if ON_GPU else f"CPU ({torch.get_num_threads()} threads)"
    what = "fwd+bwd" if ON_GPU else "forward only"
    title = (f"Backbone benchmark on {dev}, torch {torch.__version__}, batch {args.batch}, "
             f"{args.size[0]}x{args.size[1]}, "
             f"{'bf16 autocast' if args.amp else 'fp32'}, {what}, compile backend {args.backend}, "
             f"median of {args.reps}")
    report(table(rows, title) + "\n\n" + configurations_line(), rows, dev, args.json, args.md)


if __name__ == "__main__":
    main()
