"""The same awkward inputs through every implementation: non-finite values, the fp16 range, autocast,
torch.func transforms and double backward, non-finite alpha/beta under torch.compile, empty sizes and mixed
dtypes. Each case runs all paths and compares them with each other and with the dense restatement."""
import pytest
import torch

from coc_kernels import cluster_assignment, context_cluster
from conftest import DEVICE

IMPLS = ["dense", "light", "triton"]
KW = dict(heads=2, proposal=2, fold=2)


def make(B=2, C=8, H=8, W=8, dtype=torch.float32, device=DEVICE):
    x = torch.randn(B, C, H, W, dtype=dtype, device=device)
    v = torch.randn(B, C, H, W, dtype=dtype, device=device)
    return x, v, torch.ones(1, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)


# ------------------------------------------------------------------------------------ non-finite values
@pytest.mark.parametrize("where,bad", [("x", float("nan")), ("x", float("inf")), ("value", float("nan")),
                                       ("value", float("-inf"))])
@pytest.mark.parametrize("proposal", [2, 7])  # 4 centres; 49, whose pool kernel sums with the membership on the left
def test_non_finite_inputs_propagate_alike_on_every_path(where, bad, proposal):
    """As the original computes: a non-finite x makes its whole group (image, head, region) NaN; a
    non-finite value in channel c makes channel c of its group NaN. Every path gives the same NaN pattern,
    the same finite values elsewhere, and assignment ids inside 0..M-1."""
    x, v, a, b = make()
    t = x if where == "x" else v
    t[1, 1, 5, 2] = bad  # image 1, head 0, region (1, 0)
    kw = dict(KW, proposal=proposal)
    ys = {i: context_cluster(x, v, a, b, impl=i, **kw) for i in IMPLS}
    nan = ys["dense"].isnan()
    expected = torch.zeros_like(nan)
    if where == "x":
        expected[1, 0:4, 4:8, 0:4] = True
    else:
        expected[1, 1, 4:8, 0:4] = True
    assert torch.equal(nan, expected)
    for impl in IMPLS:
        assert torch.equal(ys[impl].isnan(), nan), impl
        torch.testing.assert_close(ys[impl][~nan], ys["dense"][~nan], rtol=1e-5, atol=1e-5)
    maps = {i: cluster_assignment(x, a, b, impl=i, **kw) for i in ("light", "triton")}
    assert torch.equal(maps["triton"], maps["light"])
    assert 0 <= int(maps["triton"].min()) and int(maps["triton"].max()) < proposal ** 2


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp32_inside_on_every_path(dtype):
    """Values of 300 over a 64x64 region overflow fp16 sums (4096 * 300); every path accumulates in fp32
    and is as close to the fp64 result as the output dtype's rounding allows."""
    x = torch.randn(1, 2, 64, 64, device=DEVICE).to(dtype)
    v = torch.full((1, 2, 64, 64), 300.0, device=DEVICE).to(dtype)
    a, b = torch.ones(1, device=DEVICE), torch.zeros(1, device=DEVICE)
    ref = context_cluster(x.cpu().double(), v.cpu().double(), a.cpu().double(), b.cpu().double(), impl="dense",
                          heads=1, proposal=2, fold=1)
    for impl in IMPLS:
        y = context_cluster(x, v, a, b, impl=impl, heads=1, proposal=2, fold=1)
        assert y.dtype == dtype and torch.isfinite(y).all(), impl
        torch.testing.assert_close(y.cpu().double(), ref, rtol=torch.finfo(dtype).eps, atol=0, msg=impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_training_under_autocast(impl):
    """bf16 features (as autocast's convs give them) with fp32 parameters alpha/beta: gradients of every
    input, in its own dtype, equal to the fp32 computation on the bf16-rounded inputs."""
    x, v, a, b = make(dtype=torch.bfloat16)
    a32, b32 = a.float().requires_grad_(), b.float().requires_grad_()
    xs, vs = x.clone().requires_grad_(), v.clone().requires_grad_()
    with torch.autocast(torch.device(DEVICE).type, dtype=torch.bfloat16):
        y = context_cluster(xs, vs, a32, b32, impl=impl, **KW)
    assert y.dtype == torch.bfloat16
    y.float().square().sum().backward()
    ins = [t.detach().float().requires_grad_() for t in (x, v, a, b)]
    y_ref = context_cluster(*ins, impl="dense", **KW)
    y_ref.to(torch.bfloat16).float().square().sum().backward()
    torch.testing.assert_close(y.float(), y_ref.to(torch.bfloat16).float(), rtol=1e-2, atol=1e-2)
    for got, ref in zip((xs, vs, a32, b32), ins):
        assert got.grad.dtype == got.dtype
        torch.testing.assert_close(got.grad.float(), ref.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("impl", IMPLS)
def test_backbone_trains_under_cpu_autocast(impl):
    """One training step of a small backbone under ``torch.autocast('cpu', bfloat16)``: finite loss and
    gradients reaching every mixer's alpha."""
    from coc_det import ContextCluster
    arch = dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 32, 32], mlp_ratios=[2] * 4, heads=[2] * 4, head_dim=[8] * 4)
    model = ContextCluster(arch, fold=[2, 1, 1, 1], mixer_impl=impl)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = model(torch.randn(1, 3, 64, 64))
    loss = sum(o.float().square().mean() for o in outs)
    loss.backward()
    assert torch.isfinite(loss)
    alphas = [m.sim_alpha.grad for m in model.modules() if hasattr(m, "sim_alpha")]
    assert len(alphas) == 4 and all(g is not None and torch.isfinite(g).all() for g in alphas)


# ------------------------------------------------------------------------------------ transforms
def _f(impl):
    return lambda x, v, a, b: context_cluster(x, v, a, b, impl=impl, **KW)


@pytest.mark.parametrize("impl", ["light", "triton"])
def test_forward_mode_and_func_transforms_match_dense(impl):
    """jvp (forward mode), torch.func.grad, vmap over vjp and double backward: never a zero tangent or a
    torch-internal error; the fused path computes them with the reference math."""
    from torch.func import grad, jvp, vjp, vmap
    x, v, a, b = make()
    tangents = tuple(torch.randn_like(t) for t in (x, v, a, b))
    _, t_ref = jvp(_f("dense"), (x, v, a, b), tangents)
    _, t = jvp(_f(impl), (x, v, a, b), tangents)
    assert t.abs().max() > 0
    torch.testing.assert_close(t, t_ref, rtol=1e-4, atol=1e-4)

    with torch.autograd.forward_ad.dual_level():  # the other forward-mode API
        dual = torch.autograd.forward_ad.make_dual(x, tangents[0])
        t1 = torch.autograd.forward_ad.unpack_dual(_f(impl)(dual, v, a, b)).tangent
    _, t1_ref = jvp(lambda x: _f("dense")(x, v, a, b), (x,), (tangents[0],))
    torch.testing.assert_close(t1, t1_ref, rtol=1e-4, atol=1e-4)

    g = grad(lambda x, a: _f(impl)(x, v, a, b).square().sum(), argnums=(0, 1))(x, a)
    g_ref = grad(lambda x, a: _f("dense")(x, v, a, b).square().sum(), argnums=(0, 1))(x, a)
    for got, ref in zip(g, g_ref):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)

    cts = torch.randn(3, *x.shape, device=DEVICE)
    vj = vmap(vjp(lambda x: _f(impl)(x, v, a, b), x)[1])(cts)[0]
    vj_ref = vmap(vjp(lambda x: _f("dense")(x, v, a, b), x)[1])(cts)[0]
    torch.testing.assert_close(vj, vj_ref, rtol=1e-4, atol=1e-4)

    def double(impl):
        ins = [t.clone().requires_grad_() for t in (x, v, a, b)]
        gs = torch.autograd.grad(_f(impl)(*ins).square().sum(), ins, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in gs), ins)
    for got, ref in zip(double(impl), double("dense")):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------ alpha / beta
@pytest.mark.parametrize("impl", IMPLS)
def test_non_finite_alpha_beta_under_torch_compile(impl):
    """Compiled code skips the host-side check (it would sync): the output is NaN instead of finite garbage."""
    x, v, a, b = make()
    f = torch.compile(_f(impl), backend="aot_eager", fullgraph=True)
    for bad_a, bad_b in [(float("inf"), 0.0), (1.0, float("nan")), (float("-inf"), float("inf"))]:
        y = f(x, v, torch.full_like(a, bad_a), torch.full_like(b, bad_b))
        assert torch.isnan(y).all(), (impl, bad_a, bad_b)
    torch.testing.assert_close(f(x, v, a, b), _f("dense")(x, v, a, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_in_another_float_dtype(impl):
    """alpha/beta are cast to the compute precision: float64 (or bf16) parameters with fp32 features give an
    fp32 output equal to the all-fp32 one, and gradients in the parameters' own dtype."""
    x, v, a, b = make()
    ref_ins = [t.clone().requires_grad_() for t in (x, v, a, b)]
    y_ref = _f("dense")(*ref_ins)
    y_ref.sum().backward()
    for pdt in (torch.float64, torch.bfloat16):
        a2 = torch.ones(1, dtype=pdt, device=DEVICE, requires_grad=True)
        b2 = torch.zeros(1, dtype=pdt, device=DEVICE, requires_grad=True)
        y = _f(impl)(x, v, a2, b2)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
        y.sum().backward()
        assert a2.grad.dtype == pdt and b2.grad.dtype == pdt
        tol = dict(rtol=1e-4, atol=1e-4) if pdt == torch.float64 else dict(rtol=1e-2, atol=1e-1)
        torch.testing.assert_close(a2.grad.float(), ref_ins[2].grad, **tol)


@pytest.mark.parametrize("impl", ["light", "triton"])
def test_alpha_and_beta_of_different_dtypes_each_keep_their_gradient(impl):
    """alpha fp16, beta fp32, and a large upstream gradient: each scalar's gradient comes back in its own
    dtype, summed in fp32 (the fused path once returned dbeta in alpha's dtype: -inf past fp16's range, and
    rounded to fp16 below it), equal to the dense path's."""
    x, v, _, _ = make()
    grads = {}
    for path in ("dense", impl):
        a = torch.full((1,), 1.5, dtype=torch.float16, device=DEVICE, requires_grad=True)
        b = torch.full((1,), -0.25, dtype=torch.float32, device=DEVICE, requires_grad=True)
        (_f(path)(x, v, a, b) * 1e6).sum().backward()
        assert a.grad.dtype == torch.float16 and b.grad.dtype == torch.float32
        grads[path] = (a.grad.float(), b.grad)
    assert torch.isfinite(grads[impl][1]).all() and grads[impl][1].abs().item() > 65504  # past fp16's range
    torch.testing.assert_close(grads[impl][1], grads["dense"][1], rtol=1e-5, atol=0)
    torch.testing.assert_close(grads[impl][0], grads["dense"][0], rtol=1e-3, atol=0)  # fp16: one rounding


# ------------------------------------------------------------------------------------ empty sizes
@pytest.mark.parametrize("shape", [(0, 8, 8, 8), (2, 8, 0, 8), (2, 8, 8, 0), (0, 8, 0, 0)],
                         ids=["B0", "H0", "W0", "all0"])
@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs_give_empty_outputs_with_gradients(impl, shape):
    x, v, a, b = make(*shape)
    ins = [t.clone().requires_grad_() for t in (x, v, a, b)]
    y = _f(impl)(*ins)
    assert y.shape == shape and y.dtype == x.dtype and y.requires_grad
    y.sum().backward()
    for t in ins:
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()
    m = cluster_assignment(x, a, b, impl="light" if impl == "dense" else impl, **KW)
    assert m.shape == (shape[0], 2, shape[2], shape[3]) and m.dtype == torch.int64


@pytest.mark.parametrize("change,err,match", [
    (lambda d: d.update(x=d["x"][:, :0], value=d["value"][:, :0]), ValueError, "no channels"),
    (lambda d: d.update(value=d["value"][:, :0]), ValueError, "positive multiple of heads"),
    (lambda d: d.update(alpha=torch.ones(1, dtype=torch.int64)), TypeError, "alpha must be a floating-point"),
])
def test_degenerate_channels_and_integer_alpha_are_named(change, err, match):
    x, v, a, b = make(device="cpu")
    d = dict(x=x, value=v, alpha=a, beta=b)
    change(d)
    for impl in IMPLS:
        with pytest.raises(err, match=match):
            context_cluster(d["x"], d["value"], d["alpha"], d["beta"], impl=impl, **KW)


# ------------------------------------------------------------------------------------ odd arguments
@pytest.mark.parametrize("impl", ["light", "dense"])
def test_runs_on_the_meta_device_and_under_fake_tensors(impl):
    """Shape-only tracing (timm's and accelerate's deferred initialisation, FakeTensorMode): the alpha/beta
    finiteness check has no value to read there and is skipped, as it is on CUDA."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with torch.device("meta"):
        x, v, a, b = make(device="meta")
        assert context_cluster(x, v, a, b, impl=impl, **KW).shape == v.shape
    with FakeTensorMode() as mode:
        x, v, a, b = (mode.from_tensor(t) for t in make(device="cpu"))
        assert context_cluster(x, v, a, b, impl=impl, **KW).shape == v.shape


@pytest.mark.parametrize("impl", IMPLS)
def test_a_missing_value_and_an_impl_that_is_not_a_name_are_named(impl):
    x, v, a, b = make()
    with pytest.raises(TypeError, match="value must be a torch.Tensor .* got NoneType"):
        context_cluster(x, None, a, b, impl=impl, **KW)
    for bad in (["light"], None, 3):
        with pytest.raises(TypeError, match=r"impl must be one of .* \(a str\), got"):
            context_cluster(x, v, a, b, impl=bad, **KW)
        with pytest.raises(TypeError, match=r"impl must be one of .* \(a str\), got"):
            cluster_assignment(x, a, b, impl=bad, **KW)


@pytest.mark.parametrize("impl", IMPLS)
def test_alpha_beta_of_any_one_element_shape(impl):
    """alpha / beta of shape (1, 1, 1, 1) or () give what shape (1,) gives, with gradients in their own shape."""
    x, v, a, b = make()
    want = context_cluster(x, v, a * 1.5, b + 0.25, impl="dense", **KW)
    for shape in [(1, 1, 1, 1), ()]:
        a4 = (a * 1.5).reshape(shape).requires_grad_()
        b4 = (b + 0.25).reshape(shape).requires_grad_()
        y = context_cluster(x, v, a4, b4, impl=impl, **KW)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
        y.square().sum().backward()
        assert a4.grad.shape == shape and b4.grad.shape == shape


@pytest.mark.parametrize("kw,err,match", [
    (dict(heads=True), TypeError, "heads must be an int, got the bool True"),
    (dict(proposal=2.7), TypeError, "proposal must be an int, got float 2.7"),
    (dict(fold=(2, "2")), TypeError, "fold must be an int, got str '2'"),
    (dict(proposal=(2, 2, 2)), ValueError, "proposal must be an int or a pair of ints, got 3 values"),
    (dict(heads=0), ValueError, "heads must be positive"),
])
def test_bad_geometry_arguments_are_named_on_every_path(kw, err, match):
    x, v, a, b = make()
    for impl in IMPLS:
        with pytest.raises(err, match=match):
            context_cluster(x, v, a, b, impl=impl, **dict(KW, **kw))
        with pytest.raises(err, match=match):
            cluster_assignment(x, a, b, impl="light" if impl == "dense" else impl, **dict(KW, **kw))


def test_numpy_integers_are_taken_as_ints():
    np = pytest.importorskip("numpy")
    x, v, a, b = make()
    want = context_cluster(x, v, a, b, impl="dense", **KW)
    for impl in IMPLS:
        y = context_cluster(x, v, a, b, impl=impl, heads=np.int64(2), proposal=(np.int32(2), 2), fold=np.int64(2))
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)


def test_centres_at_the_fused_limit_and_past_it():
    """The fused kernels take up to MAX_FUSED_CENTRES centres per region (the widest centre tile the compile
    gate checks): at the limit they equal dense; one row of centres more is refused up front naming the
    alternative, and 'auto' picks the reference path for it."""
    from coc_kernels.functional import MAX_FUSED_CENTRES
    assert MAX_FUSED_CENTRES == 64
    x, v, a, b = make(B=1, C=4, H=16, W=16, dtype=torch.float64)
    kw = dict(heads=1, fold=1)
    want = context_cluster(x, v, a, b, impl="dense", proposal=8, **kw)
    torch.testing.assert_close(context_cluster(x, v, a, b, impl="triton", proposal=8, **kw), want)
    assert torch.equal(cluster_assignment(x, a, b, impl="triton", proposal=8, **kw),
                       cluster_assignment(x, a, b, impl="light", proposal=8, **kw))
    for call in (lambda: context_cluster(x, v, a, b, impl="triton", proposal=(5, 13), **kw),
                 lambda: cluster_assignment(x, a, b, impl="triton", proposal=(5, 13), **kw)):
        with pytest.raises(ValueError, match="at most 64 centres per region, got 65; use impl='light'"):
            call()
    from types import SimpleNamespace

    from coc_kernels.functional import resolve_impl
    cuda_input = SimpleNamespace(is_cuda=True, dtype=torch.float32, shape=(1, 4, 16, 16))  # what 'auto' looks at
    assert resolve_impl("auto", cuda_input, 64) == "triton" and resolve_impl("auto", cuda_input, 65) == "light"


def test_the_earlier_impl_name_reference_still_means_light():
    """``impl="reference"`` (the memory-light path's name until 2026-11-27) is accepted everywhere: the op, the
    assignment and the backbone, giving the light path's results; an unknown name is refused."""
    from coc_det.backbone import ContextCluster
    from coc_kernels.functional import resolve_impl
    x, v, a, b = make(B=1, C=4, H=8, W=8, dtype=torch.float64)
    kw = dict(heads=2, proposal=2, fold=2)
    assert torch.equal(context_cluster(x, v, a, b, impl="reference", **kw),
                       context_cluster(x, v, a, b, impl="light", **kw))
    assert torch.equal(cluster_assignment(x, a, b, impl="reference", **kw),
                       cluster_assignment(x, a, b, impl="light", **kw))
    assert resolve_impl("reference", x) == "light"
    assert {m.impl for m in ContextCluster("tiny", mixer_impl="reference").modules() if hasattr(m, "impl")} == {"light"}
    with pytest.raises(ValueError, match="impl must be one of"):
        context_cluster(x, v, a, b, impl="fused", **kw)
