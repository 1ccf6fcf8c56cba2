"""Shared by tools/train.py and tools/test.py: argument parsing helpers and config preparation."""
from __future__ import annotations

import os
import os.path as osp
import re

import torch
from mmengine.config import Config, DictAction

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


#: metrics the mmdet 2.x / mmseg 0.x ``--eval`` took, per evaluator of ours, and where 3.x / 1.x reads them
EVAL_METRICS = {"CocoMetric": ("metric", ("bbox", "segm", "proposal", "proposal_fast")),
                "IoUMetric": ("iou_metrics", ("mIoU", "mDice", "mFscore"))}


def add_legacy_test_args(parser):
    """The mmdet 2.x / mmseg 0.x test flags users bring from the original CoC README."""
    parser.add_argument("--eval", nargs="+", metavar="METRIC",
                        help="mmdet 2.x / mmseg 0.x: metrics to evaluate (bbox segm / mIoU); sets the config's "
                             "test_evaluator, as 3.x does it")
    parser.add_argument("--eval-options", "--options", nargs="+", action=DictAction, dest="eval_options",
                        help="mmdet 2.x: key=value arguments of the evaluation (e.g. classwise=True); "
                             "updates the test_evaluator")
    parser.add_argument("--gpu-id", type=int, help="mmdet 2.x: the GPU to use (single process)")


def apply_legacy_test_args(cfg, args) -> None:
    evaluator = cfg.get("test_evaluator")
    if args.eval:
        kind = evaluator.get("type") if isinstance(evaluator, dict) else None
        if kind not in EVAL_METRICS:
            raise SystemExit(f"error: --eval: this config's test_evaluator ({kind}) takes no metric list; "
                             "set it in the config or with --cfg-options")
        key, allowed = EVAL_METRICS[kind]
        bad = [m for m in args.eval if m not in allowed]
        if bad:
            raise SystemExit(f"error: --eval {' '.join(bad)}: {kind} evaluates {', '.join(allowed)}")
        evaluator[key] = list(args.eval)
        note(f"--eval is the mmdet 2.x / mmseg 0.x flag; in 3.x / 1.x the config's test_evaluator names the "
             f"metrics: using test_evaluator.{key}={list(args.eval)} (--cfg-options test_evaluator.{key}=... "
             "does the same)")
    if args.eval_options:
        if not isinstance(evaluator, dict):
            raise SystemExit("error: --eval-options: this config has several test evaluators; use --cfg-options")
        evaluator.update(args.eval_options)
        note(f"--eval-options / --options (mmdet 2.x): updating test_evaluator with {dict(args.eval_options)}")


def add_legacy_train_args(parser):
    """The mmdet 2.x / mmseg 0.x train flags users bring."""
    parser.add_argument("--gpus", type=int, help="mmdet 2.x: number of GPUs of a single process (only 1 now)")
    parser.add_argument("--gpu-ids", type=int, nargs="+", help="mmdet 2.x: the GPU(s) of a single process")
    parser.add_argument("--gpu-id", type=int, help="mmdet 2.x: the GPU to use (single process)")
    parser.add_argument("--no-validate", action="store_true", help="mmdet 2.x: do not evaluate during training")
    parser.add_argument("--options", nargs="+", action=DictAction,
                        help="mmdet 2.x: the old name of --cfg-options")
    parser.add_argument("--resume-from", help="mmdet 2.x: resume from this checkpoint (3.x: --resume CKPT)")
    parser.add_argument("--auto-resume", action="store_true",
                        help="mmdet 2.x: resume from the latest checkpoint of the work dir (3.x: --resume)")


def select_gpu(args) -> None:
    """``--gpu-id`` / ``--gpu-ids`` / ``--gpus`` of mmdet 2.x: one process drives one GPU in 3.x, so one id
    is taken (CUDA_VISIBLE_DEVICES, before CUDA starts), several are refused with the command that does it."""
    ids = list(getattr(args, "gpu_ids", None) or [])
    if getattr(args, "gpu_id", None) is not None:
        ids.append(args.gpu_id)
    gpus = getattr(args, "gpus", None)
    if (gpus is not None and gpus > 1) or len(ids) > 1:
        n = max(gpus or 0, len(ids))
        raise SystemExit(f"error: one process trains on one GPU since mmdet 2.x deprecated single-process "
                         f"multi-GPU: run tools/dist_train.sh {args.config} {n} (dist_test.sh for testing)")
    if ids and getattr(args, "launcher", "none") == "none":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(ids[0])
        note(f"--gpu-id(s) {ids[0]} (mmdet 2.x): CUDA_VISIBLE_DEVICES={ids[0]}")


def apply_legacy_train_args(cfg, args) -> None:
    if args.options:
        cfg.merge_from_dict(args.options)
        note("--options is the mmdet 2.x name of --cfg-options: applied as such")
    if args.no_validate:
        cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
        note("--no-validate (mmdet 2.x): val_cfg, val_dataloader and val_evaluator set to None")
    if args.resume_from:
        cfg.resume, cfg.load_from = True, args.resume_from
        note(f"--resume-from (mmdet 2.x): resuming from {args.resume_from} (3.x: --resume CKPT)")
    elif args.auto_resume:
        cfg.resume, cfg.load_from = True, None
        note("--auto-resume (mmdet 2.x): resuming from the work dir's latest checkpoint (3.x: --resume)")


class KeyValueAction(DictAction):
    """mmengine's ``DictAction`` (``key=value`` pairs into a dict), with a usage error naming an item that has
    no ``=`` (mmengine's own fails with a ValueError deep in its parser)."""

    def __call__(self, parser, namespace, values, option_string=None):
        bad = [v for v in values if "=" not in v or not v.split("=", 1)[0]]
        if bad:
            parser.error(f"{option_string} takes key=value pairs (e.g. model.backbone.mixer_impl=light); "
                         f"got {bad[0]!r}")
        super().__call__(parser, namespace, values, option_string)


def _intact(path: str) -> bool:
    """A torch checkpoint whose zip directory reads (a truncated or empty file's does not); cheap: the
    weights are not read."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def resume_checkpoint(work_dir: str, resume: str) -> str | None:
    """The checkpoint ``--resume`` (``resume='auto'``: the work dir's ``last_checkpoint``) will load, checked
    before anything is built: a missing, empty or truncated one (a run killed while saving) is named, with the
    newest intact checkpoint of the work dir offered. None when there is nothing to resume (a fresh run)."""
    import glob
    if resume == "auto":
        last = osp.join(work_dir, "last_checkpoint")
        if not osp.isfile(last):
            return None  # mmengine starts from scratch, as it always has
        with open(last) as f:
            path = f.read().strip()
    else:
        path = resume
    if path.startswith(("http://", "https://")) or _intact(path):
        return path
    others = sorted((p for p in glob.glob(osp.join(work_dir, "*.pth")) if osp.abspath(p) != osp.abspath(path)
                     and _intact(p)), key=osp.getmtime)
    what = "does not exist" if not osp.exists(path) else (
        "is empty" if osp.getsize(path) == 0 else "is truncated or not a torch checkpoint")
    offer = f"; the newest intact one is {others[-1]}: --resume {others[-1]}" if others else ""
    raise SystemExit(f"error: the checkpoint to resume from, {path}, {what}{offer}")


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
