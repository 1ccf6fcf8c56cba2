#!/usr/bin/env python
"""Top-5 ImageNet classes of an image with a Context Cluster classifier (timm preprocessing of the model).

    python tools/classify.py IMAGE --model coc_small --checkpoint coc_small.pth.tar [--topk 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import os.path as osp



def build(model_name: str, checkpoint: str | None, device: str):
    import timm

    import coc_det  # noqa: F401  (registers coc_* in timm)
    from coc_det.classifier import TIMM_MODELS
    if model_name not in TIMM_MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {sorted(TIMM_MODELS)}")
    model = timm.create_model(model_name, pretrained=False)
    if checkpoint:
        from coc_det.checkpoint import read_checkpoint, state_dict_of
        from coc_det.classifier import load_classifier_state
        weights = state_dict_of(read_checkpoint(checkpoint), checkpoint)
        if any(k.startswith("backbone.") for k in weights):
            kind = "detector or segmentor" if any(k.startswith(("neck.", "decode_head.", "roi_head."))
                                                  for k in weights) else "backbone"
            raise ValueError(f"{checkpoint} is a {kind} checkpoint (weights under 'backbone.'), not an ImageNet "
                             "classifier: evaluate it with tools/test.py CONFIG CHECKPOINT, or look at its clusters "
                             "with tools/visualize_clusters.py IMAGE --config CONFIG --checkpoint CHECKPOINT")
        load_classifier_state(model, weights, checkpoint)  # strict; a one-line error naming keys
    return model.to(device).eval()


def transform_of(model):
    from timm.data import create_transform, resolve_data_config
    return create_transform(**resolve_data_config({}, model=model))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image")
    p.add_argument("--model", default="coc_small")
    p.add_argument("--checkpoint", help="a public CoC ImageNet checkpoint (random weights without it)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if not osp.isfile(args.image):
        p.error(f"image {args.image} does not exist")
    if args.checkpoint and not osp.isfile(args.checkpoint):
        p.error(f"checkpoint {args.checkpoint} does not exist")
    if not 1 <= args.topk <= 1000:
        p.error(f"--topk must be in 1..1000, got {args.topk}")
    import torch
    from timm.data import ImageNetInfo
    try:
        model = build(args.model, args.checkpoint, args.device)
    except (ValueError, RuntimeError) as err:
        p.error(str(err))
    from _image import ImageError, open_rgb
    try:
        pil = open_rgb(args.image)
    except ImageError as err:
        p.error(str(err))
    img = transform_of(model)(pil)[None].to(args.device)
    with torch.no_grad():
        prob = model(img).softmax(-1)[0]
    info = ImageNetInfo()
    top = prob.topk(args.topk)
    rows = []
    for rank, (pr, idx) in enumerate(zip(top.values.tolist(), top.indices.tolist()), 1):
        rows.append((idx, pr))
        print(f"{rank}. {info.index_to_description(idx)} (class {idx}, {info.index_to_label_name(idx)}): {pr:.4f}")
    return rows


if __name__ == "__main__":
    main()
