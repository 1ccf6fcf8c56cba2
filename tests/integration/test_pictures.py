"""Cluster maps from the backbone and the cluster-map renderer."""
import os.path as osp
import sys

import numpy as np
import torch
from PIL import Image

from coc_det.backbone import ContextCluster, position_channels, record_assignments
from original_coc import OriginalCluster

from conftest import ROOT  # noqa: E402
sys.path.insert(0, osp.join(ROOT, "tools"))
sys.path.insert(0, ROOT)
IMAGE = osp.join(ROOT, "tests", "data", "shapes.png")
DEMO = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")


def test_record_assignments_matches_the_mixer_input():
    model = ContextCluster("small", proposal=2).double().eval()  # float64: no near-tie can flip a pixel
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        with record_assignments(model, [(0, 1), (2, 0)]) as maps:
            hooked = model(x)
        # independent route to stage 1, block 1's mixer input
        h = model.network[0][0](model.patch_embed(torch.cat([x, position_channels(x)], 1)))
        blk = model.network[0][1]
        mixer = blk.token_mixer
        oracle = OriginalCluster(64, heads=4, head_dim=32, proposal=2, fold=8, denominator="similarity")
        oracle.double().load_state_dict(mixer.state_dict())  # the public code's mixer with this mixer's weights
        ref = oracle.assignment(blk.norm1(h))
    assert all(torch.equal(p, q) for p, q in zip(plain, hooked))  # the normal forward is untouched
    assert torch.equal(maps[(0, 1)], ref)
    assert maps[(2, 0)].shape == (1, 8, 4, 6)
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_record_assignments_on_a_compiled_backbone():
    """``compile=...``: a compiled graph calls no module hooks, so the maps were silently empty. Inside the block
    the backbone runs eagerly (same outputs, the same maps as an uncompiled twin); compiled again after it."""
    torch.manual_seed(0)
    arch = dict(layers=[1, 1], embed_dims=[8, 16], mlp_ratios=[2, 2], heads=[2, 2], head_dim=[4, 4], folds=[2, 1])
    eager = ContextCluster(arch, out_indices=(0, 1), mixer_impl="light").eval()
    compiled = ContextCluster(arch, out_indices=(0, 1), mixer_impl="light", compile=dict(backend="eager")).eval()
    compiled.load_state_dict(eager.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        compiled(x)  # compiled before the recording, as a trained model would be
        with record_assignments(eager, [(0, 0), (1, 0)]) as want:
            ref = eager(x)
        with record_assignments(compiled, [(0, 0), (1, 0)]) as got:
            out = compiled(x)
    assert compiled.compile_cfg["backend"] == "eager"  # the switch is back after the block
    assert sorted(got) == [(0, 0), (1, 0)] and all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


def test_render_colours_follow_assignment(tmp_path):
    import visualize_clusters as vc
    torch.manual_seed(0)  # the tool seeds its random initialisation with --seed (default 0) alike
    model = vc.build_backbone(DEMO, None)
    image = vc.load_image(IMAGE, 128, model.size_divisor)
    assert image.shape == (128, 128, 3)
    maps = vc.cluster_maps(model, image, stage=0, block=0).numpy()  # [heads, 32, 32]
    assert maps.shape == (2, 32, 32) and maps.max() < 4
    out = tmp_path / "clusters.png"
    vc.main([IMAGE, "--config", DEMO, "--stage", "0", "--block", "0", "--size", "128", "--out", str(out)])
    canvas = np.asarray(Image.open(out).convert("RGB"))
    assert canvas.shape == (128, 2 * 128 + vc.GAP, 3)
    pal = vc.palette(4)
    for head in range(2):
        panel = canvas[:, head * (128 + vc.GAP):head * (128 + vc.GAP) + 128].astype(float)
        # undo the blend: colour = (panel - (1-A)*image) / A, compare with the palette entry of the map
        colour = (panel - (1 - vc.ALPHA) * image) / vc.ALPHA
        expected = pal[np.repeat(np.repeat(maps[head], 4, 0), 4, 1)].astype(float)
        inside = np.ones((128, 128), bool)
        inside[::16, :] = inside[:, ::16] = False  # region borders (fold 8 -> every 16 px) are white
        assert np.abs(colour[inside] - expected[inside]).max() < 1.0 / vc.ALPHA + 1e-6
        assert (panel[16, :] == 255).all() and (panel[:, 48] == 255).all()


def test_render_uses_given_map_exactly():
    import visualize_clusters as vc
    img = np.zeros((8, 8, 3), np.uint8)
    assign = np.array([[0, 1], [2, 3]])
    out = vc.render(img, assign, 4, (1, 1))
    pal = vc.palette(4)
    for (i, j), m in np.ndenumerate(assign):
        block = out[i * 4:(i + 1) * 4, j * 4:(j + 1) * 4]
        assert (block == np.round(vc.ALPHA * pal[m].astype(float)).astype(np.uint8)).all()
