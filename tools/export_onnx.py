#!/usr/bin/env python
"""Export a Context Cluster model to ONNX (standard ops, dynamic batch, height and width), then check the file
with onnxruntime against torch and time both.

    python tools/export_onnx.py small --checkpoint coc_small.pth.tar --out coc_small_backbone.onnx
    python tools/export_onnx.py coc_small --checkpoint coc_small.pth.tar --out coc_small.onnx
    python tools/export_onnx.py configs/mask-rcnn_coc-small-4_fpn_1x_coco.py --checkpoint det.pth --out det.onnx
    python tools/export_onnx.py configs/segmentation/fpn_coc-small-4_ade20k-512x512_80k.py --out seg.onnx

What is exported, by the first argument:
    an arch (``tiny``, ``small``, ... of ``ARCH_SETTINGS``)  the backbone: 4 maps ``feat0..feat3`` (strides 4-32)
    a timm name (``coc_small``, ...)                          the ImageNet classifier: ``logits [B, 1000]``
    a segmentation config (mmseg, a ``decode_head``)         the whole segmentor: ``seg_logits [B, classes, H, W]``
                                                             (mmseg's predict before its argmax)
    a detection config (mmdet)                               backbone + neck: the FPN maps ``p0..p4``. The RPN and
                                                             RoI heads (proposal sorting, RoIAlign, NMS, data-
                                                             dependent box counts) are not exported: deploy them
                                                             with MMDeploy, fed by these maps.
The input is ``images [B, 3, H, W]``, normalised as the model expects (for configs: the data preprocessor's
mean/std, RGB), with B, H and W symbolic (H and W multiples of the model's size divisor: 32, or 224 for tiny2).
The mixer is exported as its memory-light math in standard ONNX ops (``coc_kernels.reference.
context_cluster_export``), whatever ``mixer_impl`` the model was built with.
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

#: a traced batch of 1 would be specialised to 1; the example batch is 2 and the exported batch symbolic
EXAMPLE_BATCH = 2
#: largest |onnxruntime - torch| accepted, relative to the output's largest magnitude (fp32 summation order)
RTOL = 1e-4
#: the oldest opset torch's dynamo exporter writes
MIN_OPSET = 18


class FeaturePyramid(nn.Module):
    """A detector's backbone + neck: ``[B, 3, H, W] -> (p0, ..., pk)``."""

    def __init__(self, detector):
        super().__init__()
        self.backbone, self.neck = detector.backbone, detector.neck

    def forward(self, images):
        return tuple(self.neck(self.backbone(images)))


class SegmentorLogits(nn.Module):
    """An mmseg encoder-decoder's logits at the input size, as its ``predict`` computes them before the
    argmax: ``[B, 3, H, W] -> [B, classes, H, W]``."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor
        _scale_upsampling(segmentor)

    def forward(self, images):
        seg = self.segmentor.decode_head(self.segmentor.extract_feat(images))
        return F.interpolate(seg, size=images.shape[2:], mode="bilinear",
                             align_corners=self.segmentor.decode_head.align_corners)


def _scale_upsampling(model: nn.Module) -> int:
    """Replace mmseg's ``Upsample(scale_factor=k)`` (which computes its output size with ``int()``: a traced
    graph keeps the example's size as a constant, silently wrong at any other size) by ``nn.Upsample`` with the
    same factor, mode and corners: the same interpolation (source scale 1/k either way), a symbolic size."""
    n = 0
    for name, m in list(model.named_modules()):
        if type(m).__name__ == "Upsample" and type(m).__module__.startswith("mmseg") and not m.size:
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2],
                    nn.Upsample(scale_factor=m.scale_factor, mode=m.mode, align_corners=m.align_corners))
            n += 1
    return n


def build(target: str, checkpoint: str | None):
    """``(module, input side divisor, output names, what)`` for an arch, a timm name or a config."""
    from coc_det.backbone import ARCH_SETTINGS, ContextCluster
    from coc_det.classifier import TIMM_MODELS, ContextClusterClassifier, load_classifier_checkpoint
    from coc_det.backbone import match_trained_denominator
    if target in ARCH_SETTINGS:
        model = ContextCluster(target)
        if checkpoint:
            model.load_pretrained(checkpoint)
        built = model, model.size_divisor, [f"feat{i}" for i in model.out_indices], "backbone"
    elif target in TIMM_MODELS:
        model = ContextClusterClassifier(TIMM_MODELS[target])
        if checkpoint:
            load_classifier_checkpoint(model, checkpoint)
        built = model, model.size_divisor, ["logits"], "classifier"
    else:
        built = _build_from_config(target, checkpoint)
    note = match_trained_denominator(built[0], checkpoint) if checkpoint else ""
    if note:
        print(f"note: {note}")
    return built


def _build_from_config(path: str, checkpoint: str | None):
    try:
        from mmengine.config import Config
    except ImportError:
        raise SystemExit(f"{path!r} is neither an arch ({_choices()}) nor, without mmengine, a config") from None
    from _config import resolve_config
    path = resolve_config(path)
    if not osp.isfile(path):
        raise SystemExit(f"{path!r} is not an arch or timm name ({_choices()}) nor a config file")
    cfg = Config.fromfile(path)
    import coc_det  # noqa: F401  (registers the backbone)
    segmentor = "decode_head" in cfg.model
    if segmentor:
        from mmseg.registry import MODELS
        from mmseg.utils import register_all_modules
    else:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
    register_all_modules()
    model = MODELS.build(cfg.model)
    if checkpoint:
        from coc_det.checkpoint import read_checkpoint, state_dict_of
        model.load_state_dict(state_dict_of(read_checkpoint(checkpoint), checkpoint))
    divisor = model.backbone.size_divisor
    if segmentor:
        return SegmentorLogits(model), divisor, ["seg_logits"], "segmentor"
    if getattr(model, "neck", None) is None:
        raise SystemExit(f"{path}: the detector has no neck; export its backbone by arch instead")
    names = [f"p{i}" for i in range(model.neck.num_outs)] if hasattr(model.neck, "num_outs") else None
    return FeaturePyramid(model), divisor, names, "detector backbone + neck"


def _choices() -> str:
    from coc_det.backbone import ARCH_SETTINGS
    return ", ".join(list(ARCH_SETTINGS) + [f"coc_{a}" for a in ARCH_SETTINGS])


def export(model: nn.Module, divisor: int, out: str, side: tuple, output_names=None, optimize: bool = True,
           opset: int = 18):
    """``torch.onnx.export`` (dynamo) of ``model`` with symbolic batch and H, W (multiples of ``divisor``);
    returns the export time in seconds. ``side``: the example (H, W)."""
    from torch.export import Dim
    if side[0] % divisor or side[1] % divisor:
        raise SystemExit(f"--shape {side[0]} {side[1]}: height and width must be multiples of {divisor}")
    batch = Dim("batch", min=1, max=1024)
    h, w = Dim("h_blocks", min=1, max=8192 // divisor), Dim("w_blocks", min=1, max=8192 // divisor)
    example = torch.randn(EXAMPLE_BATCH, 3, *side)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(model, (example,), out, dynamo=True, input_names=["images"], output_names=output_names,
                          dynamic_shapes=({0: batch, 2: divisor * h, 3: divisor * w},),
                          optimize=optimize, opset_version=opset, external_data=False, verbose=False)
    return time.perf_counter() - t0


def _as_list(y):
    return [y] if isinstance(y, torch.Tensor) else list(y)


def _median_time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |got - ref| / max |ref|``; infinite when either holds a NaN or an infinity (a comparison with NaN is
    false, so a NaN must never be allowed to pass as a small error: ``max(0.0, nan)`` is 0.0)."""
    if not (bool(torch.isfinite(got).all()) and bool(torch.isfinite(ref).all())):
        return float("inf")
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def verify(model: nn.Module, path: str, shapes, repeat: int = 3, seed: int = 0):
    """Run the ONNX file with onnxruntime (CPU) and the torch model on the same images; returns one row per
    shape: ``(shape, worst relative error over outputs, onnxruntime ms, torch ms)``."""
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    g = torch.Generator().manual_seed(seed)
    rows = []
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = _as_list(model(x))
        got = sess.run(None, {name: x.numpy()})
        if len(got) != len(ref):
            raise AssertionError(f"{path}: {len(got)} outputs, torch gives {len(ref)}")
        err = 0.0
        for o, r in zip(got, ref):
            o = torch.from_numpy(o)
            if o.shape != r.shape:
                raise AssertionError(f"{path} at {tuple(shape)}: output {tuple(o.shape)}, torch {tuple(r.shape)}")
            err = max(err, relative_error(o, r))
        ort_s = _median_time(lambda: sess.run(None, {name: x.numpy()}), repeat)
        with torch.no_grad():
            torch_s = _median_time(lambda: model(x), repeat)
        rows.append((tuple(shape), err, ort_s * 1e3, torch_s * 1e3))
    return rows


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an arch (small), a timm name (coc_small), or an mmdet/mmseg config")
    p.add_argument("--checkpoint", help="weights to load (public ImageNet, or this project's detector/segmentor)")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                   help="example height and width (multiples of the size divisor; default 2 divisors each)")
    p.add_argument("--verify-shape", type=int, nargs=2, metavar=("H", "W"), action="append",
                   help="further image sizes to check with onnxruntime (the example's is always checked)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--no-optimize", action="store_true", help="skip the ONNX graph optimiser (faster export)")
    p.add_argument("--no-verify", action="store_true", help="do not run onnxruntime")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per shape (median)")
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.opset < MIN_OPSET:
        p.error(f"--opset {args.opset}: torch's ONNX exporter (dynamo) writes opset {MIN_OPSET} or newer")
    for flag, hw in [("--shape", args.shape)] + [("--verify-shape", s) for s in args.verify_shape or []]:
        if hw is not None and min(hw) < 1:
            p.error(f"{flag} {hw[0]} {hw[1]}: height and width must be positive")
    out = osp.abspath(args.out)
    if osp.isdir(out):
        p.error(f"--out {args.out} is a folder; name the .onnx file to write")
    if not osp.isdir(osp.dirname(out)) and osp.exists(osp.dirname(out)):
        p.error(f"--out {args.out}: {osp.dirname(out)} is not a folder")
    for flag, path in (("--checkpoint", args.checkpoint), ("the model", args.model)):
        if path and osp.exists(path) and osp.exists(out) and osp.samefile(path, out):
            p.error(f"--out {args.out} is {flag} itself: it would be overwritten; write the ONNX file elsewhere")
    if args.checkpoint and not osp.isfile(args.checkpoint):
        p.error(f"--checkpoint {args.checkpoint} is not a file")
    return args


def _check_writable(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    if not os.access(folder, os.W_OK):
        raise SystemExit(f"cannot write into {folder}")


def _check_sizes(flag: str, hw, divisor: int, least: int = 1) -> None:
    """Height and width multiples of ``divisor``, at least ``least`` of them each."""
    if hw[0] % divisor or hw[1] % divisor or min(hw) < least * divisor:
        raise SystemExit(f"{flag} {hw[0]} {hw[1]}: height and width must be multiples of {divisor}"
                         + (f", at least {least * divisor} (torch.export fixes an axis of one block to that size)"
                            if least > 1 else ""))


def cpu_mixers(model: nn.Module) -> int:
    """Set every mixer to ``impl='auto'`` (the torch path on the CPU, where onnxruntime is compared with
    torch); configs for GPU training say ``'triton'``. The export itself ignores ``impl``. Returns how many
    mixers changed."""
    from coc_det.backbone import Cluster
    changed = 0
    for m in model.modules():
        if isinstance(m, Cluster) and m.impl == "triton":
            m.impl, changed = "auto", changed + 1
    return changed


def main(argv=None):
    args = parse_args(argv)
    out = osp.abspath(args.out)
    _check_writable(osp.dirname(out))  # before the export's minute, not after it
    from coc_det.checkpoint import CheckpointError
    try:
        model, divisor, names, what = build(args.model, args.checkpoint)
    except (CheckpointError, RuntimeError) as err:  # another arch, a classifier for a backbone, not weights
        raise SystemExit(f"error: {args.checkpoint} cannot be loaded into {args.model}: {str(err).splitlines()[0]}")
    model.eval()
    side = tuple(args.shape) if args.shape else (2 * divisor, 2 * divisor)
    _check_sizes("--shape", side, divisor, least=2)
    for hw in args.verify_shape or []:
        _check_sizes("--verify-shape", hw, divisor)
    if cpu_mixers(model):
        print("note: mixer_impl 'triton' -> 'auto' for the CPU comparison (the export records the same ONNX "
              "ops for every impl)")
    # written under a temporary name in the same folder, renamed over --out only once it is checked: a failed
    # export or verification leaves --out as it was
    tmp = osp.join(osp.dirname(out), f".{osp.basename(out)}.{os.getpid()}.partial")
    try:
        seconds = export(model, divisor, tmp, side, names, optimize=not args.no_optimize, opset=args.opset)
        import onnx
        onnx_model = onnx.load(tmp)
        graph = onnx_model.graph
        opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
        if opset != args.opset:
            print(f"FAILED: asked for opset {args.opset}, the exporter wrote {opset}", file=sys.stderr)
            return 1
        print(f"exported {what} of {args.model}: {len(graph.node)} nodes, {osp.getsize(tmp) / 2 ** 20:.1f} MiB, "
              f"opset {opset}, in {seconds:.1f} s; input images [batch, 3, H, W] with H, W multiples of "
              f"{divisor}; outputs {[o.name for o in graph.output]}")
        if not args.no_verify:
            shapes = [(EXAMPLE_BATCH, 3) + side, (1, 3, side[0] + divisor, side[1] + 2 * divisor)]
            shapes += [(1, 3, h, w) for h, w in args.verify_shape or []]
            rows = verify(model, tmp, shapes, args.repeat)
            print(f"| input | max rel. error | onnxruntime ms | torch ms ({torch.get_num_threads()} threads, CPU) |")
            print("|---|---|---|---|")
            for shape, err, ort_ms, torch_ms in rows:
                print(f"| {'x'.join(map(str, shape))} | {err:.1e} | {ort_ms:.1f} | {torch_ms:.1f} |")
            bad = [r for r in rows if not r[1] <= RTOL]
            if bad:
                print(f"FAILED: onnxruntime differs from torch by more than {RTOL:g} (relative), or an output "
                      f"is not finite, at {[r[0] for r in bad]}; nothing written to {args.out}", file=sys.stderr)
                return 1
            print(f"onnxruntime equals torch within {RTOL:g} (relative) at every size checked")
        replaced = osp.exists(out)
        os.replace(tmp, out)
        print(f"{'replaced' if replaced else 'wrote'} {args.out}")
        return 0
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


if __name__ == "__main__":
    sys.exit(main())
