"""The mmdet 2.x / mmseg 0.x flags users bring from the original CoC README (``--eval``, ``--options``,
``--gpu-id(s)``, ``--resume-from``, ...), taken as their 3.x / 1.x meaning, with a note saying so."""
from __future__ import annotations

import os

from mmengine.config import DictAction

from _config import note


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
