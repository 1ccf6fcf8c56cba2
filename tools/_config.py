"""Config loading shared by tools/train.py and tools/test.py: the common arguments, a config found by its name in
the original repository, overrides, the work dir and the checkpoint hook."""
from __future__ import annotations

import os
import os.path as osp
import re

import torch
from mmengine.config import Config, DictAction

from _distributed import prepare_cpu_distributed, sync_bn_to_bn

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def note(msg: str) -> None:
    """A one-line remark about how an argument was taken (before any logger exists)."""
    print(f"note: {msg}", flush=True)


def resolve_config(path: str) -> str:
    """``path``, or, for a config name of the original CoC repository that does not exist here
    (``mask_rcnn_coc_small_5_fpn_1x_coco.py``, ``sem_fpn/fpn_coc_medium_7_ade20k_80k.py``: the digit is the
    centres per region axis), this project's config of the same model, saying so."""
    if osp.isfile(path):
        return path
    from coc_det.backbone import PROPOSAL_OF_CENTRES
    centres = {p: c for c, p in PROPOSAL_OF_CENTRES.items()}
    name = osp.basename(path)
    target = None
    m = re.fullmatch(r"mask_rcnn_coc_(small|medium)_(\d)_fpn_1x_coco\.py", name)
    if m and int(m[2]) in centres:
        target = osp.join(ROOT, "configs", f"mask-rcnn_coc-{m[1]}-{centres[int(m[2])]}_fpn_1x_coco.py")
    m = re.fullmatch(r"fpn_coc_(small|medium)_(\d)_ade20k_80k\.py", name)
    if m and int(m[2]) in centres:
        target = osp.join(ROOT, "configs", "segmentation",
                          f"fpn_coc-{m[1]}-{centres[int(m[2])]}_ade20k-512x512_80k.py")
    if target and osp.isfile(target):
        note(f"{path} is the original repository's name of {osp.relpath(target, ROOT)}: using that config")
        return target
    return path


class KeyValueAction(DictAction):
    """mmengine's ``DictAction`` (``key=value`` pairs into a dict), with a usage error naming an item that has
    no ``=`` (mmengine's own fails with a ValueError deep in its parser)."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if "=" not in v or not v.split("=", 1)[0]]
        if bad:
            parser.error(f"{option_string} takes key=value pairs (e.g. model.backbone.mixer_impl=light); "
                         f"got {bad[0]!r}")
        super().__call__(parser, namespace, values, option_string)


def add_common_args(parser):
    parser.add_argument("--work-dir", help="folder for logs and checkpoints (default: work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=KeyValueAction,
                        help="override config entries, key=value (e.g. model.backbone.mixer_impl=light)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (dist_*.sh pass 'pytorch', slurm_*.sh 'slurm')")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)


def load_config(args) -> Config:
    from mmdet.utils import setup_cache_size_limit_of_dynamo

    import coc_det  # noqa: F401  (registers the backbone and the hooks)

    setup_cache_size_limit_of_dynamo()
    args.config = resolve_config(args.config)
    if "LOCAL_RANK" not in os.environ:
        os.environ["LOCAL_RANK"] = str(args.local_rank)
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(h.get("type") == "WeightsOnlyCheckpointHook" for h in hooks):
        # checkpoints this run writes must load under torch's weights-only default (configs of ours name it)
        cfg.custom_hooks = hooks + [dict(type="WeightsOnlyCheckpointHook")]
    if args.work_dir is not None:
        if osp.exists(args.work_dir) and not osp.isdir(args.work_dir):
            raise SystemExit(f"error: --work-dir {args.work_dir} is a file, not a folder")
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        # CPU-only machines: NCCL is not available, gloo is.
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
        if args.launcher != "none":
            prepare_cpu_distributed(cfg)
            n = sync_bn_to_bn(cfg.model)  # SyncBatchNorm runs on GPUs only (single-process runs: mmengine reverts it)
            if n:
                print(f"CPU run: {n} SyncBN layer config(s) of the model use BN instead (SyncBatchNorm needs GPUs)")
    return cfg
