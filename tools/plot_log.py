#!/usr/bin/env python
"""Plot an mmengine training run: loss terms over iterations and COCO bbox/segm AP over epochs.

    python tools/plot_log.py WORK_DIR [--out curves.png]

Reads the JSON scalars log mmengine writes (``WORK_DIR/<timestamp>/vis_data/scalars.json``, the newest
run when there are several; a path to a scalars.json file works too).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import os.path as osp


def find_scalars(path: str) -> str:
    if osp.isfile(path):
        return path
    found = sorted(glob.glob(osp.join(path, "*", "vis_data", "scalars.json")) +
                   glob.glob(osp.join(path, "vis_data", "scalars.json")), key=osp.getmtime)
    if not found:
        raise FileNotFoundError(f"no vis_data/scalars.json under {path}")
    return found[-1]


def read_scalars(path: str):
    """``(train, val)``: lists of dicts, training records (with 'iter') and evaluation records."""
    train, val = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            (val if any(k.startswith("coco/") for k in rec) else train).append(rec)
    return train, val


def plot(train, val, out: str, title: str = ""):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_l, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    iters = [r.get("iter", r.get("step")) for r in train]
    keys = sorted({k for r in train for k in r if k.startswith("loss")}, key=lambda k: (k != "loss", k))
    for k in keys:
        ax_l.plot(iters, [r.get(k, float("nan")) for r in train], label=k, lw=2.0 if k == "loss" else 1.0)
    ax_l.set_xlabel("iteration")
    ax_l.set_ylabel("loss")
    ax_l.set_yscale("log")
    ax_l.grid(alpha=0.3)
    ax_l.legend(fontsize=8)
    ax_l.set_title("training losses")
    if val:
        epochs = [r.get("step", i + 1) for i, r in enumerate(val)]
        for k, style in (("coco/bbox_mAP", "o-"), ("coco/bbox_mAP_50", "o--"),
                         ("coco/segm_mAP", "s-"), ("coco/segm_mAP_50", "s--")):
            if any(k in r for r in val):
                ax_ap.plot(epochs, [r.get(k, float("nan")) for r in val], style, label=k.split("/")[1])
        ax_ap.set_ylim(0, 1)
        ax_ap.legend(fontsize=8)
    else:
        ax_ap.text(0.5, 0.5, "no evaluation in this log", ha="center", va="center", transform=ax_ap.transAxes)
    ax_ap.set_xlabel("epoch")
    ax_ap.set_ylabel("COCO AP")
    ax_ap.grid(alpha=0.3)
    ax_ap.set_title("validation AP")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work_dir", help="mmengine work dir (or a scalars.json file)")
    p.add_argument("--out", default="curves.png")
    p.add_argument("--title", default=None)
    args = p.parse_args(argv)
    path = find_scalars(args.work_dir)
    train, val = read_scalars(path)
    if not train:
        raise SystemExit(f"{path} has no training records")
    plot(train, val, args.out, args.title if args.title is not None else osp.basename(osp.normpath(args.work_dir)))
    print(f"wrote {args.out} from {path}: {len(train)} training records, {len(val)} evaluations")


if __name__ == "__main__":
    main()
