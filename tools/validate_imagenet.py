#!/usr/bin/env python
"""ImageNet validation of a Context Cluster classifier: top-1 / top-5 accuracy and images per second.

    python tools/validate_imagenet.py ROOT --model coc_small --checkpoint coc_small.pth.tar
                                      [--batch-size 128] [--workers 8] [--amp] [--device cuda]

ROOT is an ImageFolder (one folder per class, named by WordNet id, e.g. ``imagenet/val``). Each folder's
WordNet id is mapped to the model's ImageNet-1k class index (timm's ``ImageNetInfo`` order, that of the
published models), so a folder holding a subset of the classes is scored against the right ones; a folder
name that is not an ImageNet-1k WordNet id is refused. The model's own evaluation transform is used
(224 px, crop 0.9, bicubic). Throughput counts the model's forward passes only (data loading excluded),
after one warm-up batch. Public anchors: top-1 tiny 71.8 (re-trained 73.2), small 77.5 (78.1), medium 81.0
(81.2); small 513 and medium 325 img/s (their README).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import time



class ToImageNetIndex:
    """ImageFolder target (index of the folder in sorted order) -> ImageNet-1k class index of its WordNet id."""

    def __init__(self, folder_classes, wnids):
        index = {w: i for i, w in enumerate(wnids)}
        unknown = [c for c in folder_classes if c not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} class folder(s) are not ImageNet-1k WordNet ids (e.g. {unknown[:3]}); "
                             "name each folder by its WordNet id, e.g. n01440764")
        self.indices = [index[c] for c in folder_classes]

    def __call__(self, target: int) -> int:
        return self.indices[target]


def main(argv=None):
    import torch
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--model", default="coc_small")
    p.add_argument("--checkpoint")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("--amp", action="store_true", help="bf16 autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not osp.isdir(args.root):
        p.error(f"{args.root} is not a folder")
    if args.checkpoint and not osp.isfile(args.checkpoint):
        p.error(f"checkpoint {args.checkpoint} does not exist")
    if args.batch_size < 1:
        p.error("--batch-size must be positive")
    from torchvision.datasets import ImageFolder

    from classify import build, transform_of
    try:
        model = build(args.model, args.checkpoint, args.device)
    except (ValueError, RuntimeError) as err:
        p.error(str(err))
    from timm.data import ImageNetInfo
    if model.num_classes != 1000:
        p.error(f"{args.model} has {model.num_classes} classes: this tool scores ImageNet-1k classifiers")
    try:
        data = ImageFolder(args.root, transform=transform_of(model))
        data.target_transform = ToImageNetIndex(data.classes, ImageNetInfo().label_names())
    except (FileNotFoundError, ValueError) as err:  # no class folders / no images / unknown folder names
        p.error(f"{args.root}: {err}")
    if len(data) == 0:
        p.error(f"no images under {args.root}")
    loader = torch.utils.data.DataLoader(data, batch_size=args.batch_size, num_workers=args.workers,
                                         pin_memory=args.device.startswith("cuda"))
    correct1 = correct5 = seen = timed = 0
    model_time = 0.0
    k = min(5, model.num_classes)
    for i, (img, target) in enumerate(loader):
        img, target = img.to(args.device), target.to(args.device)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=args.amp):
            logits = model(img)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if i > 0:  # the first batch warms up (and compiles kernels)
            model_time += time.perf_counter() - t0
            timed += len(img)
        top = logits.float().topk(k, dim=-1).indices
        correct1 += (top[:, 0] == target).sum().item()
        correct5 += (top == target[:, None]).any(-1).sum().item()
        seen += len(img)
    rate = f"{timed / model_time:.1f} img/s" if timed else "n/a (one batch: nothing timed after warm-up)"
    print(f"{args.model} on {seen} images of {len(data.classes)} classes ({args.device}, batch {args.batch_size}"
          f"{', bf16' if args.amp else ''}): top-1 {100 * correct1 / seen:.2f} %, top-5 {100 * correct5 / seen:.2f} %, "
          f"{rate}")
    return dict(top1=100 * correct1 / seen, top5=100 * correct5 / seen, images=seen,
                img_per_s=timed / model_time if timed else None)


if __name__ == "__main__":
    main()
