"""Shared by tools/train.py and tools/test.py: argument parsing helpers and config preparation."""
from __future__ import annotations

import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction


def add_common_args(parser):
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction,
                        help="override config entries, key=value (e.g. model.backbone.mixer_impl=reference)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (dist_*.sh pass 'pytorch', slurm_*.sh 'slurm')")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def load_config(args) -> Config:
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        # CPU-only machines: NCCL is not available, gloo is.
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    return cfg
