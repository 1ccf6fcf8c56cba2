#!/usr/bin/env python
"""Tune the fused op's launch configurations on this GPU for the detection shapes (warms the tuning cache before a
run or a CUDA-graph capture) and print, per shape class and kernel, the shipped configuration and the chosen one
with their median times, the candidates that passed the check, and the seconds spent. ``--pin FILE`` also writes
the choices as a file of pinned choices (``COC_TUNING_PINNED``) to hand to every machine of a cluster with this GPU.

    python -m benchmarks.tune [--arch small] [--stages 1 2 3 4] [--centres 25 49] [--dtype float32 bfloat16]
                              [--md table.md] [--pin pinned.json]

Without CUDA the kernels run in the Triton interpreter and nothing can be timed: a timer must be supplied
(``tuning.timer``, as the tests do).
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks._harness import ON_GPU, make_inputs, mixer_geometry
from benchmarks._report import report
from coc_kernels.ops.context_cluster import launch_policy, tune, tuning
from coc_kernels.ops.context_cluster.config import describe, kernel_config, with_settings


def _fmt(kernel: str, q, settings: dict) -> str:
    """The launch configuration ``settings`` (tuned settings) give ``kernel`` in geometry ``q``, register cap included
    (the shipped cap stays only with the shipped settings)."""
    return describe(with_settings(kernel_config(kernel, q.M, q.D, q.DV), settings))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["small"])
    p.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3, 4])
    p.add_argument("--centres", nargs="+", type=int, default=[25, 49])
    p.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344], help="image size the shapes derive from")
    p.add_argument("--md", help="write the table here")
    p.add_argument("--pin", help="write the choices here as a file of pinned choices")
    args = p.parse_args(argv)
    device = "cuda" if ON_GPU else "cpu"
    lines = [f"Launch tuning on {torch.cuda.get_device_name() if ON_GPU else 'CPU (interpreter, injected timer)'}, "
             f"cache {tuning.cache_path()}", "",
             "| case | kernel | shipped | shipped ms | chosen | chosen ms | passed / tried | source | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    chosen = {}
    with launch_policy(tuning=True):
        for dtype in args.dtype:
            for arch in args.arch:
                for stage in args.stages:
                    for centres in args.centres:
                        heads, prop, fold = mixer_geometry(arch, stage, centres)
                        x, v, a, b = (t.detach() for t in make_inputs(arch, stage, args.batch, getattr(torch, dtype),
                                                                      device, tuple(args.size)))
                        got = tune(x, v, a, b, heads=heads, proposal=prop, fold=fold)
                        q = _geometry(x, v, heads, prop, fold)
                        for kernel, e in got.items():
                            chosen[tuning.key(kernel, q)] = dict(choice=e["choice"])
                            cands = e.get("candidates") or []
                            ms = {json.dumps(c["config"], sort_keys=True): c["ms"] for c in cands}
                            shipped = cands[0]["config"] if cands else e["choice"]
                            sm = ms.get(json.dumps(shipped, sort_keys=True))
                            cm = ms.get(json.dumps(e["choice"], sort_keys=True))
                            lines.append(
                                f"| {arch} s{stage} {centres}c {dtype} | {kernel} | {_fmt(kernel, q, shipped)} | "
                                f"{'-' if sm is None else f'{sm:.4f}'} | {_fmt(kernel, q, e['choice'])} | "
                                f"{'-' if cm is None else f'{cm:.4f}'} | {e.get('passed', '-')} / {len(cands) or '-'} "
                                f"| {e.get('source', 'tuned')} | {e.get('seconds', 0):.1f} |")
    if args.pin:
        with open(args.pin, "w") as f:
            json.dump(dict(format=tuning.FORMAT, entries=chosen), f, indent=1, sort_keys=True)
            f.write("\n")
        lines += ["", f"pinned choices written to {args.pin} (COC_TUNING_PINNED={args.pin} on every machine)"]
    report("\n".join(lines), [], "", md_path=args.md)


def _geometry(x, v, heads, prop, fold):
    from coc_kernels.functional import pair
    from coc_kernels.ops.context_cluster import geometry
    ph, pw = pair(prop, "proposal")
    fh, fw = pair(fold, "fold")
    return geometry(x.contiguous(), v.contiguous(), heads, ph, pw, fh, fw)


if __name__ == "__main__":
    main()
