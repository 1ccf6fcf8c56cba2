"""Inputs that once gave a wrong answer without a word: a checkpoint's denominator followed by one tool and not
the others, a detector checkpoint that timm "loaded" into nothing, 16-bit images saturated to white."""
import os.path as osp
import sys

import numpy as np
import pytest
import torch

from coc_det import ContextCluster
from conftest import ROOT  # noqa: E402
sys.path.insert(0, osp.join(ROOT, "tools"))

DEMO = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")


def _denominators(model):
    from coc_det.backbone import Cluster
    return {m.denominator for m in model.modules() if isinstance(m, Cluster)}


def _detector_checkpoint(path, backbone, mmdet_version):
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(8, 8, 1, 1)
    torch.save({"meta": {"mmdet_version": mmdet_version}, "state_dict": state}, path)
    return path


@pytest.mark.parametrize("version,want", [("2.25.0", "count"), ("3.3.0", "similarity")])
def test_every_tool_takes_the_denominator_a_checkpoint_was_trained_with(tmp_path, version, want):
    """tools/test.py switched original (mmdet 2.x) checkpoints to ``count``; export_onnx and visualize_clusters
    ran them with ``similarity`` (FPN outputs 12 % apart). Now one function decides for all three."""
    from mmengine.config import Config

    import export_onnx
    import visualize_clusters
    from coc_det.checkpoint import trained_denominator
    tiny = _detector_checkpoint(tmp_path / "tiny.pth", ContextCluster("tiny"), version)
    model = export_onnx.build("tiny", str(tiny))[0]
    assert _denominators(model) == {want}
    bb = dict(Config.fromfile(DEMO).model.backbone)
    bb.pop("type")
    bb["init_cfg"] = None
    demo = _detector_checkpoint(tmp_path / "demo.pth", ContextCluster(**bb), version)
    assert _denominators(visualize_clusters.build_backbone(DEMO, str(demo))) == {want}
    assert trained_denominator(torch.load(demo))[0] == (want if want == "count" else None)
    # tools/test.py takes it from the same function (its run is tested in test_mmdet_integration)
    assert "trained_denominator(ckpt)" in open(osp.join(ROOT, "tools", "test.py")).read()


def test_timm_features_only_from_a_detector_checkpoint_loads_its_backbone(tmp_path):
    """``pretrained_cfg_overlay=dict(file=DETECTOR_CKPT)`` with ``features_only``: timm loads non-strictly, so
    ``backbone.*`` keys once fitted nothing and the model stayed random behind a warning. Its stages are
    loaded now; a checkpoint of another arch is refused."""
    timm = pytest.importorskip("timm")
    import coc_det  # noqa: F401  (registers the models)
    from coc_det.checkpoint import CheckpointError
    torch.manual_seed(1)
    backbone = ContextCluster("tiny")
    ckpt = _detector_checkpoint(tmp_path / "det.pth", backbone, "3.3.0")
    model = timm.create_model("coc_tiny", features_only=True, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(ckpt)))
    own = backbone.state_dict()
    loaded = {k[len("model."):]: v for k, v in model.state_dict().items() if k[len("model."):] in own}
    assert len(loaded) > 0.9 * len(own)
    assert all(torch.equal(v, own[k]) for k, v in loaded.items())
    other = _detector_checkpoint(tmp_path / "small.pth", ContextCluster("small"), "3.3.0")
    with pytest.raises(CheckpointError, match="do not fit"):
        timm.create_model("coc_tiny", features_only=True, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(other)))


def test_16_bit_images_are_scaled_to_8_bits(tmp_path):
    """``convert('RGB')`` of a 16-bit PNG clips every value above 255 to white (99.6 % of a natural image)."""
    from PIL import Image

    from _image import WIDE_MODES, ImageError, open_rgb
    ramp = (np.arange(64 * 64, dtype=np.int64).reshape(64, 64) * 16).clip(0, 65535)
    path = tmp_path / "wide.png"
    Image.fromarray(ramp.astype(np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode in WIDE_MODES and np.asarray(Image.open(path).convert("RGB")).mean() > 250  # the bug
    got = np.asarray(open_rgb(str(path)))
    assert got.shape == (64, 64, 3) and got.dtype == np.uint8
    np.testing.assert_allclose(got[..., 0], ramp / 257.0, atol=0.51)
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "f.tiff")
    with pytest.raises(ImageError, match="floating-point"):
        open_rgb(str(tmp_path / "f.tiff"))


def test_a_decompression_bomb_is_named(tmp_path, monkeypatch):
    from PIL import Image

    import _image
    Image.new("RGB", (300, 200)).save(tmp_path / "big.png")
    monkeypatch.setattr(_image, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(_image.ImageError, match="300x200: more than"):
        _image.open_rgb(str(tmp_path / "big.png"))
