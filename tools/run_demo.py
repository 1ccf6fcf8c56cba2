#!/usr/bin/env python
"""The README's main job: make the bundled demo data (if missing), train Mask R-CNN + Context Cluster on
it on this machine (CPU or GPU), then evaluate the final checkpoint and print COCO bbox/segm AP.

    python tools/run_demo.py [--epochs N] [--work-dir work_dirs/demo] [--data data/coc_demo]
"""
import argparse
import os
import os.path as osp
import sys
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
sys.path.insert(0, HERE)
CONFIG = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo config's)")
    p.add_argument("--work-dir", default=osp.join(ROOT, "work_dirs", "demo"))
    p.add_argument("--data", default=osp.join(ROOT, "data", "coc_demo"), help="demo data folder")
    args = p.parse_args(argv)

    import make_demo_data
    if not osp.exists(osp.join(args.data, "annotations", "instances_val.json")):
        print(f"[demo] generating the synthetic shapes dataset in {args.data}")
        make_demo_data.main(["--out", args.data, "--force"])  # replaces what an interrupted generation left

    import torch
    from mmengine.runner import Runner
    from _common import load_config

    ns = argparse.Namespace(config=CONFIG, cfg_options=None, work_dir=args.work_dir, launcher="none", local_rank=0)
    cfg = load_config(ns)
    root = args.data.rstrip("/") + "/"
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = root
    for key in ("val_evaluator", "test_evaluator"):
        cfg[key].ann_file = root + "annotations/instances_val.json"
    if args.epochs is not None:
        cfg.train_cfg.max_epochs = args.epochs
        cfg.default_hooks.checkpoint.interval = args.epochs
        cfg.param_scheduler[1].end = args.epochs
        cfg.param_scheduler[1].milestones = [max(1, args.epochs - 1)]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    epochs = cfg.train_cfg.max_epochs
    print(f"[demo] training on {device} for {epochs} epochs (COCO evaluation every "
          f"{cfg.train_cfg.val_interval} and after the last); logs in {args.work_dir}")
    t0 = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()  # ends with an evaluation of the final weights on the validation split
    minutes = (time.time() - t0) / 60
    hub = runner.message_hub
    metrics = {k: hub.get_scalar(f"val/coco/{k}").current()
               for k in ("bbox_mAP", "bbox_mAP_50", "segm_mAP", "segm_mAP_50")}
    print(f"\n[demo] trained and evaluated in {minutes:.1f} min on {device}; checkpoint "
          f"{osp.join(args.work_dir, f'epoch_{epochs}.pth')}")
    print(f"[demo] bbox AP {metrics['bbox_mAP']:.3f} (AP50 {metrics['bbox_mAP_50']:.3f})   "
          f"segm AP {metrics['segm_mAP']:.3f} (AP50 {metrics['segm_mAP_50']:.3f})")
    return metrics


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
