#!/usr/bin/env python
"""Generate the bundled demo sets of synthetic shapes: COCO-format instance segmentation (default), or the
same kind of images as semantic segmentation in ADE20K's folder layout (``--layout ade``).

Each image (128x128 by default) holds 1-4 non-overlapping circles, squares (rotated) and triangles on a
noisy background, drawn from the same polygons that are written as their masks. Class colours differ
(with jitter) so that a small model trained for a few minutes on the CPU reaches a clearly non-zero AP.
The output is fixed by the seed:

    data/coc_demo/{train,val}/*.png
    data/coc_demo/annotations/instances_{train,val}.json

    --layout ade (data/coc_demo_seg):
    data/coc_demo_seg/images/{training,validation}/*.png        RGB images
    data/coc_demo_seg/annotations/{training,validation}/*.png   label maps: 0 background, 1 circle, 2 square,
                                                                3 triangle (the polygons of the images)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

from coc_det.datasets import SHAPE_COLOURS, SHAPES as CLASSES

BASE_COLOURS = np.array(SHAPE_COLOURS, dtype=np.float64)


def _polygon(cls: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    n = {0: 24, 1: 4, 2: 3}[cls]
    start = rot + (math.pi / 4 if cls == 1 else -math.pi / 2)
    return [(cx + r * math.cos(start + 2 * math.pi * k / n), cy + r * math.sin(start + 2 * math.pi * k / n))
            for k in range(n)]


def _area(poly) -> float:
    x = np.array([p[0] for p in poly])
    y = np.array([p[1] for p in poly])
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def make_image(rng: np.random.Generator, size: int):
    """One image and its objects: ``(PIL image, [(class, polygon), ...])``."""
    bg = rng.integers(20, 90, size=3)
    arr = np.clip(bg + rng.normal(0, 12, size=(size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    objects, boxes = [], []
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(20):
            cls = int(rng.integers(0, len(CLASSES)))
            r = float(rng.uniform(0.07, 0.2) * size)
            cx, cy = rng.uniform(r + 1, size - r - 1, size=2)
            poly = _polygon(cls, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            box = (min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2)
            if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
                colour = np.clip(BASE_COLOURS[cls] + rng.normal(0, 20, size=3), 0, 255)
                draw.polygon(poly, fill=tuple(int(c) for c in colour))
                objects.append((cls, poly))
                boxes.append(box)
                break
    return img, objects


def write_split(root: str, split: str, count: int, size: int, rng: np.random.Generator) -> str:
    img_dir = os.path.join(root, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        img, objects = make_image(rng, size)
        name = f"{split}_{i:05d}.png"
        img.save(os.path.join(img_dir, name))
        images.append(dict(id=i + 1, file_name=name, width=size, height=size))
        for cls, poly in objects:
            xs, ys = [p[0] for p in poly], [p[1] for p in poly]
            x0, y0 = max(min(xs), 0.0), max(min(ys), 0.0)
            x1, y1 = min(max(xs), size), min(max(ys), size)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1, iscrowd=0,
                segmentation=[[round(v, 2) for p in poly for v in p]], area=round(_area(poly), 2),
                bbox=[round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]))
    ann_file = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(ann_file, "w") as f:
        json.dump(dict(images=images, annotations=annotations,
                       categories=[dict(id=k + 1, name=c, supercategory="shape") for k, c in enumerate(CLASSES)]), f)
    return ann_file


def write_seg_split(root: str, split: str, count: int, size: int, rng: np.random.Generator) -> str:
    """ADE20K layout: ``images/<split>/*.png`` and ``annotations/<split>/*.png`` label maps (uint8)."""
    img_dir, ann_dir = (os.path.join(root, kind, split) for kind in ("images", "annotations"))
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    for i in range(count):
        img, objects = make_image(rng, size)
        label = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(label)
        for cls, poly in objects:  # the polygons the image was drawn with, in the same order
            draw.polygon(poly, fill=cls + 1)
        name = f"{split}_{i:05d}.png"
        img.save(os.path.join(img_dir, name))
        label.save(os.path.join(ann_dir, name))
    return ann_dir


SEG_SPLITS = {"train": "training", "val": "validation"}
#: written into --out when generation starts ("complete": false) and when it ends (true): what marks a folder
#: as this tool's, the only kind it ever deletes
MARKER = ".coc_demo.json"


def dataset_parts(out: str, layout: str) -> list[str]:
    """The folders of a dataset of this layout that exist in ``out``."""
    names = ("images", "annotations") if layout == "ade" else ("train", "val", "annotations")
    return [os.path.join(out, d) for d in names if os.path.exists(os.path.join(out, d))]


def dataset_state(out: str, layout: str) -> str:
    """``"complete"`` (a finished demo set: marked so, or of the time before the marker), ``"partial"`` (this
    tool's, interrupted), ``"absent"`` (nothing of a dataset there), or ``"foreign"`` (dataset folders this tool
    did not make, e.g. a real COCO folder: never to be deleted)."""
    mark = _read_mark(out)
    if mark is not None:
        if mark.get("layout") != layout:
            return "foreign"  # the other layout's demo set: its annotations/ would be replaced
        return "complete" if mark.get("complete") else "partial"
    legacy = (os.path.isdir(os.path.join(out, "annotations", "validation")) if layout == "ade"
              else os.path.isfile(os.path.join(out, "annotations", "instances_val.json")))
    if legacy:
        return "complete"
    return "foreign" if dataset_parts(out, layout) else "absent"


def _read_mark(out: str):
    try:
        with open(os.path.join(out, MARKER)) as f:
            mark = json.load(f)
        return mark if isinstance(mark, dict) else None
    except (OSError, ValueError):
        return None


def _mark(out: str, layout: str, complete: bool) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, MARKER), "w") as f:
        json.dump({"layout": layout, "complete": complete}, f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layout", choices=("coco", "ade"), default="coco",
                   help="coco: instance segmentation (COCO json); ade: semantic label maps in ADE20K's layout")
    p.add_argument("--out", help="output folder (default: data/coc_demo, or data/coc_demo_seg for --layout ade)")
    p.add_argument("--train", type=int, default=400, help="training images (default 400)")
    p.add_argument("--val", type=int, default=80, help="validation images (default 80)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels, a multiple of 32 (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true",
                   help="replace a dataset this tool made in --out (its train/, val/ and annotations/ are deleted "
                        f"first); folders it did not make (no {MARKER}) are never deleted")
    args = p.parse_args(argv)
    if args.size < 32 or args.size % 32:
        p.error(f"--size must be a positive multiple of 32 (the backbone's size divisor), got {args.size}")
    for name in ("train", "val"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.out is None:
        args.out = "data/coc_demo_seg" if args.layout == "ade" else "data/coc_demo"
    existing = dataset_parts(args.out, args.layout)
    if existing and (_read_mark(args.out) or {}).get("layout") != args.layout:
        p.error(f"{args.out} holds {', '.join(existing)}, which this tool did not make as a {args.layout} set (see "
                f"{MARKER}): it deletes nothing of it; choose another --out")
    if existing and not args.force:
        p.error(f"{args.out} already holds a demo dataset ({', '.join(existing)}); pass --force to replace it")
    for d in existing:
        shutil.rmtree(d)
    _mark(args.out, args.layout, complete=False)
    rng = np.random.default_rng(args.seed)
    for split, n in (("train", args.train), ("val", args.val)):
        if args.layout == "ade":
            where = write_seg_split(args.out, SEG_SPLITS[split], n, args.size, rng)
            print(f"wrote {n} images and label maps in {where}")
        else:
            print(f"wrote {n} images and {write_split(args.out, split, n, args.size, rng)}")
    _mark(args.out, args.layout, complete=True)


if __name__ == "__main__":
    main()
