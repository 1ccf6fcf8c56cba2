#!/usr/bin/env python
"""Speed and memory of the Context Cluster mixer (the op between the 1x1 convs) at detection shapes.

Implementations: ``dense`` (the original's formulation, the baseline every ratio refers to),
``dense+compile`` (torch.compile of it: what a user would try first), ``light`` (memory-light torch)
and ``triton`` (fused kernels). For each (arch, stage, centres): median time of forward, backward and
forward+backward, the peak memory allocated above the inputs during forward+backward, and the bandwidth the
time implies for the op's least memory traffic (``GB/s``: :func:`min_bytes` over the time; the memory system's
limit is the card's HBM bandwidth, e.g. 3.35 TB/s on an H100 SXM).

GPU: CUDA-event timing after warm-up. CPU (no CUDA): a reduced set - the torch paths, forward only, plus
a tiny interpreter smoke run of the Triton path - so the script runs anywhere.

    python -m benchmarks.bench_mixer [--arch small medium] [--centres 4 25 49] [--stages 1 2 3 4]
                                     [--batch 2] [--impls ...] [--json out.json] [--md out.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:  # the Triton smoke run needs the interpreter, set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from benchmarks._harness import (configurations_line, kernel_times, make_inputs, mixer_geometry, mixer_runner,  # noqa: E402
                                 time_steps)
from benchmarks._report import report  # noqa: E402
from coc_kernels import context_cluster  # noqa: E402
from coc_kernels.reference import context_cluster_dense  # noqa: E402

def _median_ms(fn, reps, warmup):
    return time_steps(fn, warmup, reps)[1]


def min_bytes(x, forward_only: bool) -> int:
    """The least memory traffic of one call, in bytes, for ``x`` (and a value map of its shape): the forward reads
    x and value and writes y; the backward reads dy, x and value and writes dx and dvalue (the per-centre tensors
    saved for backward are O(groups x centres x channels), ignored)."""
    maps = 3 if forward_only else 3 + 5
    return maps * x.numel() * x.element_size()


def measure(impl, arch, stage, centres, batch, dtype, reps, warmup, forward_only, img=(800, 1344)):
    device = "cuda" if ON_GPU else "cpu"
    heads, p, fold = mixer_geometry(arch, stage, centres)
    x, v, a, b = make_inputs(arch, stage, batch, dtype, device, img)
    f = mixer_runner(impl, heads, p, fold)
    res = dict(impl=impl, arch=arch, stage=stage, centres=centres, batch=batch, dtype=str(dtype).split(".")[-1],
               shape=list(x.shape), min_mb_fwd=min_bytes(x, True) / 2 ** 20,
               min_mb_fwd_bwd=min_bytes(x, False) / 2 ** 20)
    with torch.no_grad():
        res["fwd_ms"] = _median_ms(lambda: f(x, v, a, b), reps, warmup)
    if forward_only:
        return res
    dy = torch.randn_like(x)

    def fwd_bwd():
        y = f(x, v, a, b)
        torch.autograd.grad(y, (x, v, a, b), dy)

    y = f(x, v, a, b)

    def bwd():
        torch.autograd.grad(y, (x, v, a, b), dy, retain_graph=True)

    res["bwd_ms"] = _median_ms(bwd, reps, warmup)
    y = None  # free it (not del: bwd above names it)
    res["fwd_bwd_ms"] = _median_ms(fwd_bwd, reps, warmup)
    if ON_GPU:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        res["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    return res


def table(rows, forward_only):
    cols = ["fwd_ms"] if forward_only else ["fwd_ms", "bwd_ms", "fwd_bwd_ms", "peak_extra_mb"]
    base = {(r["arch"], r["stage"], r["centres"]): r for r in rows if r["impl"] == "dense"}
    key = "fwd_ms" if forward_only else "fwd_bwd_ms"
    head = ("| arch | stage | centres | impl | " + " | ".join(cols) + f" | speed-up vs dense ({key}) | "
            f"GB/s ({key}) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        ref = base.get((r["arch"], r["stage"], r["centres"]))
        ratio = f"{ref[key] / r[key]:.1f}x" if ref and r.get(key) else "-"
        vals = [f"{r[c]:.3f}" if isinstance(r.get(c), float) else "-" for c in cols]
        mb = r.get("min_mb_fwd" if forward_only else "min_mb_fwd_bwd")
        gbs = f"{mb * 2 ** 20 / (r[key] * 1e-3) / 1e9:.3g}" if mb and r.get(key) else "-"
        lines.append(f"| {r['arch']} | {r['stage']} | {r['centres']} | {r['impl']} | " + " | ".join(vals)
                     + f" | {ratio} | {gbs} |")
    return "\n".join(lines)


def triton_smoke():
    """CPU only: the fused op under the interpreter on a tiny shape agrees with the dense path."""
    x, v, a, b = (t.detach() for t in make_inputs("small", 4, 1, torch.float32, "cpu", img=(128, 160)))
    t = time.perf_counter()
    y = context_cluster(x, v, a, b, heads=8, proposal=2, fold=1, impl="triton")
    dt = (time.perf_counter() - t) * 1e3
    err = (y - context_cluster_dense(x, v, a, b, heads=8, proposal=(2, 2), fold=(1, 1))).abs().max().item()
    return f"triton (interpreter) smoke run, x {list(x.shape)}: {dt:.0f} ms, max |triton - dense| = {err:.2e}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["small", "medium"] if ON_GPU else ["small"])
    p.add_argument("--centres", nargs="+", type=int, default=[4, 25, 49])
    p.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3, 4] if ON_GPU else [1])
    p.add_argument("--batch", type=int, default=2 if ON_GPU else 1)
    p.add_argument("--impls", nargs="+",
                   default=["dense", "dense+compile", "light", "triton"] if ON_GPU else ["dense", "light"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--reps", type=int, default=20 if ON_GPU else 3)
    p.add_argument("--warmup", type=int, default=5 if ON_GPU else 1)
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344], help="image size the shapes derive from")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--md", help="write the markdown table here")
    p.add_argument("--plot", help="write a chart (time and memory per stage and centre count) here")
    p.add_argument("--profile", action="store_true",
                   help="GPU: also print the CUDA time of each kernel of the triton path (torch.profiler)")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    forward_only = not ON_GPU
    rows = []
    for arch in args.arch:
        for stage in args.stages:
            for centres in args.centres:
                for impl in args.impls:
                    try:
                        r = measure(impl, arch, stage, centres, args.batch, dtype, args.reps, args.warmup,
                                    forward_only, tuple(args.size))
                    except torch.cuda.OutOfMemoryError:
                        r = dict(impl=impl, arch=arch, stage=stage, centres=centres, error="OOM")
                        torch.cuda.empty_cache()
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name() if ON_GPU else f"CPU ({platform.processor() or platform.machine()}, " \
                                                      f"{torch.get_num_threads()} threads)"
    md = (f"Mixer benchmark on {dev}, torch {torch.__version__}, {args.dtype}, batch {args.batch}, "
          f"{args.size[0]}x{args.size[1]} input, "
          f"{'forward only' if forward_only else 'median of %d' % args.reps}\n\n" + table(rows, forward_only))
    if not ON_GPU:
        md += "\n\n" + triton_smoke()
    md += "\n\n" + configurations_line()
    report(md, rows, dev, args.json, args.md)
    if args.profile and ON_GPU:
        for arch in args.arch:
            for stage in args.stages:
                for centres in args.centres:
                    profile(arch, stage, centres, args.batch, dtype, tuple(args.size))
    if args.plot:
        plot(rows, args.plot, f"CoC mixer, {dev}, batch {args.batch}, {args.size[0]}x{args.size[1]}")


def profile(arch, stage, centres, batch, dtype, img):
    """Print the per-kernel CUDA time of the triton path's forward+backward."""
    print(f"\nkernels of triton fwd+bwd, {arch} stage {stage} {centres} centres, {str(dtype)[6:]} (per step):")
    for name, count, ms in kernel_times(arch, stage, centres, batch, dtype, img):
        print(f"  {ms:8.4f} ms  x{count:<3d} {name[:90]}")


def plot(rows, out, title):
    """Grouped bars: time (and peak memory, when measured) per (arch, stage, centres), one bar per impl."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if "error" not in r]
    key = "fwd_bwd_ms" if any("fwd_bwd_ms" in r for r in rows) else "fwd_ms"
    cases = list(dict.fromkeys((r["arch"], r["stage"], r["centres"]) for r in rows))
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    panels = [(key, "time (ms, " + key.replace("_ms", "").replace("_", "+") + ")")]
    if any("peak_extra_mb" in r for r in rows):
        panels.append(("peak_extra_mb", "peak extra memory (MB)"))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6, 1.1 * len(cases) + 2), 3.2 * len(panels)), squeeze=False)
    width = 0.8 / len(impls)
    for ax, (col, label) in zip(axes[:, 0], panels):
        for k, impl in enumerate(impls):
            vals = [next((r.get(col, float("nan")) for r in rows if r["impl"] == impl
                          and (r["arch"], r["stage"], r["centres"]) == c), float("nan")) for c in cases]
            ax.bar([i + k * width for i in range(len(cases))], vals, width, label=impl)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_xticks([i + width * (len(impls) - 1) / 2 for i in range(len(cases))])
        ax.set_xticklabels([f"{a}\nstage {s}\n{m} centres" for a, s, m in cases], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
