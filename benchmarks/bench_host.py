#!/usr/bin/env python
"""Host time of the fused op, on the CPU: one forward + backward of ``context_cluster(impl="triton")`` per stage
of a detection backbone (batch 2, 800x1344, fp32) with its kernel launches recorded, not executed, on CPU
tensors (``torch.empty`` of untouched buffers costs no page faults): what the op's Python costs per call
(checks, geometry, launch arguments, buffer allocations, autograd), without triton's own launcher. Printed beside
a plain torch op (``torch.add`` of two one-element tensors, forward + backward, same run) as a ratio, since the
machine's speed cancels out of it. Triton's launcher adds its own few microseconds per launch on a GPU (6 launches
per call).

    python -m benchmarks.bench_host [--arch small] [--centres 25] [--reps 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks._harness import make_inputs, mixer_geometry
from benchmarks._report import report
from coc_kernels import context_cluster
from coc_kernels.ops.context_cluster import clear_geometries, record_launches


def _median_us(step, reps: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e6)
    return statistics.median(times)


def measure(arch: str, centres: int, reps: int) -> list:
    rows = []
    for stage in range(1, 5):
        heads, p, fold = mixer_geometry(arch, stage, centres)
        x, v, a, b = make_inputs(arch, stage, 2, torch.float32, "cpu")
        counts = {}

        dy = torch.empty_like(v)  # untouched: no page faults (the op's outputs are torch.empty too)

        def fused():
            with record_launches(execute=False) as rec:
                y = context_cluster(x, v, a, b, heads=heads, proposal=p, fold=fold, impl="triton")
                torch.autograd.grad(y, (x, v, a, b), dy)  # no accumulation into .grad (a real CPU add)
            counts["launches"] = len(rec)

        def fused_fresh():  # as before 2026-12-02: the launch geometry rebuilt on every call
            clear_geometries()
            fused()

        def plain():
            torch.autograd.grad(torch.add(a, b), (a, b), torch.ones_like(a))

        # interleaved, so that the machine's drift falls on all three alike
        t_op, t_fresh, t_plain = [], [], []
        for _ in range(5):
            t_op.append(_median_us(fused, reps // 5))
            t_fresh.append(_median_us(fused_fresh, reps // 5))
            t_plain.append(_median_us(plain, reps // 5))
        t_op, t_fresh, t_plain = (statistics.median(t) for t in (t_op, t_fresh, t_plain))
        rows.append(dict(stage=stage, shape=list(x.shape), launches=counts["launches"], op_us=round(t_op, 1),
                         fresh_us=round(t_fresh, 1), plain_us=round(t_plain, 1), ratio=round(t_op / t_plain, 2),
                         fresh_ratio=round(t_fresh / t_plain, 2)))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="small")
    p.add_argument("--centres", type=int, default=25)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = measure(args.arch, args.centres, args.reps)
    lines = [f"Host time of one fused forward + backward, launches recorded not executed ({args.arch}, "
             f"{args.centres} centres, batch 2, 800x1344, CPU tensors; torch {torch.__version__}); median of "
             f"{args.reps} (interleaved in 5 rounds); 'geometry rebuilt': the launch geometry made afresh on every "
             "call, as before its per-shape cache", "",
             "| stage | x | launches | op us | geometry rebuilt us | torch.add fwd+bwd us | ratio | ratio rebuilt |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {'x'.join(map(str, r['shape']))} | {r['launches']} | {r['op_us']} "
                     f"| {r['fresh_us']} | {r['plain_us']} | {r['ratio']} | {r['fresh_ratio']} |")
    report("\n".join(lines), rows, "cpu", json_path=args.json)


if __name__ == "__main__":
    main()
