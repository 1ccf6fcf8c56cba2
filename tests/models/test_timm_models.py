"""timm's model contract for the ``coc_*`` models, checked the way timm's own ``tests/test_models.py`` checks
every model (forward, backward with every parameter reached, default cfg, classifier reset and removal,
``features_only`` with ``out_indices`` and ``feature_info``, ``forward_intermediates``, grad checkpointing),
with the feature maps compared against the public model (``tests/original_coc.py``) in float64.

CPU-sized: ``coc_tiny`` at 64 px (its size divisor is 32); the per-model cfg checks run on every arch
without a forward."""
import argparse

import pytest
import torch

from coc_det import ARCH_SETTINGS
from coc_det.backbone import size_divisor
from original_coc import random_public_model

timm = pytest.importorskip("timm")

NAMES = [f"coc_{arch}" for arch in ARCH_SETTINGS]
SIDE = 64  # coc_tiny's smallest multiple of 32 with regions of 2x2 in stage 0


def _x(batch=2, side=SIDE, dtype=torch.float32):
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(0)).to(dtype)


@pytest.fixture(scope="module")
def public_tiny(tmp_path_factory):
    """The public model (float64, random weights) and a timm-style checkpoint file of its weights."""
    oracle, state = random_public_model(ARCH_SETTINGS["tiny"])
    path = tmp_path_factory.mktemp("ckpt") / "coc_tiny.pth.tar"
    torch.save({"state_dict": state, "args": argparse.Namespace(model="coc_tiny")}, path)
    return oracle, str(path)


def _oracle_stages(oracle, x):
    """The public model's stage outputs (before any norm), taken with hooks on ``network[2i]``."""
    outs, hooks = {}, []
    for i in range(0, len(oracle.network), 2):
        hooks.append(oracle.network[i].register_forward_hook(lambda m, a, y, i=i: outs.__setitem__(i // 2, y)))
    with torch.no_grad():
        oracle(x)
    for h in hooks:
        h.remove()
    return [outs[i] for i in sorted(outs)]


@pytest.mark.parametrize("name", NAMES)
def test_default_cfg_names_real_weights_and_the_public_transform(name):
    """timm's test_model_default_cfgs without the forward: the cfg's classifier and first conv are weights
    of the model, the transform is the public code's (crop 0.9 for every model: its 'model_small' cfg,
    which the public code also gives coc_medium), and the smallest input is the arch's size divisor."""
    model = timm.create_model(name, pretrained=False)
    cfg, state = model.pretrained_cfg, model.state_dict()
    assert model.default_cfg is cfg or model.default_cfg == cfg
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    data = timm.data.resolve_data_config({}, model=model)
    assert (data["crop_pct"], data["interpolation"], data["input_size"]) == (0.9, "bicubic", (3, 224, 224))
    assert (data["mean"], data["std"]) == (timm.data.IMAGENET_DEFAULT_MEAN, timm.data.IMAGENET_DEFAULT_STD)
    side = size_divisor(ARCH_SETTINGS[name[4:]]["folds"])
    assert cfg["min_input_size"] == (3, side, side) and cfg["pool_size"] == (224 // 32,) * 2
    assert model.num_features == model.head_hidden_size == ARCH_SETTINGS[name[4:]]["embed_dims"][-1]
    info = model.feature_info
    assert [f["num_chs"] for f in info] == ARCH_SETTINGS[name[4:]]["embed_dims"]
    assert [f["reduction"] for f in info] == [4, 8, 16, 32]
    assert all(isinstance(model.get_submodule(f["module"]), torch.nn.Sequential) for f in info)


def test_forward_backward_reach_every_parameter():
    """timm's test_model_backward: num_classes=42, train mode, every parameter gets a gradient."""
    model = timm.create_model("coc_tiny", pretrained=False, num_classes=42).train()
    out = model(_x())
    assert out.shape == (2, 42) and not out.isnan().any()
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_forward_features_head_and_classifier_removal():
    """timm's test_model_default_cfgs forward part, at the model's 224 px: forward_features keeps the
    pool size, reset_classifier(0) gives [B, num_features], (0, '') the unpooled map; pre_logits is the
    pooled feature the head reads."""
    model = timm.create_model("coc_tiny", pretrained=False).eval()
    x = _x(1, 224)
    with torch.no_grad():
        feat = model.forward_features(x)
        assert feat.shape == (1, 320, 7, 7)
        pre = model.forward_head(feat, pre_logits=True)
        torch.testing.assert_close(pre, feat.mean((-2, -1)))
        torch.testing.assert_close(model.forward_head(feat), model.head(pre))
        model.reset_classifier(0)
        pooled = model(x)
        assert pooled.shape == (1, model.num_features)
        model.reset_classifier(0, "")
        torch.testing.assert_close(model(x), feat)
    unpooled = timm.create_model("coc_tiny", pretrained=False, num_classes=0, global_pool="")
    assert unpooled.global_pool == "" and isinstance(unpooled.get_classifier(), torch.nn.Identity)
    dense = timm.create_model("coc_tiny", pretrained=False, num_classes=5, global_pool="").eval()
    dense.load_state_dict(model.state_dict() | {"head.weight": torch.randn(5, 320), "head.bias": torch.randn(5)})
    with torch.no_grad():  # logits at every position: the head's Linear per pixel (an einsum, independently)
        want = torch.einsum("bchw,kc->bkhw", feat, dense.head.weight) + dense.head.bias[:, None, None]
        torch.testing.assert_close(dense(x), want)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(10, "max")


def test_out_indices_without_features_only_names_the_right_call():
    with pytest.raises(ValueError, match="features_only=True"):
        timm.create_model("coc_tiny", pretrained=False, out_indices=(1, 2))


def test_features_only_gives_the_public_models_stage_outputs(public_tiny):
    """timm's test_model_forward_features: feature_info channels/reduction, one map per level, and the maps
    are the public model's stage outputs (float64), for all levels and for chosen (also negative) indices,
    with the public weights loaded by timm's own pretrained path (a local file)."""
    oracle, path = public_tiny
    x = _x(1, dtype=torch.float64)
    ref = _oracle_stages(oracle, x)
    overlay = dict(file=path)
    model = timm.create_model("coc_tiny", features_only=True, pretrained=True,
                              pretrained_cfg_overlay=overlay).double().eval()
    assert model.feature_info.channels() == [32, 64, 196, 320]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        outs = model(x)
    assert len(outs) == 4
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)
    some = timm.create_model("coc_tiny", features_only=True, out_indices=(1, -2), pretrained=True,
                             pretrained_cfg_overlay=overlay).double().eval()
    assert some.feature_info.channels() == [64, 196] and some.feature_info.reduction() == [8, 16]
    assert len(some.model.network) == 5  # pruned after stage 2: stage 3 and its downsampling are gone
    with torch.no_grad():
        outs = some(x)
    for o, r in zip(outs, ref[1:3]):
        torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)


def test_forward_intermediates_match_the_public_stages_and_forward_features(public_tiny):
    oracle, path = public_tiny
    model = timm.create_model("coc_tiny", pretrained=False, checkpoint_path=path).double().eval()
    x = _x(1, dtype=torch.float64)
    ref = _oracle_stages(oracle, x)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x), rtol=0, atol=0)
        for o, r in zip(inter, ref):
            torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [196, 320]
        early = model.forward_intermediates(x, indices=[0, 1], stop_early=True, intermediates_only=True)
        for o, r in zip(early, ref[:2]):
            torch.testing.assert_close(o, r, rtol=1e-9, atol=1e-9)
        normed = model.forward_intermediates(x, indices=[-1], norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final, rtol=0, atol=0)
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, indices=[4])
    for bad in (2.0, True, "2", [1.0], [True]):  # once: 'float' object is not iterable, or True taken as 1
        with pytest.raises(TypeError, match="indices must be|stage indices must be ints"):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="NCHW"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_stop_early_runs_no_later_stage():
    model = timm.create_model("coc_tiny", pretrained=False).eval()
    ran = []
    model.network[4].register_forward_hook(lambda *a: ran.append(4))
    with torch.no_grad():
        model.forward_intermediates(_x(1), indices=[1], stop_early=True, intermediates_only=True)
    assert not ran


def test_grad_checkpointing_recomputes_blocks_with_the_same_gradients():
    """set_grad_checkpointing: each block runs again in backward (a forward pre-hook counts it) and the
    gradients equal those without checkpointing."""
    torch.manual_seed(0)
    model = timm.create_model("coc_tiny", pretrained=False, num_classes=10).train()
    x = _x()

    def grads():
        model.zero_grad()
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    model.network[0][0].register_forward_pre_hook(lambda *a: calls.append(1))  # (recomputation stops early)
    plain = grads()
    assert len(calls) == 1
    model.set_grad_checkpointing()
    checkpointed = grads()
    assert len(calls) == 3  # forward + recomputation in backward
    for n in plain:
        torch.testing.assert_close(checkpointed[n], plain[n], rtol=1e-5, atol=1e-7)
    model.set_grad_checkpointing(False)
    grads()
    assert len(calls) == 4
