#!/usr/bin/env python
"""GFLOPs and parameters of every arch, counted by mmengine's complexity analysis (``FlopAnalyzer``, the counter
behind mmdet's and mmseg's ``get_flops.py``) with the mixer's handle of :mod:`coc_det.flops`.

    python -m benchmarks.flops [--archs tiny small ...] [--det-size 800 1344] [--md F]

Columns: the classifier at 224x224 (the public models' evaluation size), and the backbone alone at the detection
size for 4 / 25 / 49 centres per region (the detection and segmentation configs' ``-4 / -25 / -49``). mmengine's
convention: one multiply-add is one flop; elementwise ops, activations and softmax-like work are not counted.
Runs on the CPU with the memory-light path (mmengine traces with torch.jit, which the meta device does not
take): about a minute for every arch.
"""
import argparse
import warnings

import torch

import coc_det  # noqa: E402,F401  (registers the mixer's flop handle)
from coc_det.backbone import ARCH_SETTINGS, PROPOSAL_OF_CENTRES, ContextCluster
from coc_det.classifier import ContextClusterClassifier


def gflops(model, shape) -> float:
    from mmengine.analysis import FlopAnalyzer
    analysis = FlopAnalyzer(model.eval(), (torch.randn(1, *shape),))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        return analysis.total() / 1e9


def rows(archs, det_size):
    out = []
    for arch in archs:
        cls = ContextClusterClassifier(arch)
        row = dict(arch=arch, params_m=sum(p.numel() for p in cls.parameters()) / 1e6,
                   cls_224=gflops(cls, (3, 224, 224)))
        div = cls.size_divisor  # the detector pads its batch to it (tiny2: 224)
        row["det_size"] = tuple(-(-s // div) * div for s in det_size)
        for centres, p in sorted(PROPOSAL_OF_CENTRES.items()):
            row[f"det_{centres}"] = gflops(ContextCluster(arch, proposal=p), (3, *row["det_size"]))
        out.append(row)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCH_SETTINGS), choices=list(ARCH_SETTINGS))
    parser.add_argument("--det-size", nargs=2, type=int, default=(800, 1344), metavar=("H", "W"))
    parser.add_argument("--md", help="also write the table as Markdown to this file")
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = rows(args.archs, args.det_size)
    h, w = args.det_size
    head = ("| arch | params (classifier) | GFLOPs classifier 224x224 | "
            f"GFLOPs backbone {h}x{w}, 4 / 25 / 49 centres |\n"
            "|---|---|---|---|")

    def padded(r):
        return "" if r["det_size"] == (h, w) else f" (padded to {r['det_size'][0]}x{r['det_size'][1]})"
    lines = [head] + [f"| `{r['arch']}` | {r['params_m']:.2f}M | {r['cls_224']:.2f} | "
                      f"{r['det_4']:.1f} / {r['det_25']:.1f} / {r['det_49']:.1f}{padded(r)} |" for r in table]
    text = "\n".join(lines)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text + "\n")
    return table


if __name__ == "__main__":
    main()
