"""The mixer's FLOPs in mmengine's complexity analysis (``coc_det.flops``), against a count by hand."""
import torch
from mmengine.analysis import FlopAnalyzer, get_model_complexity_info

import coc_det  # noqa: F401  (registers the handle)
from coc_det.backbone import Cluster, ContextCluster


def test_one_mixer_counted_by_hand():
    """One stage-1 mixer of ``small`` at 56x56 (dim 64, 4 heads x 32, 2x3 centres per region, 8x8 regions)."""
    dim, heads, head_dim, (ph, pw), H, W = 64, 4, 32, (2, 3), 56, 56
    mixer = Cluster(dim, heads, head_dim, (ph, pw), 8).eval()
    analysis = FlopAnalyzer(mixer, (torch.randn(1, dim, H, W),))
    pixels, inner = H * W, heads * head_dim
    convs = pixels * dim * inner * 2 + pixels * inner * dim  # f and v: dim -> inner; proj: inner -> dim
    # per pixel: pool the x and value channels into the centres (inner + inner), similarity to the region's
    # ph*pw centres over the x channels, add its value into its centre, read its centre back
    op = pixels * (inner + inner) + pixels * inner * ph * pw + pixels * inner + pixels * inner
    assert analysis.by_operator()["conv"] == convs
    assert analysis.by_operator()["context_cluster"] == op
    assert analysis.total() == convs + op
    assert "coc_kernels::context_cluster" not in analysis.unsupported_ops()


def test_backbone_analysis_counts_every_mixer_and_skips_none():
    backbone = ContextCluster(dict(layers=[1, 2, 1, 1], embed_dims=[16, 24, 32, 40], mlp_ratios=[2] * 4,
                                   heads=[2] * 4, head_dim=[8] * 4)).eval()
    info = get_model_complexity_info(backbone, inputs=(torch.randn(1, 3, 64, 64),), show_table=False,
                                     show_arch=False)
    analysis = FlopAnalyzer(backbone, (torch.randn(1, 3, 64, 64),))
    # 2x2 centres everywhere; stage i: (16 >> i)^2 pixels, 16 channels of x and of values
    want = sum(n * (64 >> (i + 2)) ** 2 * (16 * 4 + 16 + 3 * 16) for i, n in enumerate([1, 2, 1, 1]))
    assert analysis.by_operator()["context_cluster"] == want
    assert info["flops"] == analysis.total()
    assert not [k for k in analysis.unsupported_ops() if "coc" in k or "Cluster" in k]
