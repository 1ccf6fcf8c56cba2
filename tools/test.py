#!/usr/bin/env python
"""Evaluate a checkpoint with mmengine's Runner (the config's evaluator: COCO bbox/segm AP for detectors,
mIoU for segmentors).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl | --out PRED_DIR] [--work-dir DIR] [--cfg-options k=v ...]
                         [--allow-partial] [--eval bbox segm | --eval mIoU] [--eval-options k=v ...]
The mmdet 2.x / mmseg 0.x flags of the original CoC README (--eval, --eval-options/--options, --gpu-id) and its
config names (configs/mask_rcnn_coc_small_5_fpn_1x_coco.py, configs/sem_fpn/fpn_coc_small_5_ade20k_80k.py) are
taken, each with a one-line note of the 3.x way.
A checkpoint whose weights do not all fit the config's model (missing / unknown keys, other shapes) is
refused, naming them, unless --allow-partial is given.
Multi-GPU: tools/dist_test.sh CONFIG CHECKPOINT GPUS [--out results.pkl].
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp

from _config import add_common_args, load_config, resolve_config
from _distributed import close_distributed
from _legacy_args import add_legacy_test_args, apply_legacy_test_args, select_gpu


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Test (and evaluate) a detector")
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--out", help="dump the raw predictions to this pickle file (.pkl/.pickle); segmentation also: "
                                 "a folder to write the predicted label maps (PNG) into")
    p.add_argument("--amp", action="store_true", help="run inference under automatic mixed precision")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate even if the checkpoint's weights do not all fit the model (missing or unknown "
                        "keys, other shapes): a deliberate partial load; by default such a checkpoint is refused")
    add_common_args(p)
    add_legacy_test_args(p)
    return p.parse_args(argv)


def checkpoint_misfit(cfg, weights: dict) -> str:
    """What keeps ``weights`` (name -> tensor) from loading strictly into the model of ``cfg``, in one line
    naming the keys; empty when they fit. The model is built on the meta device (no memory, no work dir)."""
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from coc_det.checkpoint import compare_state_dicts
    init_default_scope(cfg.get("default_scope", "mmdet"))
    with torch.device("meta"):
        own = MODELS.build(cfg.model).state_dict()
    missing, unexpected, wrong = compare_state_dicts(own, weights)
    parts = [f"{len(missing)} of the model's weights are missing (e.g. {missing[:3]})" if missing else "",
             f"{len(unexpected)} keys are unknown to the model (e.g. {unexpected[:3]})" if unexpected else "",
             f"{len(wrong)} weights differ in shape (e.g. {wrong[:3]})" if wrong else ""]
    return "; ".join(p for p in parts if p)


def _explicit(cfg_options, key: str) -> bool:
    return bool(cfg_options) and key in cfg_options


def main(argv=None):
    args = parse_args(argv)
    # arguments first: nothing is built and no work dir is made for a call that cannot run
    args.config = resolve_config(args.config)
    select_gpu(args)
    if not osp.isfile(args.config):
        raise SystemExit(f"error: config {args.config} does not exist")
    from coc_det.checkpoint import CheckpointError, read_checkpoint, state_dict_of, trained_denominator
    try:
        ckpt = read_checkpoint(args.checkpoint)
        weights = state_dict_of(ckpt, args.checkpoint)
    except (CheckpointError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}")
    cfg = load_config(args)  # reads the config only: the Runner below makes the work dir
    seg = cfg.get("default_scope") == "mmseg"
    pickle_out = args.out is not None and args.out.endswith((".pkl", ".pickle"))
    if args.out is not None and not seg and not pickle_out:
        raise SystemExit(f"error: --out must be a .pkl or .pickle file, got {args.out}")
    if args.out is not None and seg and not pickle_out and osp.isfile(args.out):
        raise SystemExit(f"error: --out is a folder for the predicted label maps (segmentation) or a .pkl file; "
                         f"{args.out} is another file")
    apply_legacy_test_args(cfg, args)
    import torch
    from mmengine.logging import print_log
    from mmengine.runner import Runner

    cfg.load_from = args.checkpoint
    trained, why = trained_denominator(ckpt)
    del ckpt
    weights = {k: torch.empty(v.shape, device="meta") for k, v in weights.items()}  # only the shapes are needed
    key, note = "model.backbone.denominator", None
    if trained and "backbone" in cfg.model and not _explicit(args.cfg_options, key):
        cfg.model.backbone.denominator = trained
        note = (f"{args.checkpoint} was {why}: testing with {key}={trained!r} "
                f"(pass --cfg-options {key}=similarity to override)")
    if args.amp:
        cfg.test_cfg = dict(cfg.get("test_cfg") or {}, fp16=True)
    misfit = checkpoint_misfit(cfg, weights)
    if misfit and not args.allow_partial:
        raise SystemExit(f"error: {args.checkpoint} does not fit the model of {args.config}: {misfit}. "
                         "Evaluating it would score a partly random model; pass --allow-partial to do so anyway")
    runner = Runner.from_cfg(cfg)
    if misfit:
        print_log(f"--allow-partial: {misfit}", logger="current", level=logging.WARNING)
    if note:
        print_log(note, logger="current")
    if pickle_out and seg:  # as mmseg 0.x's --out results.pkl: the predictions in one pickle
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    elif args.out is not None and seg:  # mmseg's way: the evaluator writes one PNG label map per image
        os.makedirs(args.out, exist_ok=True)
        for metric in runner.test_evaluator.metrics:
            metric.output_dir = args.out
    elif args.out is not None:
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    close_distributed()
    return metrics


if __name__ == "__main__":
    main()
