#!/usr/bin/env python
"""Evaluate a checkpoint with mmengine's Runner (COCO bbox/segm metrics from the config's evaluator).

    python tools/test.py CONFIG CHECKPOINT [--out results.pkl] [--work-dir DIR] [--cfg-options k=v ...]
Multi-GPU: tools/dist_test.sh CONFIG CHECKPOINT GPUS [--out results.pkl].
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))

from _common import add_common_args, close_distributed, load_config  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Test (and evaluate) a detector")
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file")
    p.add_argument("--out", help="dump the raw predictions to this pickle file (.pkl/.pickle)")
    p.add_argument("--amp", action="store_true", help="run inference under automatic mixed precision")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner

    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.amp:
        cfg.test_cfg = dict(cfg.get("test_cfg") or {}, fp16=True)
    runner = Runner.from_cfg(cfg)
    if args.out is not None:
        if not args.out.endswith((".pkl", ".pickle")):
            raise ValueError(f"--out must be a .pkl or .pickle file, got {args.out}")
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    close_distributed()
    return metrics


if __name__ == "__main__":
    main()
