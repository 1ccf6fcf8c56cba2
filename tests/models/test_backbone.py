"""ContextCluster backbone: shapes, checkpoint names, pretrained loading, mixer paths, input checks.
Needs only torch (mmdet-specific behaviour is in test_mmdet_integration.py)."""
import pytest
import torch

from coc_det.backbone import ARCH_SETTINGS, ContextCluster

VARIANTS = [(a, p) for a in ("small", "medium") for p in (2, 5, 7)]


@pytest.mark.parametrize("arch,proposal", VARIANTS, ids=[f"{a}-{p * p}" for a, p in VARIANTS])
def test_output_shapes_and_strides(arch, proposal):
    model = ContextCluster(arch, proposal=proposal).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(1, c, 64 // s, 96 // s)
                                              for c, s in zip([64, 128, 320, 512], [4, 8, 16, 32])]
    assert all(torch.isfinite(o).all() for o in outs)


def expected_keys(arch):
    """Checkpoint names of the public CoC code, written out from its structure."""
    s = ARCH_SETTINGS[arch]
    keys = {"patch_embed.proj.weight", "patch_embed.proj.bias"}
    for i, n in enumerate(s["layers"]):
        for b in range(n):
            p = f"network.{2 * i}.{b}."
            keys |= {p + "layer_scale_1", p + "layer_scale_2", p + "token_mixer.sim_alpha",
                     p + "token_mixer.sim_beta"}
            for m in ("norm1", "norm2", "token_mixer.f", "token_mixer.v", "token_mixer.proj", "mlp.fc1", "mlp.fc2"):
                keys |= {p + m + ".weight", p + m + ".bias"}
        if i < 3:
            keys |= {f"network.{2 * i + 1}.proj.weight", f"network.{2 * i + 1}.proj.bias"}
        keys |= {f"norm{2 * i}.weight", f"norm{2 * i}.bias"}
    return keys


@pytest.mark.parametrize("arch", ["small", "medium"])
def test_state_dict_names_and_shapes(arch):
    sd = ContextCluster(arch).state_dict()
    assert set(sd) == expected_keys(arch)
    heads = ARCH_SETTINGS[arch]["heads"]
    assert sd["patch_embed.proj.weight"].shape == (64, 5, 4, 4)  # RGB + 2 position channels
    assert sd["network.1.proj.weight"].shape == (128, 64, 3, 3)
    assert sd["network.4.0.token_mixer.f.weight"].shape == (heads[2] * 32, 320, 1, 1)
    assert sd["network.4.0.token_mixer.proj.weight"].shape == (320, heads[2] * 32, 1, 1)
    assert sd["network.6.0.mlp.fc1.weight"].shape == (512 * 4, 512)
    assert sd["network.0.0.mlp.fc1.weight"].shape == (64 * 8, 64)
    assert sd["network.0.0.token_mixer.sim_alpha"].shape == (1,)
    n_params = sum(v.numel() for v in sd.values())
    assert n_params == sum(p.numel() for p in ContextCluster(arch).parameters())


@pytest.mark.parametrize("wrap", ["model", "state_dict", None])
def test_pretrained_classification_checkpoint_loads(tmp_path, wrap, caplog):
    """An ImageNet-style checkpoint (no output norms, with the classifier) loads; the classifier is ignored."""
    src = ContextCluster("small")
    for p in src.parameters():
        torch.nn.init.normal_(p)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("norm")}
    state["norm.weight"], state["norm.bias"] = torch.ones(512), torch.zeros(512)
    state["head.weight"], state["head.bias"] = torch.randn(1000, 512), torch.zeros(1000)
    path = tmp_path / "coc_small.pth.tar"
    torch.save({wrap: state, "epoch": 300} if wrap else state, path)

    model = ContextCluster("small", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    missing, unexpected = model.load_pretrained(str(path))
    got = model.state_dict()
    for k, v in state.items():
        if not k.startswith(("norm.", "head.")):
            assert torch.equal(got[k], v), k
    assert sorted(missing) == sorted(f"norm{i}.{w}" for i in (0, 2, 4, 6) for w in ("weight", "bias"))
    assert unexpected == []
    assert torch.equal(got["norm0.weight"], before["norm0.weight"])
    model2 = ContextCluster("small", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    model2.init_weights()  # the init_cfg route that mmengine's runner takes
    key = "network.2.1.token_mixer.f.weight"
    assert torch.equal(model2.state_dict()[key], state[key])


def test_detector_checkpoint_gives_its_backbone(tmp_path):
    src = ContextCluster("small")
    for p in src.parameters():
        torch.nn.init.normal_(p)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.randn(256, 64, 1, 1)
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "maskrcnn.pth")
    model = ContextCluster("small")
    missing, unexpected = model.load_pretrained(str(tmp_path / "maskrcnn.pth"))
    assert missing == [] and unexpected == []
    assert all(torch.equal(v, src.state_dict()[k]) for k, v in model.state_dict().items())


def test_size_divisor_covers_both_fold_factors():
    model = ContextCluster(dict(layers=[1], embed_dims=[16], mlp_ratios=[2], heads=[1], head_dim=[16]),
                           fold=[(2, 3)], out_indices=(0,))
    assert model.size_divisor == 24  # stride 4 x lcm(2, 3)


def test_mixer_paths_agree_inside_backbone():
    """Triton (interpreter) and memory-light mixers give the dense path's outputs and gradients."""
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], mlp_ratios=[2, 2, 2, 2],
                heads=[1, 2, 1, 1], head_dim=[16, 16, 16, 16])
    model = ContextCluster(arch, proposal=[2, 2, 3, 2], fold=[2, 2, 1, 1], mixer_impl="dense")
    for p in model.parameters():  # layer scales at 1e-5 would hide the mixers' contribution
        if p.dim() == 1 and p.numel() > 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(1, 3, 64, 64)
    results = {}
    for impl in ("dense", "light", "triton"):
        for m in model.modules():
            if hasattr(m, "sim_alpha"):
                m.impl = impl
        model.zero_grad()
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs).backward()
        results[impl] = ([o.detach() for o in outs], {n: p.grad.clone() for n, p in model.named_parameters()})
    for impl in ("light", "triton"):
        for o, r in zip(results[impl][0], results["dense"][0]):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
        for n, g in results[impl][1].items():
            torch.testing.assert_close(g, results["dense"][1][n], rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
        assert results[impl][1]["network.0.0.token_mixer.sim_alpha"].abs().item() > 0


def test_input_not_divisible_raises():
    model = ContextCluster("small")
    assert model.size_divisor == 32
    with pytest.raises(ValueError, match="not divisible by 32"):
        model(torch.randn(1, 3, 100, 128))
    with pytest.raises(ValueError, match=r"images \[B, 3, H, W\]"):
        model(torch.randn(1, 4, 64, 64))


def test_position_channels_match_original():
    from coc_det.backbone import position_channels
    pos = position_channels(torch.zeros(2, 3, 5, 7))
    assert pos.shape == (2, 2, 5, 7)
    torch.testing.assert_close(pos[0, 0, :, 3], torch.arange(5) / 4.0 - 0.5)
    torch.testing.assert_close(pos[1, 1, 2, :], torch.arange(7) / 6.0 - 0.5)


def test_frozen_stages_and_drop_path():
    model = ContextCluster("small", frozen_stages=1, drop_path_rate=0.1)
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for p in model.network[0].parameters())
    assert all(p.requires_grad for p in model.network[1].parameters())  # stage 2's downsampling conv
    dprs = [b.drop_path.p for st in model.network[::2] for b in st if hasattr(b.drop_path, "p")]
    assert len(dprs) == 11 and dprs[-1] == pytest.approx(0.1) and dprs == sorted(dprs)  # first block: 0
    model2 = ContextCluster("small", frozen_stages=2)
    assert not any(p.requires_grad for p in model2.network[2].parameters())
    assert all(p.requires_grad for p in model2.network[3].parameters())


def test_mixer_implementation_logged_once_and_unrunnable_impl_fails_clearly(monkeypatch):
    import coc_det.backbone as bb
    msgs = []
    monkeypatch.setattr(bb, "_log", msgs.append)
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], mlp_ratios=[1, 1, 1, 1], heads=[1] * 4,
                head_dim=[8] * 4)
    model = ContextCluster(arch, mixer_impl="auto")
    x = torch.randn(1, 3, 64, 64)
    model(x)
    model(x)
    assert msgs == ["ContextCluster: mixer implementation 'auto' -> 'light' on cpu"]
    fused = ContextCluster(arch, mixer_impl="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU machine without the interpreter: no silent fallback
    with pytest.raises(RuntimeError, match="Triton kernels run on CUDA"):
        fused(x)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_torch_compile_of_the_backbone_with_fused_mixers(layout):
    """torch.compile (fullgraph: the fused op must not break the graph) of a backbone whose mixers run the
    Triton kernels, on contiguous and channels_last inputs: same outputs and gradients as eager."""
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], mlp_ratios=[1, 1, 1, 1], heads=[2, 1, 1, 1],
                head_dim=[8] * 4)
    model = ContextCluster(arch, proposal=[2, 2, 1, 1], fold=[2, 1, 1, 1], mixer_impl="triton")
    for p in model.parameters():  # layer scales at 1e-5 would hide the mixers
        if p.dim() == 1 and p.numel() > 1:
            torch.nn.init.uniform_(p, 0.5, 1.5)
    x = torch.randn(1, 3, 32, 64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)

    def run(fn):
        model.zero_grad()
        outs = fn(x)
        sum((o * torch.linspace(-1, 1, o.numel()).reshape(o.shape)).sum() for o in outs).backward()
        return [o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]

    eager = run(model)
    compiled = run(torch.compile(model, backend="aot_eager", fullgraph=True))
    for got, ref in zip(compiled[0] + compiled[1], eager[0] + eager[1]):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
