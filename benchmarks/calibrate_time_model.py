#!/usr/bin/env python
"""Writes the time model's calibration data (``benchmarks/data/time_model_6c7bf35.json``): the kernels of commit
6c7bf35, the ones the H100 run of 2026-11-26 timed one by one (``docs/gpu/h100-2026-11-26.md``), compiled again
from git history for sm_90 under triton 3.6 (that run's version), with the counts the model needs per kernel
(grid and tiles per program, warps, programs per SM, PTX instructions of the tile loop and of the rest, compulsory
bytes, uncoalesced tile stores) beside the time measured. Run once; the fit (``benchmarks/time_model.py``) and
its test then need no history:

    python -m benchmarks.calibrate_time_model [--commit 6c7bf35] [--triton-dir .venv/triton-3.6]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the run's case: small stage 1 at 25 centres, fp32, batch 2 at 800x1344, forward + backward
CASE = dict(arch="small", stage=1, centres=25, dtype="float32", batch=2, img=(800, 1344))
MEASURED_TITLE = "kernels of triton fwd+bwd, small stage 1 25 centres, float32"


def measured_times(doc: str) -> dict:
    """``{kernel: ms}`` from the run's per-kernel profile in ``doc``."""
    lines = open(doc).read().splitlines()
    start = next(i for i, line in enumerate(lines) if MEASURED_TITLE in line)
    out = {}
    for line in lines[start + 1:]:
        m = re.match(r"\s+([\d.]+) ms\s+x1\s+(_\w+_kernel)", line)
        if not m:
            break
        out[m.group(2)] = float(m.group(1))
    return out


def _in_old_tree(aot_path: str, out_path: str):
    """Runs inside the old tree (``coc_kernels`` / ``coc_det`` of the commit first on the path), with today's
    ahead-of-time compiler loaded from its file."""
    import importlib.util
    import inspect
    import types

    import torch
    import triton

    spec = importlib.util.spec_from_file_location("coc_aot_today", aot_path)
    aot = sys.modules["coc_aot_today"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aot)
    from benchmarks.time_model import kernel_cost, tensor_bytes
    from coc_det.backbone import ARCH_SETTINGS, DEFAULT_FOLDS, PROPOSAL_OF_CENTRES
    from coc_kernels import context_cluster
    from coc_kernels.ops import context_cluster as old

    for helper in ("_load_tile", "_store_tile", "_tile_ptrs"):  # what the gate calls tile accesses
        getattr(old, helper).tile_access = True
    s, stage = ARCH_SETTINGS[CASE["arch"]], CASE["stage"] - 1
    heads, d = s["heads"][stage], s["head_dim"][stage]
    H, W = (n // (4 * 2 ** stage) for n in CASE["img"])
    x = torch.empty(CASE["batch"], heads * d, H, W, requires_grad=True)
    v = torch.empty_like(x, requires_grad=True)
    alpha, beta = torch.ones(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    with old.record_launches(execute=False) as rec:
        y = context_cluster(x, v, alpha, beta, heads=heads, proposal=PROPOSAL_OF_CENTRES[CASE["centres"]],
                            fold=DEFAULT_FOLDS[stage], impl="triton")
        y.backward(torch.empty_like(y))
    kernels = {}
    for launch in rec:
        fn = launch.kernel
        names = list(fn.arg_names)
        as_dict = types.SimpleNamespace(kernel=fn, grid=launch.grid, args=dict(zip(names, launch.args)),
                                        constexprs=launch.constexprs, num_warps=launch.num_warps,
                                        num_stages=launch.num_stages)
        r = aot.compile_spec(aot.spec_of(as_dict), 90)
        if not r["ok"]:
            raise SystemExit(f"{fn.__name__}: {r['error']}")
        a, bn = as_dict.args, launch.constexprs["BLOCK_N"]
        span = a["TPP"] * bn  # points per chunk
        tiles = [-(-(min(a["N"], (k + 1) * span) - k * span) // bn) for k in range(a["NC"])]
        # the old tile stores put a warp's lanes across row breaks or channels: one L2 write per element
        n_stores = inspect.getsource(fn.fn).count("_store_tile(")
        strided = n_stores * x.numel()
        cost = kernel_cost(fn.__name__, tiles, launch.grid[0], launch.num_warps, r, tensor_bytes(launch.args),
                           strided)
        kernels[fn.__name__] = dict(regs=r["regs"], shared=r["shared"], cost=cost.__dict__ | {
            "programs": [list(p) for p in cost.programs]})
    with open(out_path, "w") as f:
        json.dump(dict(triton=triton.__version__, kernels=kernels), f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--commit", default="6c7bf35")
    p.add_argument("--triton-dir", default=os.path.join(ROOT, ".venv", "triton-3.6"))
    p.add_argument("--doc", default=os.path.join(ROOT, "docs", "gpu", "h100-2026-11-26.md"))
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "data", "time_model_6c7bf35.json"))
    args = p.parse_args(argv)
    measured = measured_times(args.doc)
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "archive", args.commit, "coc_kernels", "coc_det"], cwd=ROOT,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([tmp, args.triton_dir, ROOT])
        env["TRITON_ALWAYS_COMPILE"] = "1"
        counts = os.path.join(tmp, "counts.json")
        code = (f"import sys; sys.path.insert(0, {tmp!r}); from benchmarks.calibrate_time_model import _in_old_tree; "
                f"_in_old_tree({os.path.join(ROOT, 'coc_kernels', 'ops', 'aot.py')!r}, {counts!r})")
        subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, check=True)
        with open(counts) as f:
            got = json.load(f)
    commit = subprocess.run(["git", "rev-parse", args.commit], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    if set(got["kernels"]) != set(measured):
        raise SystemExit(f"kernels compiled {sorted(got['kernels'])} != kernels measured {sorted(measured)}")
    data = dict(commit=commit, triton=got["triton"], gpu="H100 SXM (torch 2.11, 2026-11-26)", case=CASE,
                source=os.path.relpath(args.doc, ROOT),
                note="counts of sm_90 code: PTX instructions per thread of the tile loop (loop) and of the rest "
                     "(other); programs as [count, tiles per program] runs in launch order; bytes: every tensor "
                     "argument once; strided_store_elements: elements of the old uncoalesced tile stores",
                kernels={n: dict(measured_ms=measured[n], **got["kernels"][n]) for n in sorted(measured)})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
