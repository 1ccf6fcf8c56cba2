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
    from mmdet.utils import setup_cache_size_limit_of_dynamo

    import coc_det  # noqa: F401  (registers the backbone and the hooks)

    setup_cache_size_limit_of_dynamo()
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
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    if not torch.cuda.is_available():
        # CPU-only machines: NCCL is not available, gloo is.
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
        if args.launcher != "none":
            _prepare_cpu_distributed(cfg)
            n = _sync_bn_to_bn(cfg.model)  # SyncBatchNorm runs on GPUs only (single-process runs: mmengine reverts it)
            if n:
                print(f"CPU run: {n} SyncBN layer config(s) of the model use BN instead (SyncBatchNorm needs GPUs)")
    return cfg


def _sync_bn_to_bn(node) -> int:
    """Replace ``type='SyncBN'`` norm configs in a config tree by ``'BN'``; returns how many."""
    n = 0
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
            n += 1
        for v in node.values():
            n += _sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += _sync_bn_to_bn(v)
    return n


def _prepare_cpu_distributed(cfg):
    """Multi-process CPU training (gloo): mmengine 0.10 assumes a GPU per process in two places, so

    * the process group is created here (mmengine's init_dist calls torch.cuda.set_device first), and
    * the model is wrapped by a DDP that drops the per-process ``device_ids`` (CPU modules take none).
    """
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import MODEL_WRAPPERS

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")

    if "CPUDistributedDataParallel" not in MODEL_WRAPPERS.module_dict:
        @MODEL_WRAPPERS.register_module()
        class CPUDistributedDataParallel(MMDistributedDataParallel):
            def __init__(self, module, device_ids=None, **kwargs):
                super().__init__(module=module, device_ids=None, **kwargs)

    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.update(type="CPUDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    cfg.model_wrapper_cfg = wrapper


def close_distributed():
    """Tear the process group down before the interpreter exits: left to static destruction, gloo's
    worker threads were seen to abort a finished 2-process CPU run ("terminate called without an
    active exception", SIGABRT) after training and validation had completed."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
