#!/usr/bin/env python
"""The README's main job: make the bundled demo data (if missing), train Mask R-CNN + Context Cluster on
it on this machine (CPU or GPU), then evaluate the final checkpoint and print COCO bbox/segm AP.
``--seg`` does the same for semantic segmentation (Semantic FPN + CoC, mmseg) and prints mIoU.

    python tools/run_demo.py [--epochs N] [--work-dir work_dirs/demo] [--data data/coc_demo]
    python tools/run_demo.py --seg [--iters N] [--work-dir work_dirs/demo_seg] [--data data/coc_demo_seg]
"""
import argparse
import os
import os.path as osp
import time

HERE = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(HERE)
CONFIG = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")
SEG_CONFIG = osp.join(ROOT, "configs", "demo", "fpn_coc-demo_shapes.py")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seg", action="store_true", help="the semantic segmentation demo (mmseg, mIoU)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo config's)")
    p.add_argument("--iters", type=int, default=None, help="--seg: training iterations (default: the config's)")
    p.add_argument("--work-dir", help="default work_dirs/demo (work_dirs/demo_seg with --seg)")
    p.add_argument("--data", help="demo data folder (default data/coc_demo, data/coc_demo_seg with --seg)")
    args = p.parse_args(argv)
    # paths are the caller's, relative to where they ran it (the demo then works from the repository root)
    args.work_dir, args.data = (osp.abspath(d) if d else None for d in (args.work_dir, args.data))
    if args.work_dir and osp.exists(args.work_dir) and not osp.isdir(args.work_dir):
        p.error(f"--work-dir {args.work_dir} is a file, not a folder")
    if args.data and osp.exists(args.data) and not osp.isdir(args.data):
        p.error(f"--data {args.data} is a file, not a folder")
    os.chdir(ROOT)
    for name in ("epochs", "iters"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.iters is not None and not args.seg:
        p.error("--iters is for --seg (the detection demo counts --epochs)")
    if args.seg:
        return seg_demo(args)
    args.work_dir = args.work_dir or osp.join(ROOT, "work_dirs", "demo")
    args.data = args.data or osp.join(ROOT, "data", "coc_demo")

    ensure_demo_data(args.data, "coco")

    import torch
    from mmengine.runner import Runner
    from _config import load_config

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


def ensure_demo_data(data: str, layout: str) -> None:
    """Use the demo set in ``data``, or generate it there; never delete what the demo did not make."""
    import make_demo_data
    state = make_demo_data.dataset_state(data, layout)
    if state == "complete":
        return
    if state == "foreign":
        raise SystemExit(f"[demo] {data} holds {', '.join(make_demo_data.dataset_parts(data, layout))}, which the "
                         "demo did not make: it trains only on its own synthetic data and deletes nothing of "
                         "yours; pass --data with a new or empty folder")
    what = "semantic, ADE20K layout" if layout == "ade" else "COCO instances"
    print(f"[demo] generating the synthetic shapes dataset ({what}) in {data}")
    # --force replaces what an interrupted generation of the demo left (marked as the demo's, nothing else)
    make_demo_data.main(["--layout", layout, "--out", data] + (["--force"] if state == "partial" else []))


def set_seg_iters(cfg, iters: int) -> None:
    """Train the segmentation demo for ``iters`` iterations: the config's schedule is a linear warm-up over
    its first iterations, then poly decay to the end. Fewer iterations than twice the warm-up shorten the
    warm-up to half of them (none for a single iteration), so the poly decay always has room to run."""
    warmup, poly = cfg.param_scheduler
    warm = min(warmup.end, iters // 2)
    cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = cfg.default_hooks.checkpoint.interval = iters
    poly.begin, poly.end = warm, iters
    if warm == 0:
        cfg.param_scheduler = [poly]
    else:
        warmup.end = warm


def seg_demo(args):
    import torch
    from mmengine.runner import Runner
    from _config import load_config

    work_dir = args.work_dir or osp.join(ROOT, "work_dirs", "demo_seg")
    data = (args.data or osp.join(ROOT, "data", "coc_demo_seg")).rstrip("/") + "/"
    ensure_demo_data(data, "ade")
    ns = argparse.Namespace(config=SEG_CONFIG, cfg_options=None, work_dir=work_dir, launcher="none", local_rank=0)
    cfg = load_config(ns)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key].dataset.data_root = data
    if args.iters is not None:
        set_seg_iters(cfg, args.iters)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    iters = cfg.train_cfg.max_iters
    print(f"[demo-seg] training Semantic FPN + CoC on {device} for {iters} iterations; logs in {work_dir}")
    t0 = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()  # ends with an evaluation of the final weights on the validation split
    minutes = (time.time() - t0) / 60
    hub = runner.message_hub
    metrics = {k: hub.get_scalar(f"val/{k}").current() for k in ("mIoU", "aAcc", "mAcc")}
    print(f"\n[demo-seg] trained and evaluated in {minutes:.1f} min on {device}; checkpoint "
          f"{osp.join(work_dir, f'iter_{iters}.pth')}")
    print(f"[demo-seg] mIoU {metrics['mIoU']:.2f}  (aAcc {metrics['aAcc']:.2f}, mAcc {metrics['mAcc']:.2f}; "
          f"4 classes incl. background)")
    return metrics


if __name__ == "__main__":
    main()
