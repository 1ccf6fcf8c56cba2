#!/usr/bin/env python
"""The job itself: one Mask R-CNN training iteration (and batch-1 inference) with the Context Cluster backbone,
original mixer vs fused, eager vs compiled backbone, side by side in one run. Needs mmdet (mmcv with ops).

    python -m benchmarks.bench_train [--configs configs/mask-rcnn_coc-small-25_fpn_1x_coco.py ...]
        [--impls dense dense+compile triton triton+compile] [--batch 2] [--size 800 1344] [--iters 10]
        [--amp] [--backend inductor] [--json F] [--md F]

The detector is mmdet's, built from the config (COCO's 80 classes); the batch is synthetic (mmdet's
``demo_mm_inputs``: random images, boxes and masks, 5 objects per image) at the given size; the step is
``model.train_step`` through the config's optimizer wrapper (AdamW; ``--amp``: mmengine's AmpOptimWrapper in
bf16). Implementations: ``dense`` = the original mixer (dense formulation, eager), ``dense+compile`` = that
backbone under ``torch.compile`` with torch's defaults (the user's alternative), ``triton`` = the fused
mixer, ``triton+compile`` = the backbone's ``compile=True`` switch; ``light`` = the memory-light torch
path; ``+graphs`` and ``+cp`` as in ``bench_backbone.py`` (CUDA graphs, activation checkpointing). Reported:
median ms per iteration after warm-up, the first iteration (compilation included), peak memory, and inference
images/s at batch 1 (``model.test_step``, test mode).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import time

import torch

from benchmarks._harness import (ON_GPU, baseline_rows, compile_options, parse_impl, peak_extra_gb, set_impl, sync,
                                 time_steps)
from benchmarks._report import report
from coc_det.backbone import COMPILE_DEFAULTS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = [os.path.join(ROOT, "configs", f"mask-rcnn_coc-{v}_fpn_1x_coco.py") for v in ("small-25", "medium-49")]


def build_detector(config: str, impl: str, device: str, amp: bool, backend: str, cfg_options=None):
    """``(model, optim_wrapper)`` for one implementation (random weights: speed does not depend on them)."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import coc_det  # noqa: F401  (registers the backbone)
    register_all_modules()
    mixer, flags = parse_impl(impl)
    cfg = Config.fromfile(config)
    for key, value in (cfg_options or {}).items():  # set, not merged: a dict replaces what was there
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node[part]
        node[last] = value
    options = compile_options(flags, backend)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.with_cp = "cp" in flags
    cfg.model.backbone.mixer_impl = "light" if mixer == "dense" else mixer  # dense: patched below
    if options is not None and mixer != "dense":
        cfg.model.backbone.compile = dict(COMPILE_DEFAULTS, **options)
    model = MODELS.build(cfg.model).to(device)
    if mixer == "dense":
        set_impl(model.backbone, "dense")  # the original's formulation, as it ran
        if options is not None:  # torch.compile of the original backbone, torch's defaults
            model.backbone = torch.compile(model.backbone, **options)
    model.train()
    wrapper = dict(cfg.optim_wrapper)
    if amp:
        wrapper.update(type="AmpOptimWrapper", dtype="bfloat16")
    return model, build_optim_wrapper(model, wrapper)


def synthetic_batch(batch: int, size, num_classes: int = 80):
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(batch, [[3, *size]] * batch, num_items=[5] * batch, num_classes=num_classes,
                          with_mask=True)


def bench(config, impl, batch, size, iters, warmup, amp, backend, infer_iters, cfg_options=None):
    device = "cuda" if ON_GPU else "cpu"
    # a fresh dynamo cache per variant: compiled graphs of earlier models would count against its per-function
    # limit, past which torch runs the model eager without saying so in the table
    torch._dynamo.reset()
    model, optim = build_detector(config, impl, device, amp, backend, cfg_options)
    data = synthetic_batch(batch, size)
    first, ms = time_steps(lambda: model.train_step(data, optim), warmup, iters)
    res = dict(config=os.path.basename(config), impl=impl, batch=batch, size=list(size), amp=amp,
               ms_per_iter=ms, first_iter_ms=first)
    peak = peak_extra_gb(lambda: model.train_step(data, optim))
    if peak is not None:
        res["peak_extra_gb"] = peak
    if infer_iters:
        model.eval()
        one = synthetic_batch(1, size)
        with torch.no_grad():
            model.test_step(one)  # warm-up (compiles the batch-1 graph)
            sync()
            t = time.perf_counter()
            for _ in range(infer_iters):
                model.test_step(one)
            sync()
        res["infer_img_per_s"] = infer_iters / (time.perf_counter() - t)
    model = optim = None  # free them (not del: the lambdas above name them)
    if ON_GPU:
        torch.cuda.empty_cache()
    return res


def table(rows, title):
    lines = [title, "", "| config | impl | ms / iter | first iter (ms, incl. compile) | peak extra memory (GB) "
                        "| inference img/s (batch 1) | iter vs dense | iter vs dense+compile |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['impl']} | {r['error']} | - | - | - | - | - |")
            continue
        ratios = [f"{ref['ms_per_iter'] / r['ms_per_iter']:.2f}x faster" if ref else "-"
                  for ref in baseline_rows(rows, r, "config", "ms_per_iter")]
        mem = f"{r['peak_extra_gb']:.2f}" if "peak_extra_gb" in r else "-"
        ips = f"{r['infer_img_per_s']:.2f}" if "infer_img_per_s" in r else "-"
        lines.append(f"| {r['config']} | {r['impl']} | {r['ms_per_iter']:.1f} | {r['first_iter_ms']:.0f} | {mem} "
                     f"| {ips} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--impls", nargs="+", default=["dense", "dense+compile", "triton", "triton+compile"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", nargs=2, type=int, default=[800, 1344])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--infer-iters", type=int, default=10, help="batch-1 inference steps timed (0: skip)")
    p.add_argument("--amp", action="store_true", help="bf16 (AmpOptimWrapper)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend of the +compile variants")
    p.add_argument("--cfg-options", nargs="+", default=[],
                   help="key=value config overrides, values as Python literals (tests: a tiny backbone)")
    p.add_argument("--json")
    p.add_argument("--md")
    args = p.parse_args(argv)
    for impl in args.impls:
        parse_impl(impl)
    for config in args.configs:
        if not os.path.isfile(config):
            p.error(f"config {config} does not exist")
    opts = {}
    for kv in args.cfg_options:
        k, _, v = kv.partition("=")
        try:
            opts[k] = ast.literal_eval(v)  # numbers, lists, dicts (e.g. a backbone arch)
        except (ValueError, SyntaxError):
            opts[k] = v  # a plain string
    rows = []
    for config in args.configs:
        for impl in args.impls:
            try:
                r = bench(config, impl, args.batch, args.size, args.iters, args.warmup, args.amp, args.backend,
                          args.infer_iters, opts)
            except torch.cuda.OutOfMemoryError:
                r = dict(config=os.path.basename(config), impl=impl, error="OOM")
                torch.cuda.empty_cache()
            rows.append(r)
            print(json.dumps(r), flush=True)
    dev = torch.cuda.get_device_name() if ON_GPU else f"CPU ({torch.get_num_threads()} threads)"
    title = (f"Mask R-CNN training iteration on {dev}, torch {torch.__version__}, batch {args.batch}, "
             f"{args.size[0]}x{args.size[1]}, {'bf16 AMP' if args.amp else 'fp32'}, compile backend {args.backend}, "
             f"median of {args.iters} iterations")
    report(table(rows, title), rows, dev, args.json, args.md)


if __name__ == "__main__":
    main()
