#!/usr/bin/env python
"""Plot an mmengine training run: loss terms over iterations and COCO bbox/segm AP over epochs.

    python tools/plot_log.py WORK_DIR [--out curves.png]

Reads the JSON scalars logs mmengine writes (``WORK_DIR/<timestamp>/vis_data/scalars.json``); a resumed
run's folder continues the interrupted one's curves. A path to one scalars.json file works too.
"""
from __future__ import annotations

import argparse
import glob
import json
import os.path as osp
import sys


def find_scalars(path: str) -> list:
    """The scalars.json files of a work dir, oldest run first (a resumed run writes a new timestamped
    folder next to the interrupted one); a path to one scalars.json file gives just that file."""
    if osp.isfile(path):
        return [path]
    if not osp.isdir(path):
        raise FileNotFoundError(f"{path} is neither a work dir nor a scalars.json file")
    found = sorted(glob.glob(osp.join(path, "*", "vis_data", "scalars.json")) +
                   glob.glob(osp.join(path, "vis_data", "scalars.json")))  # timestamp folders sort by time
    if not found:
        raise FileNotFoundError(f"no vis_data/scalars.json under {path}")
    return found


def _records(path: str) -> list:
    """The JSON records of one file; a truncated last line (what a killed run leaves) is skipped with a
    note, a broken line elsewhere is an error naming it."""
    with open(path) as f:
        lines = [(i + 1, line.strip()) for i, line in enumerate(f) if line.strip()]
    recs = []
    for k, (no, line) in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                print(f"note: skipped the incomplete last line {no} of {path} (an interrupted run)", file=sys.stderr)
                continue
            raise ValueError(f"{path}:{no} is not a JSON record ({err})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{no} is a JSON {type(rec).__name__}, not a record of named scalars "
                             "(is it an mmengine scalars.json?)")
        recs.append(rec)
    return recs


def read_scalars(paths):
    """``(train, val)`` lists of dicts (training records with 'iter', evaluation records with 'step') from
    one scalars.json or several runs oldest first: a later run replaces the earlier ones' records from
    the point where it starts (a resumed run repeats the iterations after its checkpoint)."""
    train, val = [], []
    for path in [paths] if isinstance(paths, str) else paths:
        t, v = [], []
        for rec in _records(path):
            (v if any(k.startswith("coco/") for k in rec) else t).append(rec)
        if t:
            train = [r for r in train if r.get("iter", 0) < t[0].get("iter", 0)]
        if v:
            val = [r for r in val if r.get("step", 0) < v[0].get("step", 0)]
        train += t
        val += v
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
    out_dir = osp.dirname(osp.abspath(args.out))
    if not osp.isdir(out_dir):
        p.error(f"--out {args.out}: the folder {out_dir} does not exist")
    if osp.isdir(args.out):
        p.error(f"--out {args.out} is a folder; name the picture to write")
    try:
        paths = find_scalars(args.work_dir)
        train, val = read_scalars(paths)
    except (FileNotFoundError, ValueError) as err:
        p.error(str(err))
    if not train:
        p.error(f"{', '.join(paths)}: no training records")
    plot(train, val, args.out, args.title if args.title is not None else osp.basename(osp.normpath(args.work_dir)))
    print(f"wrote {args.out} from {len(paths)} run(s) ({paths[-1]}): {len(train)} training records, "
          f"{len(val)} evaluations")


if __name__ == "__main__":
    main()
