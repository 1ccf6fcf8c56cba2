"""Our models against the public model (``tests/original_coc.py``) with the same public-layout weights, in
float64 (an fp32 near-tie flips one point's hard assignment and moves a whole cluster; docs/testing.md, "Fidelity"):
every arch as backbone and as classifier, the six detection backbones under their original type names,
both denominators, and the mixer implementations."""
import pytest
import torch

from coc_det import ARCH_SETTINGS, ContextCluster, ContextClusterClassifier
from coc_det.backbone import PROPOSAL_OF_CENTRES, size_divisor
from original_coc import random_public_model

TOL = dict(rtol=1e-9, atol=1e-9)  # float64 throughout: what is left is summation order


def _up(n, arch):
    """n rounded up to the arch's padding multiple (32; 224 for tiny2's folds of 7)."""
    d = size_divisor(ARCH_SETTINGS[arch]["folds"])
    return -(-n // d) * d


def _size(arch, h, w):
    """(h, w) rounded up to the arch's padding multiple, kept non-square."""
    h, w = _up(h, arch), _up(w, arch)
    return (h, w + _up(1, arch)) if h == w else (h, w)


def _pair(arch, fork_feat, seed=0, proposals=None, denominator="similarity"):
    return random_public_model(ARCH_SETTINGS[arch], seed, proposals=proposals, fork_feat=fork_feat,
                               denominator=denominator)


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_backbone_equals_the_public_model(arch):
    oracle, state = _pair(arch, fork_feat=True)
    ours = ContextCluster(arch).double().eval()
    ours.load_state_dict(state, strict=True)  # the public key names, every one
    x = torch.randn(1, 3, *_size(arch, 128, 160), dtype=torch.float64)  # not square: rows/columns not swappable
    with torch.no_grad():
        want, got = oracle(x), ours(x)
    assert len(got) == 4
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, **TOL, msg=lambda m: f"stage {i}: {m}")


@pytest.mark.parametrize("arch", list(ARCH_SETTINGS))
def test_classifier_equals_the_public_model(arch):
    oracle, state = _pair(arch, fork_feat=False, seed=1)
    ours = ContextClusterClassifier(arch).double().eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, _up(160, arch), _up(160, arch), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), oracle(x), **TOL)


@pytest.mark.parametrize("arch", ["small", "medium"])
@pytest.mark.parametrize("centres", sorted(PROPOSAL_OF_CENTRES))
def test_detection_backbones_under_their_original_names_equal_the_public_model(arch, centres):
    """``context_cluster_{arch}_feat{p}`` (the type names of the public detection/segmentation configs),
    built through mmdet's registry, at a padded detection-like size."""
    MODELS = pytest.importorskip("mmdet.registry").MODELS  # (torch-only machines: gpu_check.sh)
    import coc_det  # noqa: F401
    p = PROPOSAL_OF_CENTRES[centres]
    oracle, state = _pair(arch, fork_feat=True, seed=centres, proposals=[p] * 4)
    ours = MODELS.build(dict(type=f"context_cluster_{arch}_feat{p}", style="pytorch")).double().eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 128, 192, dtype=torch.float64)
    with torch.no_grad():
        for i, (g, w) in enumerate(zip(ours(x), oracle(x))):
            torch.testing.assert_close(g, w, **TOL, msg=lambda m: f"stage {i}: {m}")


@pytest.mark.parametrize("impl", ["dense", "light"])
@pytest.mark.parametrize("denominator", ["count", "similarity"])
def test_denominators_and_torch_paths_equal_the_public_model(impl, denominator):
    oracle, state = _pair("tiny", fork_feat=True, seed=2, denominator=denominator)
    ours = ContextCluster("tiny", mixer_impl=impl, denominator=denominator).double().eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 128, 96, dtype=torch.float64)
    with torch.no_grad():
        for g, w in zip(ours(x), oracle(x)):
            torch.testing.assert_close(g, w, **TOL)


def test_fused_path_equals_the_public_model():
    """The Triton kernels (interpreter on the CPU, float64) inside a small two-stage model."""
    arch = dict(layers=[1, 1], embed_dims=[16, 32], mlp_ratios=[2, 2], heads=[2, 2], head_dim=[8, 8],
                proposals=(2, 3), folds=(2, 1))
    oracle, state = random_public_model(arch, seed=3, fork_feat=True)
    ours = ContextCluster(arch, out_indices=(0, 1), mixer_impl="triton").double().eval()
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        for g, w in zip(ours(x), oracle(x)):
            torch.testing.assert_close(g, w, **TOL)
