#!/usr/bin/env python
"""Train a detector or segmentor with mmengine's Runner (mmdet-style arguments).

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--auto-scale-lr] [--resume [CKPT]]
                                 [--cfg-options k=v ...] [--launcher pytorch]
Multi-GPU: tools/dist_train.sh CONFIG GPUS [args]; slurm: tools/slurm_train.sh PARTITION JOB CONFIG.
The mmdet 2.x flags (--gpus/--gpu-ids/--gpu-id for one GPU, --no-validate, --options, --resume-from,
--auto-resume) and the original repository's config names are taken, each with a one-line note.
"""
import argparse

from _config import add_common_args, load_config
from _distributed import close_distributed
from _legacy_args import add_legacy_train_args, apply_legacy_train_args, select_gpu
from _resume import resume_checkpoint


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Train a detector or segmentor (any mmengine config)")
    p.add_argument("config", help="config file")
    p.add_argument("--amp", action="store_true", help="automatic mixed precision (AmpOptimWrapper)")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the lr by (GPUs x batch per GPU) / auto_scale_lr.base_batch_size")
    p.add_argument("--resume", nargs="?", type=str, const="auto",
                   help="resume from CKPT, or from the latest checkpoint in the work dir if no path is given")
    add_common_args(p)
    add_legacy_train_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    select_gpu(args)
    cfg = load_config(args)
    apply_legacy_train_args(cfg, args)
    if args.amp:
        if cfg.optim_wrapper.get("type", "OptimWrapper") == "AmpOptimWrapper":
            print("AMP is already enabled in the config")
        else:
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.loss_scale = "dynamic"
    if args.auto_scale_lr:
        if "auto_scale_lr" not in cfg or "base_batch_size" not in cfg.auto_scale_lr:
            raise RuntimeError("--auto-scale-lr needs auto_scale_lr.base_batch_size in the config")
        cfg.auto_scale_lr.enable = True
    if args.resume is not None:
        resume_checkpoint(cfg.work_dir, args.resume)
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    runner = Runner.from_cfg(cfg)
    runner.train()
    close_distributed()


if __name__ == "__main__":
    main()
