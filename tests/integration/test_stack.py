"""The detection stack is the real one: mmcv's compiled CPU ops agree with torchvision, and mmdet's own
stock Mask R-CNN config builds and trains one step on the CPU."""
import math

import mmcv.ops as mmcv_ops  # installed with its compiled ops by tools/setup_env.sh
import pytest
import torch
import torchvision


def test_mmcv_is_compiled_build():
    import mmcv
    from mmcv.utils import ext_loader
    assert mmcv.__version__ == "2.1.0"
    ext = ext_loader.load_ext("_ext", ["nms", "roi_align_forward"])  # the C++ extension, not a stub
    assert hasattr(ext, "nms")


def test_nms_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 200
    wh = torch.rand(300, 2, generator=g) * 60 + 2
    boxes = torch.cat([xy, xy + wh], 1)
    scores = torch.rand(300, generator=g)
    for thr in (0.3, 0.5, 0.7):
        dets, keep = mmcv_ops.nms(boxes, scores, thr)
        ref = torchvision.ops.nms(boxes, scores, thr)
        assert torch.equal(keep, ref)
        torch.testing.assert_close(dets[:, 4], scores[ref])


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_matches_torchvision(aligned):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 32, 40, generator=g, requires_grad=True)
    xy = torch.rand(20, 2, generator=g) * 100
    rois = torch.cat([torch.randint(0, 2, (20, 1), generator=g).float(), xy,
                      xy + torch.rand(20, 2, generator=g) * 60 + 4], 1)
    out = mmcv_ops.RoIAlign((7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)(feats, rois)
    ref = torchvision.ops.roi_align(feats, rois, (7, 7), spatial_scale=0.25, sampling_ratio=2, aligned=aligned)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    gout = torch.randn_like(out)
    g1, = torch.autograd.grad(out, feats, gout)
    g2, = torch.autograd.grad(ref, feats, gout)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


def test_stock_mask_rcnn_trains_one_step(tmp_path):
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules

    register_all_modules()
    cfg_file = tmp_path / "stock.py"
    cfg_file.write_text("_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'\n"
                        "model = dict(backbone=dict(init_cfg=None))\n")  # no pretrained download
    cfg = Config.fromfile(str(cfg_file))
    assert cfg.model.type == "MaskRCNN" and cfg.model.backbone.type == "ResNet"
    model = MODELS.build(cfg.model)
    model.train()
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [[3, 128, 160], [3, 96, 128]], num_items=[3, 2], num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode="loss")
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(losses)
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert math.isfinite(total.item())
    total.backward()
    assert model.backbone.conv1.weight.grad is None  # the stock config freezes the stem (frozen_stages=1)
    assert model.backbone.layer4[0].conv1.weight.grad.abs().sum() > 0
