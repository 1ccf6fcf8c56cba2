#!/usr/bin/env python
"""CPU: the estimated fwd+bwd of the fused op per stage under alternative chunkings (how ``CHUNKING`` was chosen).

Every launch of one forward + backward is recorded (nothing runs) and compiled for sm_90 once, as the compile gate
does; then for each candidate chunking (a target of programs per launch, chunks balanced or in whole multiples of
the tallest tile's rows, the same for every centre class, chunked by the target alone; and the shipped one without
its single-row chunks, ``fine_below``, or without its whole waves, ``wave``) the launches are recorded again (their
grids change, the compiled code does not) and the time model (``benchmarks/time_model.py``) estimates the six
kernels. An estimate, not a measurement. About 5 minutes on 2 cores for the small and medium models, stages 1-4,
4/25/49 centres, fp32.

    python -m benchmarks.sweep_chunking [--arch small medium] [--centres 4 25 49] [--md out.md]
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import importlib
import os

import torch
import triton

from benchmarks import kernel_resources as kr
from benchmarks import time_model

_config = importlib.import_module("coc_kernels.ops.context_cluster.config")
_geometry = importlib.import_module("coc_kernels.ops.context_cluster.geometry")
#: (target programs, balanced) candidates, each for every centre class
CANDIDATES = [(t, b) for b in (False, True) for t in (512, 1024, 2048, 4096)]


def _launches(archs, centres, chunking=None):
    """``{case: [(spec, chunk tiles, groups, bytes)]}`` of the fwd+bwd cases, under ``chunking`` (a
    :class:`ChunkConfig`; None: the shipped one)."""
    shipped = _config.CHUNKING
    _config.CHUNKING = chunking or shipped
    _geometry.clear_geometries()
    try:
        launches = {}
        kr.record(archs, centres, [torch.float32], launches=launches)
    finally:
        _config.CHUNKING = shipped
        _geometry.clear_geometries()
    return {case: made for case, made in launches.items() if not case.endswith("assignment")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["small", "medium"])
    p.add_argument("--centres", nargs="+", type=int, default=[4, 25, 49])
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--md")
    args = p.parse_args(argv)
    shipped = _launches(args.arch, args.centres)
    specs = sorted({s for made in shipped.values() for s, *_ in made if s.kernel in time_model.FWD_BWD}, key=str)
    results = {}
    with concurrent.futures.ProcessPoolExecutor(args.jobs) as pool:
        for spec, res in pool.map(kr._compile_all, specs, [()] * len(specs)):
            results[spec] = res
    params = time_model.params()

    def totals(launches):
        launches = {c: [m for m in made if m[0] in results] for c, made in launches.items()}
        return {c: sum(v["ms"] for v in row.values()) for c, row in kr.estimates(results, launches, params).items()}

    columns = {"shipped": totals(shipped)}
    coarse = dataclasses.replace(_config.CHUNKING, fine_below=(0,) * 3)
    columns["shipped, no single rows"] = totals(_launches(args.arch, args.centres, coarse))
    targets_only = dataclasses.replace(_config.CHUNKING, wave=(0,) * 3)
    columns["shipped, no waves"] = totals(_launches(args.arch, args.centres, targets_only))
    for target, balanced in CANDIDATES:
        cand = dataclasses.replace(targets_only, programs=(target,) * 3, balanced=(balanced,) * 3)
        columns[f"{target} {'equal' if balanced else 'tile rows'}"] = totals(_launches(args.arch, args.centres, cand))
    names = list(columns)
    lines = [f"Estimated fwd+bwd (ms, sum of the six kernels; time model on the sm_90 code, triton "
             f"{triton.__version__}) per chunking: target programs, chunks of equal rows or of whole tile rows",
             "", "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for case in sorted(columns["shipped"], key=lambda c: (c.split()[0], c.split()[1], int(c.split()[2][:-1]))):
        vals = [columns[n].get(case, float("nan")) for n in names]
        best = min(vals[1:])
        cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in vals]
        lines.append(f"| {' '.join(case.split()[:3])} | " + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.md:
        with open(args.md, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
