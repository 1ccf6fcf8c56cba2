#!/usr/bin/env python
"""Draw the Context Cluster assignment of an image: each region's clusters as coloured areas.

    python tools/visualize_clusters.py IMAGE --config CFG [--checkpoint CKPT] --stage S --block K
                                       [--head H] [--out clusters.png] [--size 224]

The image is resized so that its longer side is ``--size`` and padded to the backbone's size divisor,
the backbone of CFG is built (random weights unless ``--checkpoint``: a detector checkpoint, whose
``backbone.`` weights are used, or an ImageNet CoC checkpoint), and the assignment of block K of stage S
(0-based) is drawn: one colour per centre, blended over the image, region borders in white. Without
``--head`` every head gets a panel, side by side.
"""
from __future__ import annotations

import argparse
import os.path as osp

import numpy as np
import torch
from PIL import Image

from _image import ImageError, open_rgb

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
ALPHA = 0.55  # weight of the cluster colour in the blend
GAP = 4  # pixels between panels
MAX_SIZE = 4096  # longest --size: the whole image goes through the backbone at once (100000 took > 20 GB)


def palette(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 distinct colours (golden-ratio hues)."""
    import colorsys
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95)]
                     for k in range(n)], dtype=np.uint8)


def render(image: np.ndarray, assign: np.ndarray, num_centres: int, fold) -> np.ndarray:
    """Blend cluster colours over an image.

    Args:
        image: ``[H, W, 3]`` uint8.
        assign: ``[h, w]`` centre indices at the feature map's resolution (H, W multiples of h, w).
        num_centres: M, for the palette.
        fold: ``(fh, fw)`` regions per axis; their borders are drawn in white.
    Returns ``[H, W, 3]`` uint8.
    """
    H, W = image.shape[:2]
    h, w = assign.shape
    sy, sx = H // h, W // w
    colours = palette(num_centres)[np.repeat(np.repeat(assign, sy, 0), sx, 1)]
    out = np.round((1 - ALPHA) * image.astype(np.float64) + ALPHA * colours).astype(np.uint8)
    fh, fw = fold
    for i in range(1, fh):
        out[i * H // fh, :] = 255
    for j in range(1, fw):
        out[:, j * W // fw] = 255
    return out


def side_by_side(panels):
    H = panels[0].shape[0]
    W = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    canvas = np.full((H, W, 3), 255, dtype=np.uint8)
    x = 0
    for p in panels:
        canvas[:, x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    return canvas


def load_image(path: str, size: int, divisor: int) -> np.ndarray:
    img = open_rgb(path)
    scale = size / max(img.size)
    nw, nh = (max(divisor, round(d * scale / divisor) * divisor) for d in img.size)
    return np.asarray(img.resize((nw, nh), Image.BILINEAR))


def build_backbone(config: str, checkpoint: str | None):
    from mmengine.config import Config
    import coc_det  # noqa: F401
    from coc_det.backbone import ContextCluster

    cfg = Config.fromfile(config)
    bb = dict(cfg.model.backbone)
    bb.pop("type")
    bb["init_cfg"] = None
    model = ContextCluster(**bb)
    if checkpoint:
        from coc_det.backbone import match_trained_denominator
        model.load_pretrained(checkpoint)  # raises when the checkpoint does not fit the model
        note = match_trained_denominator(model, checkpoint)
        if note:
            print(f"note: {note}")
    return model.eval()


def cluster_maps(model, image: np.ndarray, stage: int, block: int) -> torch.Tensor:
    from coc_det.backbone import record_assignments
    x = torch.from_numpy(((image - MEAN) / STD).astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad(), record_assignments(model, [(stage, block)]) as maps:
        model(x)
    return maps[(stage, block)][0]  # [heads, h, w]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--config", required=True)
    p.add_argument("--checkpoint")
    p.add_argument("--stage", type=int, default=0)
    p.add_argument("--block", type=int, default=0)
    p.add_argument("--head", type=int, help="one head only (default: all heads, one panel each)")
    p.add_argument("--size", type=int, default=224, help="longer image side (default 224)")
    p.add_argument("--out", default="clusters.png")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (no --checkpoint)")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    for path, what in ((args.image, "image"), (args.config, "config")):
        if not osp.isfile(path):
            p.error(f"{what} {path} does not exist")
    from coc_det.checkpoint import CheckpointError
    try:
        model = build_backbone(args.config, args.checkpoint)
    except (CheckpointError, FileNotFoundError) as err:
        p.error(str(err))
    if not 0 <= args.stage < len(model.folds) or not 0 <= args.block < len(model.network[2 * args.stage]):
        p.error(f"no block {args.block} in stage {args.stage}")
    n_heads = model.network[2 * args.stage][args.block].token_mixer.heads
    if args.head is not None and not 0 <= args.head < n_heads:
        p.error(f"--head {args.head}: block {args.block} of stage {args.stage} has heads 0..{n_heads - 1}")
    if args.size < model.size_divisor:
        p.error(f"--size {args.size}: the longer side must be at least the backbone's size divisor "
                f"{model.size_divisor}")
    if args.size > MAX_SIZE:
        p.error(f"--size {args.size}: at most {MAX_SIZE} (the whole image goes through the backbone at once)")
    try:
        image = load_image(args.image, args.size, model.size_divisor)
    except ImageError as err:
        p.error(str(err))
    maps = cluster_maps(model, image, args.stage, args.block).numpy()
    mixer = model.network[2 * args.stage][args.block].token_mixer
    ph, pw = (mixer.proposal, mixer.proposal) if isinstance(mixer.proposal, int) else mixer.proposal
    fold = (mixer.fold, mixer.fold) if isinstance(mixer.fold, int) else mixer.fold
    heads = [args.head] if args.head is not None else range(maps.shape[0])
    canvas = side_by_side([render(image, maps[h], ph * pw, fold) for h in heads])
    Image.fromarray(canvas).save(args.out)
    print(f"wrote {args.out} ({canvas.shape[1]}x{canvas.shape[0]}): stage {args.stage} block {args.block}, "
          f"heads {list(heads)}, {ph * pw} centres per region, fold {fold}")


if __name__ == "__main__":
    main()
