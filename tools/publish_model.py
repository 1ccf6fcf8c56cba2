#!/usr/bin/env python
"""Prepare a trained checkpoint for release, as mmdet's tool does: drop the optimizer, schedulers and message
hub, keep ``meta`` and ``state_dict``, and name the file with the first 8 hex digits of its sha256.

    python tools/publish_model.py work_dirs/demo/epoch_6.pth coc_demo_maskrcnn.pth
    # -> coc_demo_maskrcnn-<sha256[:8]>.pth

The input is read weights-only (nothing in it runs); the output holds tensors and plain metadata only.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
import tempfile


DROP = ("optimizer", "param_schedulers", "message_hub")


def publish(src: str, out: str) -> str:
    import torch

    from coc_det.checkpoint import read_checkpoint
    ckpt = read_checkpoint(src)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ValueError(f"{src} is not an mmengine checkpoint (no 'state_dict')")
    slim = {k: v for k, v in ckpt.items() if k not in DROP}
    base = out[:-4] if out.endswith(".pth") else out
    # a fresh name in the output folder (mkstemp creates it, so it can never be the input or any other file)
    fd, tmp = tempfile.mkstemp(prefix=f".{osp.basename(base)}.", suffix=".partial", dir=osp.dirname(osp.abspath(out)))
    os.close(fd)
    try:
        torch.save(slim, tmp)
        with open(tmp, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        final = f"{base}-{sha[:8]}.pth"
        os.replace(tmp, final)
    finally:  # no partial output
        if osp.exists(tmp):
            os.remove(tmp)
    return final


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("in_file")
    p.add_argument("out_file")
    args = p.parse_args(argv)
    if not osp.isfile(args.in_file):
        p.error(f"{args.in_file} does not exist")
    if osp.isdir(args.out_file) or args.out_file.endswith(("/", os.sep)):
        p.error(f"{args.out_file} is a folder: name the output file (e.g. {osp.join(args.out_file, 'model.pth')})")
    if not osp.basename(args.out_file[:-4] if args.out_file.endswith(".pth") else args.out_file):
        p.error(f"{args.out_file}: the output needs a name before .pth")
    out_dir = osp.dirname(osp.abspath(args.out_file))
    if not osp.isdir(out_dir):
        p.error(f"the output folder {out_dir} does not exist")
    from coc_det.checkpoint import CheckpointError
    try:
        final = publish(args.in_file, args.out_file)
    except (CheckpointError, ValueError) as err:
        p.error(str(err))
    print(f"wrote {final} ({osp.getsize(final) / 2 ** 20:.1f} MiB)")
    return final


if __name__ == "__main__":
    main()
