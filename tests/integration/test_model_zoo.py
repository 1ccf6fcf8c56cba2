"""The public model zoo: every arch's parameter count from its definition, the denominator default, timm
classifiers loading public-layout checkpoints, the classify / validate / publish tools, and the mmdet
backbone conventions (with_cp, frozen_stages with output norms)."""
import argparse
import os
import re
import os.path as osp
import subprocess
import sys

import pytest
import torch

from coc_det import ARCH_SETTINGS, ContextCluster, ContextClusterClassifier
from coc_kernels import DEFAULT_DENOMINATOR, context_cluster
from coc_det.checkpoint import read_checkpoint
from coc_det.classifier import create_classifier
from original_coc import random_public_model

from conftest import ROOT  # noqa: E402
IMAGE = osp.join(ROOT, "tests", "data", "shapes.png")
sys.path.insert(0, osp.join(ROOT, "tools"))

#: the public ImageNet models' published sizes (the public README, "M" = 2**20 parameters there)
PUBLISHED_MPARAMS = {"tiny": 5.3, "tiny_plain": 5.3, "small": 14.0, "medium": 27.9}


def count_from_definition(s: dict, classifier: bool) -> int:
    """Parameters of a CoC model written out from the architecture's definition: stem conv (5 input
    channels: RGB + 2 position channels, 4x4 stride 4), per block GroupNorm x2, f / v / proj 1x1 convs,
    alpha + beta, MLP (ratio r), two layer scales; 3x3 stride-2 convs between stages; then either the
    four output norms (backbone) or norm + 1000-way head (classifier)."""
    dims, n = s["embed_dims"], 0
    n += 5 * dims[0] * 16 + dims[0]
    for i, (L, C, r, h, d) in enumerate(zip(s["layers"], dims, s["mlp_ratios"], s["heads"], s["head_dim"])):
        hd, hidden = h * d, int(C * r)
        block = 2 * C + 2 * (C * hd + hd) + (hd * C + C) + 2 + 2 * C + (C * hidden + hidden) + (hidden * C + C) + 2 * C
        n += L * block
        if i < len(dims) - 1:
            n += C * dims[i + 1] * 9 + dims[i + 1]
    return n + (2 * dims[-1] + dims[-1] * 1000 + 1000 if classifier else sum(2 * C for C in dims))


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_parameter_counts_follow_the_definition(arch):
    s = ARCH_SETTINGS[arch]
    backbone = sum(p.numel() for p in ContextCluster(arch).parameters())
    classifier = sum(p.numel() for p in ContextClusterClassifier(arch).parameters())
    assert backbone == count_from_definition(s, classifier=False)
    assert classifier == count_from_definition(s, classifier=True)
    if arch in PUBLISHED_MPARAMS:
        assert round(classifier / 2 ** 20, 1) == PUBLISHED_MPARAMS[arch]


def test_public_settings_per_stage():
    """Per-stage proposals and folds as the public models define them (also read by benchmarks and the gate)."""
    assert ARCH_SETTINGS["tiny_plain"]["folds"] == (1, 1, 1, 1)
    assert ARCH_SETTINGS["tiny_plain"]["proposals"] == (4, 4, 2, 2)
    model = ContextCluster("tiny_plain")
    mixers = [b.token_mixer for st in model.network[::2] for b in st]
    assert [(m.proposal, m.fold) for m in mixers[:1] + mixers[-1:]] == [(4, 1), (2, 1)]
    assert ContextCluster("base_dim96").embed_dims == [96, 192, 384, 768]
    assert [b.token_mixer.proposal for b in ContextCluster("small", proposal=7).network[4]] == [7] * 6


def test_denominator_defaults_to_the_papers_similarity():
    assert DEFAULT_DENOMINATOR == "similarity"
    x, v = torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 8)
    a, b = torch.ones(1), torch.zeros(1)
    kw = dict(heads=2, proposal=2, fold=2)
    y = context_cluster(x, v, a, b, **kw)
    assert torch.equal(y, context_cluster(x, v, a, b, denominator="similarity", **kw))
    assert not torch.allclose(y, context_cluster(x, v, a, b, denominator="count", **kw))
    assert {m.denominator for m in ContextCluster("tiny").modules() if hasattr(m, "denominator")} == {"similarity"}
    from mmdet.registry import MODELS
    import coc_det  # noqa: F401
    legacy = MODELS.build(dict(type="context_cluster_small_feat5"))
    assert {m.denominator for m in legacy.modules() if hasattr(m, "denominator")} == {"similarity"}


# ------------------------------------------------------------------------------------ timm
def _public_checkpoint(tmp_path, name="coc_tiny"):
    """A checkpoint as timm's training script writes them (the public ones): weights under state_dict, the
    training args as an argparse.Namespace, optimizer state, epoch. The weights are those of the public model
    (``tests/original_coc.py``, random values, its key layout), which is returned with them (float64, eval)."""
    oracle, state = random_public_model(ARCH_SETTINGS[name[4:]])
    path = tmp_path / f"{name}.pth.tar"
    torch.save({"epoch": 299, "arch": name, "state_dict": state, "version": 2,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
                "args": argparse.Namespace(model=name, lr=1e-3, drop_path=0.1, mean=None)}, path)
    return oracle, path


def test_timm_create_model_loads_a_public_checkpoint_with_its_head(tmp_path):
    import timm
    src, path = _public_checkpoint(tmp_path)
    assert {f"coc_{a}" for a in ARCH_SETTINGS} <= set(timm.list_models("coc_*"))
    model = timm.create_model("coc_tiny", pretrained=False, checkpoint_path=str(path)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # float64: see test_original_model.py
        torch.testing.assert_close(model.double()(x.double()), src(x.double()), rtol=1e-9, atol=1e-9)
    model.float()
    assert model.get_classifier() is model.head
    assert model.forward_head(model.forward_features(x), True).shape == (2, 320)
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["crop_pct"] == 0.9 and cfg["interpolation"] == "bicubic" and cfg["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="checkpoint_path"):
        timm.create_model("coc_tiny", pretrained=True)
    model.reset_classifier(10)
    assert model(x).shape == (2, 10)


def test_backbone_from_a_public_classifier_checkpoint_gives_the_public_features(tmp_path):
    """The backbone's Pretrained init takes every block weight of a public ImageNet checkpoint: its last
    stage, through the checkpoint's own norm and head, gives the public model's logits (float64)."""
    src, path = _public_checkpoint(tmp_path)
    backbone = ContextCluster("tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    backbone.init_weights()
    backbone.double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        feat = torch.nn.functional.group_norm(backbone.forward_stages(x)[-1], 1, src.norm.weight, src.norm.bias)
        torch.testing.assert_close(src.head(feat.mean((-2, -1))), src(x), rtol=1e-9, atol=1e-9)


def test_classify_tool_prints_top5(tmp_path, capsys):
    import classify
    from PIL import Image
    from timm.data import ImageNetInfo
    src, path = _public_checkpoint(tmp_path)
    rows = classify.main([IMAGE, "--model", "coc_tiny", "--checkpoint", str(path), "--device", "cpu"])
    out = [ln for ln in capsys.readouterr().out.splitlines() if re.match(r"\d+\. ", ln)]  # (log lines may precede)
    # independently: the same preprocessing by hand (resize shorter side to 224/0.9, centre crop 224, bicubic)
    import torchvision.transforms.functional as TF
    img = Image.open(IMAGE).convert("RGB")
    img = TF.center_crop(TF.resize(img, int(224 / 0.9), interpolation=TF.InterpolationMode.BICUBIC), 224)
    t = TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with torch.no_grad():  # the tool's fp32 model (equality with the public model: test_original_model.py)
        prob = create_classifier("coc_tiny", str(path)).eval()(t[None]).softmax(-1)[0]
    want = prob.topk(5).indices.tolist()
    assert [r[0] for r in rows] == want and len(out) == 5
    assert out[0].startswith(f"1. {ImageNetInfo().index_to_description(want[0])}")


def test_validate_imagenet_on_a_small_image_folder(tmp_path):
    """Four images in two WordNet-id folders; the head is set so that every image is called class 0 (the
    first folder) and class 1 is second: top-1 is then 50 %, top-5 100 %."""
    import validate_imagenet
    from PIL import Image
    _, path = _public_checkpoint(tmp_path)
    sd = {k: v.float() for k, v in read_checkpoint(str(path))["state_dict"].items()}
    sd["head.weight"].zero_()
    sd["head.bias"].copy_(torch.linspace(0, -10, 1000))
    torch.save({"state_dict": sd}, path)
    root = tmp_path / "val"
    for wnid in ("n01440764", "n01443537"):
        (root / wnid).mkdir(parents=True)
        for k in range(2):
            Image.fromarray((torch.rand(64, 80, 3) * 255).byte().numpy()).save(root / wnid / f"{k}.JPEG")
    res = validate_imagenet.main([str(root), "--model", "coc_tiny", "--checkpoint", str(path), "--batch-size", "2",
                                  "--workers", "0", "--device", "cpu"])
    assert res["images"] == 4 and res["top1"] == 50.0 and res["top5"] == 100.0
    assert res["img_per_s"] and res["img_per_s"] > 0


# ------------------------------------------------------------------------------------ mmdet conventions
def test_with_cp_gives_the_same_outputs_and_gradients():
    arch = dict(layers=[2, 1, 1, 1], embed_dims=[16, 16, 32, 32], mlp_ratios=[2] * 4, heads=[2] * 4, head_dim=[8] * 4)
    torch.manual_seed(0)
    ref = ContextCluster(arch, fold=[2, 1, 1, 1], drop_path_rate=0.0)
    cp = ContextCluster(arch, fold=[2, 1, 1, 1], with_cp=True)
    cp.load_state_dict(ref.state_dict())
    for p in list(ref.parameters()) + list(cp.parameters()):  # visible layer scales
        if p.dim() == 1 and p.numel() > 2:
            torch.nn.init.constant_(p, 0.7)
    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (ref, cp):
        model.train()
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters()}))
    for a, b in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(a, b)
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, msg=n)


def test_frozen_stages_freeze_their_output_norms():
    model = ContextCluster("tiny", frozen_stages=2)
    model.train()
    for i in (0, 1):
        norm = getattr(model, f"norm{2 * i}")
        assert not norm.training and not any(p.requires_grad for p in norm.parameters())
    assert all(p.requires_grad for p in model.norm4.parameters()) and model.norm4.training


def test_publish_model_keeps_meta_and_weights_and_names_the_hash(tmp_path):
    import hashlib
    import publish_model
    src = tmp_path / "epoch_1.pth"
    sd = ContextCluster("tiny").state_dict()
    torch.save({"meta": {"epoch": 1, "mmengine_version": "0.10.7"}, "state_dict": sd,
                "optimizer": {"state": {}}, "message_hub": {}, "param_schedulers": []}, src)
    final = publish_model.main([str(src), str(tmp_path / "coc_tiny_det.pth")])
    sha = hashlib.sha256(open(final, "rb").read()).hexdigest()
    assert final == str(tmp_path / f"coc_tiny_det-{sha[:8]}.pth")
    ck = torch.load(final)
    assert set(ck) == {"meta", "state_dict"} and ck["meta"]["epoch"] == 1
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in sd.items())
    assert sorted(os.listdir(tmp_path)) == sorted(["epoch_1.pth", osp.basename(final)])  # no temporary file left
    proc = subprocess.run([sys.executable, osp.join(ROOT, "tools", "publish_model.py"), str(tmp_path / "nope.pth"),
                           str(tmp_path / "x.pth")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "does not exist" in proc.stderr
