"""The fused Triton op (interpreter) and the memory-light torch path against the dense restatement of the
original code: forward, gradients of all four inputs, the saved state, dtypes, bad inputs. (Launch
configuration: test_launch_config.py; the split dots: test_dots.py.)"""
import pytest
import torch
import torch.nn.functional as F

from coc_kernels import cluster_assignment, context_cluster
from coc_kernels.reference import context_cluster_dense, to_groups
from coc_kernels.ops import context_cluster as ops
from conftest import DEVICE, only_compiled_can_fail
from op_helpers import assert_matches_dense, fwd_bwd, make


# (B, heads, d, dv, H, W, proposal, fold, alpha, beta)
CASES = {
    "regions_5x7_centres_3x3": (2, 2, 32, 16, 10, 14, (3, 3), (2, 2), 1.0, 0.0),
    "more_centres_than_points": (1, 2, 16, 16, 4, 4, (3, 3), (2, 2), 1.0, 0.0),  # 2x2 regions, M=9 > N=4
    "negative_alpha": (1, 2, 16, 16, 6, 8, (2, 2), (1, 2), -2.0, 0.3),
    "fold_1_rect_proposal": (2, 1, 16, 24, 7, 9, (2, 3), (1, 1), 1.3, -0.4),
    "batch_1_many_points": (1, 1, 32, 32, 24, 12, (5, 5), (1, 1), 1.0, 0.0),  # N=288 > BLOCK_N
    "dv_larger_than_d": (1, 2, 16, 40, 8, 8, (2, 2), (2, 2), 0.7, 0.1),
}
# the shapes that matter (docs/design.md: ImageNet stage-1 regions of 7x7 with 49 centres; head dim 24 of the tiny
# models, a 32-wide tile with 8 masked channels; the detection models' folds 4 and 8), one denominator each
# (the interpreter takes ~40 ms a program: a square fold 8 would be 64 groups even for one image and head)
SHAPE_CASES = {
    "centres_49_head_dim_24": (1, 2, 24, 24, 14, 14, (7, 7), (2, 2), 1.1, 0.0, "similarity"),
    "fold_4": (1, 2, 16, 16, 16, 12, (2, 2), (4, 4), 0.9, 0.1, "count"),
    "fold_8x4": (1, 1, 16, 24, 24, 16, (2, 2), (8, 4), 1.2, -0.1, "similarity"),
    # tiny2's stage 1 at 224 px: folds of 7 give regions of 8x8 with 16 centres, head dim 24
    "tiny2_regions_8x8_centres_16": (1, 1, 24, 24, 8, 56, (4, 4), (1, 7), 1.0, 0.1, "count"),
    # 49 centres on regions 30 wide: tiles of one 16-column row, two per row (the second half masked), the pool
    # kernel's window table read with the membership on the left (the detection models' 49-centre path)
    "centres_49_one_row_tiles": (1, 1, 16, 16, 7, 30, (7, 7), (1, 1), 0.8, 0.2, "similarity"),
}
CASES.update({k: v[:-1] for k, v in SHAPE_CASES.items()})


@pytest.mark.parametrize("case,denominator", [(c, d) for c in CASES if c not in SHAPE_CASES
                                              for d in ("count", "similarity")] +
                         [(c, v[-1]) for c, v in SHAPE_CASES.items()])
@pytest.mark.parametrize("impl", ["triton", "light"])
def test_matches_dense(impl, case, denominator):
    B, h, d, dv, H, W, prop, fold, alpha, beta = CASES[case]
    x, v, a, b = make(B, h, d, dv, H, W, alpha, beta)
    assert_matches_dense(impl, x, v, a, b, heads=h, proposal=prop, fold=fold, denominator=denominator)


@pytest.mark.parametrize("denominator", ["similarity", "count"])
def test_dense_is_the_original_formulation(denominator):
    """The oracle itself: same numbers as a literal transcription of the original Cluster.forward body (its
    current form divides by sim.sum + 1, the form before 2023-05-31 by mask.sum + 1)."""
    x, v, a, b = make(2, 2, 8, 8, 8, 8)
    heads, prop = 2, 2  # fold 2: the 8x8 map as 2x2 regions of 4x4
    # original: rearrange 'b (e c) w h -> (b e) c w h', then '(f1 w) (f2 h) -> (b f1 f2)'
    xe = x.reshape(2 * heads, 8, 8, 8)
    ve = v.reshape(2 * heads, 8, 8, 8)
    xr = xe.reshape(4, 8, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(16, 8, 4, 4)
    vr = ve.reshape(4, 8, 2, 4, 2, 4).permute(0, 2, 4, 1, 3, 5).reshape(16, 8, 4, 4)
    centres = F.adaptive_avg_pool2d(xr, (prop, prop))
    vcent = F.adaptive_avg_pool2d(vr, (prop, prop)).reshape(16, 8, -1).permute(0, 2, 1)
    sim = torch.sigmoid(b + a * (F.normalize(centres.reshape(16, 8, -1).permute(0, 2, 1), dim=-1)
                                 @ F.normalize(xr.reshape(16, 8, -1).permute(0, 2, 1), dim=-1).transpose(1, 2)))
    _, idx = sim.max(dim=1, keepdim=True)
    mask = torch.zeros_like(sim).scatter_(1, idx, 1.0)
    sim = sim * mask
    v2 = vr.reshape(16, 8, -1).permute(0, 2, 1)
    den = (sim if denominator == "similarity" else mask).sum(-1, keepdim=True)
    out = ((v2.unsqueeze(1) * sim.unsqueeze(-1)).sum(2) + vcent) / (den + 1.0)
    out = (out.unsqueeze(2) * sim.unsqueeze(-1)).sum(1).permute(0, 2, 1).reshape(16, 8, 4, 4)
    out = out.reshape(4, 2, 2, 8, 4, 4).permute(0, 3, 1, 4, 2, 5).reshape(4, 8, 8, 8).reshape(2, 16, 8, 8)
    got = context_cluster_dense(x, v, a, b, heads=2, proposal=(2, 2), fold=(2, 2), denominator=denominator)
    torch.testing.assert_close(got, out, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "light"])
def test_zero_norm_points_and_group(impl):
    """Zero feature vectors (F.normalize's clamped branch) inside a group and a whole all-zero group."""
    x, v, a, b = make(1, 2, 16, 16, 8, 8)
    x[:, :, 1, 2] = 0
    x[:, :, 5, 7] = 0
    x[:, 16:, :4, :4] = 0  # head 1, region (0, 0): every point and centre is zero
    assert_matches_dense(impl, x, v, a, b, heads=2, proposal=2, fold=2)


@only_compiled_can_fail
@pytest.mark.parametrize("impl", ["triton", "light", "dense"])
def test_ties_first_index_after_sigmoid(impl):
    """Large alpha saturates the sigmoid: distinct cosines give s == 1.0 and the first centre wins.

    An argmax over alpha*cos would pick a different centre; the original's argmax is over s.
    """
    x, v, a, b = make(1, 2, 16, 16, 8, 8, alpha=80.0)
    xg = to_groups(x, 2, (1, 1))  # [2, 16, 8, 8]
    c_hat = F.normalize(F.adaptive_avg_pool2d(xg, 2).flatten(2).transpose(1, 2), dim=-1)
    cos = torch.bmm(c_hat, F.normalize(xg.flatten(2), dim=1))  # [G, M, N]
    a_ref = torch.sigmoid(b + a * cos).max(dim=1).indices
    assert (a_ref != cos.argmax(1)).any(), "case does not exercise saturation ties"
    if impl != "dense":
        assert_matches_dense(impl, x, v, a, b, heads=2, proposal=2, fold=1)
    got = cluster_assignment(x, a, b, heads=2, proposal=2, fold=1, impl=impl)
    assert torch.equal(got.reshape(2, -1), a_ref)


@only_compiled_can_fail
@pytest.mark.parametrize("impl", ["triton", "light"])
def test_more_centres_than_points_take_the_first_of_identical_windows(impl):
    """Hostile sweep 3: 25 centres on 2x2 regions (heads 2, proposal 5, fold 4, 8x8 maps). Adaptive pooling of
    2 rows into 5 windows repeats windows 0/1 and 3/4 of each axis exactly, so most points tie exactly between
    identical centres; torch's max takes the first, and so must every path. (The reported disagreement of the
    maps did not reproduce on 400 seeds, against dense in fp32 and fp64, with today's kernels nor with those of
    commit 40bb8f7.) On the CPU the interpreter's argmax takes the first maximum whatever tie_break_left
    says: the tie rule of the triton case is checked compiled, on a GPU."""
    kw = dict(heads=2, proposal=5, fold=4)
    for seed in range(2):  # (the op's y at more centres than points: test_matches_dense's case)
        torch.manual_seed(seed)
        x = torch.randn(1, 8, 8, 8, device=DEVICE)
        a, b = torch.tensor([1.3], device=DEVICE), torch.tensor([-0.2], device=DEVICE)
        want = cluster_assignment(x.double(), a.double(), b.double(), impl="dense", **kw)
        assert torch.equal(cluster_assignment(x, a, b, impl="dense", **kw), want)
        got = cluster_assignment(x, a, b, impl=impl, **kw)
        assert torch.equal(got, want), (seed, (got != want).sum())
        rows, cols = got // 5, got % 5
        assert not ((rows == 1) | (rows == 4) | (cols == 1) | (cols == 4)).any()  # never the second of a pair


@only_compiled_can_fail
@pytest.mark.parametrize("impl", ["triton", "light", "dense"])
def test_identical_points_all_tie(impl):
    """All points of a region equal: every centre equals them, all s tie, everything goes to centre 0."""
    x, v, a, b = make(1, 1, 16, 16, 4, 6)
    x[:] = torch.randn(1, 16, 1, 1, device=DEVICE)
    got = cluster_assignment(x, a, b, heads=1, proposal=2, fold=1, impl=impl)
    assert torch.equal(got, torch.zeros_like(got))
    if impl != "dense":
        assert_matches_dense(impl, x, v, a, b, heads=1, proposal=2, fold=1)


def test_non_contiguous_inputs():
    """channels_last x, a W-strided value and a transposed gradient give the contiguous inputs' result (the op
    makes them contiguous: the kernels address W with the compile-time stride 1)."""
    x0, _, a, b = make(2, 2, 16, 16, 8, 12)
    x = x0.to(memory_format=torch.channels_last)
    v = torch.randn(2, 32, 8, 24, device=DEVICE)[..., ::2]  # [2, 32, 8, 12], stride 2 along W
    dy = torch.randn(2, 32, 12, 8, device=DEVICE).transpose(2, 3)  # [2, 32, 8, 12], transposed
    assert not x.is_contiguous() and not v.is_contiguous() and not dy.is_contiguous()
    kw = dict(heads=2, proposal=3, fold=2)
    y_ref, g_ref, _ = fwd_bwd("dense", x.contiguous(), v.contiguous(), a, b, dy=dy.contiguous(), **kw)
    y, g, _ = fwd_bwd("triton", x, v, a, b, dy=dy, **kw)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, ref in zip(g, g_ref):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,case,scale", [(torch.float16, "regions_5x7_centres_3x3", 1.0),
                                              (torch.bfloat16, "fold_4", 1.0),
                                              (torch.bfloat16, "centres_49_head_dim_24", 1.0),
                                              (torch.bfloat16, "regions_5x7_centres_3x3", 1e-4)])
def test_low_precision(dtype, case, scale):
    """fp16/bf16 in and out, fp32 inside: equal to the fp32 dense path on the same (rounded) inputs up to one
    rounding of each output to the dtype (half an ulp = eps/2 relative; the tolerance is eps, headroom 2x).
    dalpha and dbeta sum over every point, in fp32, then are rounded once: the same bound, relative to their
    own value. Cases whose fp32 assignments differ between the paths (a near-tie) would not be comparable:
    the fp32 maps are checked equal first. ``scale``: x's size (bf16's similarity dot takes x as it is and divides by
    its norm per point: norms below 1 as well)."""
    B, h, d, dv, H, W, prop, fold, alpha, beta = CASES[case]
    x, v, a, b = make(B, h, d, dv, H, W, alpha, beta, dtype=dtype)
    x = (x.float() * scale).to(dtype)
    kw = dict(heads=h, proposal=prop, fold=fold)
    assert torch.equal(cluster_assignment(x, a, b, impl="triton", **kw),
                       cluster_assignment(x.float(), a.float(), b.float(), impl="dense", **kw))
    y, g, dy = fwd_bwd("triton", x, v, a, b, **kw)
    assert y.dtype == dtype and all(t.dtype == dtype for t in g)
    y_ref, g_ref, _ = fwd_bwd("dense", x.float(), v.float(), a.float(), b.float(), dy=dy.float(), **kw)
    eps = torch.finfo(dtype).eps
    tiny = torch.finfo(dtype).tiny
    torch.testing.assert_close(y.float(), y_ref, rtol=eps, atol=tiny)
    for name, got, ref in zip(("dx", "dvalue", "dalpha", "dbeta"), g, g_ref):
        # fp32 sums in another order than dense's: 1e-5 of the gradient's scale on top of the one rounding
        # (dy's scale where the gradient is ~0: 49 centres on 7x7 regions make every point its own centre)
        atol = 1e-5 * max(ref.abs().max().item(), dy.float().abs().max().item()) + tiny
        torch.testing.assert_close(got.float(), ref, rtol=eps, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(DEVICE == "cuda", reason="float64 Triton kernels run only in the interpreter (CPU)")
@pytest.mark.parametrize("denominator", ["count", "similarity"])
def test_gradcheck_float64(denominator):
    """Finite differences on the hand-written Triton backward (float64 through the interpreter)."""
    x, v, a, b = make(1, 2, 3, 2, 4, 6, alpha=1.5, beta=0.2, dtype=torch.float64)
    ins = [t.requires_grad_(True) for t in (x, v, a, b)]
    f = lambda *t: context_cluster(*t, heads=2, proposal=(2, 3), fold=(2, 1), impl="triton",  # noqa: E731
                                   denominator=denominator)
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.skipif(DEVICE == "cuda", reason="float64 Triton kernels run only in the interpreter (CPU)")
def test_gradcheck_float64_overlapping_windows():
    """Regions of 5x7 pooled to 3x4 centres: adaptive-pool windows overlap on both axes (rows 0-1, 1-3, 3-4),
    so a point's centre gradient comes from two windows (the pooling adjoint must visit both)."""
    rh, rw, ph, pw = 5, 7, 3, 4
    starts = [(i * rh) // ph for i in range(ph)]
    ends = [-(-((i + 1) * rh) // ph) for i in range(ph)]
    assert any(e > s2 for e, s2 in zip(ends, starts[1:])), "windows do not overlap"
    x, v, a, b = make(1, 1, 3, 2, rh, 2 * rw, alpha=1.3, beta=-0.1, dtype=torch.float64)
    ins = [t.requires_grad_(True) for t in (x, v, a, b)]
    f = lambda *t: context_cluster(*t, heads=1, proposal=(ph, pw), fold=(1, 2), impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@pytest.mark.skipif(DEVICE == "cuda", reason="float64 Triton kernels run only in the interpreter (CPU)")
def test_gradcheck_float64_windows_tiling_one_axis():
    """Regions of 6x7 pooled to 3x4 centres: the windows tile the rows (2 each, the adjoint's KH = 1: its table is
    the windows' own rows) and overlap along the columns (KW = 2), as the detection shapes do (25 region rows in
    5 windows, 42 columns in 5 overlapping ones)."""
    rh, rw, ph, pw = 6, 7, 3, 4
    x, v, a, b = make(1, 1, 3, 2, rh, 2 * rw, alpha=1.3, beta=-0.1, dtype=torch.float64)
    q = ops.Geometry(x, v, 1, ph, pw, 1, 2)
    assert (q.KH, q.KW) == (1, 2)
    ins = [t.requires_grad_(True) for t in (x, v, a, b)]
    f = lambda *t: context_cluster(*t, heads=1, proposal=(ph, pw), fold=(1, 2), impl="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_windows_per_point_against_the_windows():
    """The adjoint's windows per point along an axis (KH / KW) against adaptive pooling's windows counted point by
    point: never fewer than a point lies in, and 1 exactly where no two windows overlap."""
    from coc_kernels.ops.context_cluster.geometry import windows_per_point
    for r in range(1, 30):
        for p in range(1, 9):
            most = max(sum((i * r) // p <= n < -(-((i + 1) * r) // p) for i in range(p)) for n in range(r))
            k = windows_per_point(r, p)
            assert k >= most and (k == 1) == (most == 1), (r, p, k, most)


def test_dalpha_dbeta_sum_every_block_of_partials():
    """Over 40 (group, chunk) partials summed 16 at a time (partial_block, 256 in use: 289+ groups would take a
    minute in the interpreter): dalpha/dbeta equal dense, so no block of partials is dropped."""
    x, v, a, b = make(1, 2, 8, 8, 8, 10, alpha=1.0, beta=0.2)
    with ops.launch_policy(partial_block=16, target_programs=1):  # one chunk per group: 40 = 16 + 16 + 8
        q = ops.Geometry(x, v, 2, 2, 2, 4, 5)
        assert q.G * q.NC == 40
        assert_matches_dense("triton", x, v, a, b, heads=2, proposal=2, fold=(4, 5))


@only_compiled_can_fail
def test_deterministic_bits():
    x, v, a, b = make(1, 2, 16, 16, 8, 8)
    r1 = fwd_bwd("triton", x, v, a, b, heads=2, proposal=2, fold=2)
    r2 = fwd_bwd("triton", x, v, a, b, dy=r1[2], heads=2, proposal=2, fold=2)
    assert torch.equal(r1[0], r2[0])
    assert all(torch.equal(p, q) for p, q in zip(r1[1], r2[1]))


def test_saved_state_is_linear_in_points():
    """What autograd keeps is O(G*(N + M*d)), never a [G, M, N] tensor."""
    x, v, a, b = make(1, 1, 16, 16, 8, 8)  # G=1, N=64, M=49, d=16: M*N=3136 > N + M*d = 848
    ins = [t.requires_grad_(True) for t in (x, v, a, b)]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        context_cluster(*ins, heads=1, proposal=7, fold=1, impl="triton")
    assert saved and max(t.numel() for t in saved) < 49 * 64
    assert sum(t.numel() for t in saved) <= x.numel() + v.numel() + 2 + 64 * 2 + 49 * (16 + 16 + 1)


# ------------------------------------------------------------------------------------ saved state, chunks
@pytest.mark.parametrize("by_count", [True, False])
def test_saved_state_against_torch(by_count):
    """What the forward saves, each against an independent torch computation: centres = adaptive_avg_pool2d,
    a / sigma = max of sigmoid(beta + alpha cos) over centres, den and o from a one-hot einsum."""
    B, heads, d, dv, H, W, (ph, pw), (fh, fw) = 2, 2, 16, 24, 10, 14, (3, 3), (2, 2)
    x, v, a, b = make(B, heads, d, dv, H, W, alpha=-1.5, beta=0.2)
    y, idx, sigma, c, o, den = ops.cluster_fwd(x, v, a, b, heads, ph, pw, fh, fw, by_count)
    xg = to_groups(x, heads, (fh, fw))
    ref_c = F.adaptive_avg_pool2d(xg, (ph, pw)).flatten(2).transpose(1, 2)  # [G, M, d]
    torch.testing.assert_close(c, ref_c, rtol=1e-6, atol=1e-6)
    x_hat = F.normalize(xg.flatten(2).transpose(1, 2), dim=-1)
    s = torch.sigmoid(b + a * torch.bmm(F.normalize(ref_c, dim=-1), x_hat.transpose(1, 2)))  # [G, M, N]
    ref_sigma, ref_idx = s.max(dim=1)
    assert torch.equal(idx.long(), ref_idx)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-6, atol=1e-6)
    onehot = F.one_hot(ref_idx, ph * pw).float()  # [G, N, M]
    ref_den = onehot.sum(1) if by_count else (onehot * ref_sigma[..., None]).sum(1)
    vp = to_groups(v, heads, (fh, fw)).flatten(2).transpose(1, 2)
    vc = F.adaptive_avg_pool2d(to_groups(v, heads, (fh, fw)), (ph, pw)).flatten(2).transpose(1, 2)
    ref_o = (torch.einsum("gnm,gn,gnd->gmd", onehot, ref_sigma, vp) + vc) / (ref_den[..., None] + 1)
    torch.testing.assert_close(den, ref_den, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(o, ref_o, rtol=1e-5, atol=1e-6)
    ref_y = ref_sigma[..., None] * torch.gather(ref_o, 1, ref_idx[..., None].expand(-1, -1, dv))
    torch.testing.assert_close(to_groups(y, heads, (fh, fw)).flatten(2).transpose(1, 2), ref_y, rtol=1e-5, atol=1e-6)


def test_nonfinite_alpha_makes_output_nan_on_the_fused_path(monkeypatch):
    """On CUDA the op does not sync to look at alpha/beta: the kernels turn the output into NaN instead."""
    import coc_kernels.functional as fn
    x, v, a, b = make(1, 2, 16, 16, 8, 8)
    if DEVICE == "cpu":  # the host check would raise first: skip it to reach the kernels' own check
        monkeypatch.setattr(fn, "_check_scalar", lambda *args: None)
    for bad_a, bad_b in [(float("inf"), 0.0), (1.0, float("nan"))]:
        y = context_cluster(x, v, torch.full_like(a, bad_a), torch.full_like(b, bad_b), heads=2, proposal=2,
                            fold=2, impl="triton")
        assert torch.isnan(y).all()


@pytest.mark.parametrize("impl", ["triton", "light", "dense"])
def test_cluster_assignment_layout(impl):
    """Maps are [B, heads, H, W] and agree with the dense path's argmax, pixel by pixel."""
    x, _, a, b = make(2, 2, 16, 16, 8, 12, alpha=1.0)
    got = cluster_assignment(x, a, b, heads=2, proposal=(2, 3), fold=(2, 3), impl=impl)
    assert got.shape == (2, 2, 8, 12) and got.dtype == torch.int64
    xr = x.reshape(2, 2, 16, 2, 4, 3, 4)
    for bi, h, i, j in [(0, 0, 0, 0), (1, 1, 1, 2), (0, 1, 1, 0)]:
        region = xr[bi, h, :, i, :, j, :]  # [16, 4, 4]
        c = F.normalize(F.adaptive_avg_pool2d(region[None], (2, 3)).flatten(2)[0].T, dim=-1)
        s = torch.sigmoid(b + a * (c @ F.normalize(region.flatten(1).T, dim=-1).T))
        assert torch.equal(got[bi, h, i * 4:(i + 1) * 4, j * 4:(j + 1) * 4].flatten(), s.argmax(0))


# ------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_custom_ops_opcheck(layout):
    """Both custom ops: schema, autograd registration, fake implementations (shape, dtype and strides of
    every output equal the real ones: dx/dvalue are contiguous whatever the inputs' layout), AOT dispatch."""
    x, v, a, b = make(1, 2, 16, 16, 4, 6)
    if layout == "channels_last":
        x, v = x.to(memory_format=torch.channels_last), v.to(memory_format=torch.channels_last)
    args = (x, v, a, b, 2, 2, 2, 2, 1, True)
    torch.library.opcheck(ops.cluster_fwd, args)
    _, idx, sigma, c, o, den = ops.cluster_fwd(*args)
    dy = torch.randn(1, 32, 6, 4, device=DEVICE).transpose(2, 3)  # a non-contiguous upstream gradient
    bwd_args = (dy, x, v, a, idx, sigma, c, o, den, 2, 2, 2, 2, 1, True)
    torch.library.opcheck(ops.cluster_bwd, bwd_args)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake = ops.cluster_bwd(*(mode.from_tensor(t) if isinstance(t, torch.Tensor) else t for t in bwd_args))
    for f, r in zip(fake, ops.cluster_bwd(*bwd_args)):
        assert f.shape == r.shape and f.dtype == r.dtype and f.stride() == r.stride()


def test_custom_op_schema_and_compile():
    x, v, a, b = make(1, 2, 16, 16, 4, 4)

    def f(x, v, a, b):
        return context_cluster(x, v, a, b, heads=2, proposal=2, fold=2, impl="triton") * 2

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break would raise
    ins = [t.clone().requires_grad_(True) for t in (x, v, a, b)]
    y = compiled(*ins)
    y.sum().backward()
    y_ref, g_ref, _ = fwd_bwd("dense", x, v, a, b, dy=torch.full_like(y, 2.0), heads=2, proposal=2, fold=2)
    torch.testing.assert_close(y, 2 * y_ref)
    for t, ref in zip(ins, g_ref):
        torch.testing.assert_close(t.grad, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ bad input
def _good():  # CPU: these test the argument checks, which run before any kernel
    x, v, a, b = make(1, 2, 16, 16, 8, 8, device="cpu")
    return dict(x=x, value=v, alpha=a, beta=b)


@pytest.mark.parametrize("change,kw,err,match", [
    (lambda d: d.update(x=d["x"][:, :, :7]), {}, ValueError, "not divisible by fold"),
    (lambda d: d.update(x=d["x"][0]), {}, ValueError, "rank 4"),
    (lambda d: d.update(value=d["value"][:, :, :4, :4]), {}, ValueError, "batch or spatial"),
    (lambda d: d.update(value=torch.cat([d["value"]] * 2)), {}, ValueError, "batch or spatial"),
    (lambda d: d.update(x=d["x"][:, :31]), {}, ValueError, "not divisible by heads"),
    (lambda d: d.update(alpha=torch.tensor([float("nan")])), {}, ValueError, "alpha must be finite"),
    (lambda d: d.update(beta=torch.tensor([float("inf")])), {}, ValueError, "beta must be finite"),
    (lambda d: d.update(alpha=torch.ones(2)), {}, ValueError, "one-element"),
    (lambda d: d.update(x=d["x"].long()), {}, TypeError, "float32"),
    (lambda d: d.update(value=d["value"].half()), {}, TypeError, "same dtype"),
    (lambda d: None, {"impl": "cuda"}, ValueError, "impl must be one of"),
    (lambda d: None, {"denominator": "mean"}, ValueError, "denominator"),
    (lambda d: None, {"proposal": 0}, ValueError, "proposal"),
])
def test_bad_input(change, kw, err, match):
    d = _good()
    change(d)
    args = dict(heads=2, proposal=2, fold=2)
    args.update(kw)
    with pytest.raises(err, match=match):
        context_cluster(d["x"], d["value"], d["alpha"], d["beta"], **args)


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    d = _good()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        context_cluster(d["x"], d["value"], d["alpha"], d["beta"], heads=2, proposal=2, fold=2, impl="triton")


def test_auto_on_cpu_is_light():
    d = _good()
    y = context_cluster(d["x"], d["value"], d["alpha"], d["beta"], heads=2, proposal=2, fold=2)
    ref = context_cluster(d["x"], d["value"], d["alpha"], d["beta"], heads=2, proposal=2, fold=2, impl="light")
    assert torch.equal(y, ref)
