"""Hostile sweep 4 (issue 41): launch state that belongs to the thread that set it, fake and symbolic tensors on
the fused path, settings that say what is wrong, sizes past the kernels' 32-bit offsets."""
import threading

import pytest
import torch

from coc_kernels import cluster_assignment, context_cluster
from coc_kernels.ops import context_cluster as ops
from conftest import DEVICE

KW = dict(heads=2, proposal=2, fold=2)


def make(B=1, C=8, H=8, W=8, dtype=torch.float32, device=DEVICE):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, dtype=dtype, generator=g).to(device)
    v = torch.randn(B, C, H, W, dtype=dtype, generator=g).to(device)
    return x, v, torch.ones(1, dtype=dtype, device=device), torch.zeros(1, dtype=dtype, device=device)


def _interleave(first, second):
    """Run two context managers in two threads, entered A, B and left A, B (the order that leaked a policy);
    returns what each thread saw inside its block and what it sees after."""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def thread_a():
        with first() as got:
            seen["a"] = (got, ops.policy())
            a_in.set()
            b_in.wait(5)
        seen["a_after"] = ops.policy()
        a_out.set()

    def thread_b():
        a_in.wait(5)
        with second() as got:
            seen["b"] = (got, ops.policy())
            b_in.set()
            a_out.wait(5)
            seen["b_late"] = ops.policy()
        seen["b_after"] = ops.policy()

    ts = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    return seen


# ------------------------------------------------------------------------------------ 1. policy per thread
def _fresh_thread_policy():
    """``ops.policy()`` in a new thread (one that set no policy), or the error it raised there."""
    got = {}

    def read():
        try:
            got["p"] = ops.policy()
        except Exception as e:
            got["e"] = e

    t = threading.Thread(target=read)
    t.start()
    t.join(5)
    if "e" in got:
        raise got["e"]
    return got["p"]


def test_launch_policies_of_interleaved_threads_stay_in_their_threads():
    before = ops.policy()  # this thread's (the suite poisons buffers here)
    fresh = _fresh_thread_policy()  # a thread that never asked: the defaults of the environment
    assert fresh.poison is False and fresh.precision == "split"
    seen = _interleave(lambda: ops.launch_policy(precision="tf32"), lambda: ops.launch_policy(target_programs=1))
    assert seen["a"][1].precision == "tf32" and seen["b"][1].target_programs == 1
    assert seen["b"][1].precision == fresh.precision  # B never asked for tf32
    assert seen["b_late"].target_programs == 1 and seen["b_late"].precision == fresh.precision  # A left
    assert seen["a_after"] is fresh and seen["b_after"] is fresh
    assert ops.policy() is before  # this thread never saw either
    # a thread that never asked runs under the defaults while another is inside a block
    inside, release, got = threading.Event(), threading.Event(), {}

    def holder():
        with ops.launch_policy(precision="tf32", target_programs=3):
            inside.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(5)
    other = threading.Thread(target=lambda: got.setdefault("p", ops.policy()))
    other.start()
    other.join(5)
    release.set()
    t.join(5)
    assert got["p"] is fresh


# ------------------------------------------------------------------------------------ 2. recording per thread
def test_a_dry_run_in_one_thread_leaves_other_threads_computing():
    """While one thread records without executing (the compile gate), another thread's fused call runs its
    kernels and returns the light path's numbers, and its launches are not in the first thread's record."""
    x, v, a, b = make(device="cpu" if DEVICE == "cpu" else DEVICE)
    want = context_cluster(x, v, a, b, impl="light", **KW)
    recording, done, out = threading.Event(), threading.Event(), {}

    def recorder():
        with ops.record_launches(execute=False) as rec:
            recording.set()
            done.wait(60)
            out["foreign"] = len(rec)
            context_cluster(x, v, a, b, impl="triton", **KW)  # its own launches: recorded, not run
            out["own"] = len(rec)

    t = threading.Thread(target=recorder)
    t.start()
    recording.wait(5)
    assert not ops.dry_run()
    got = context_cluster(x, v, a, b, impl="triton", **KW)
    done.set()
    t.join(60)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert out == {"foreign": 0, "own": 3}


def test_a_backward_in_a_thread_without_launch_state_launches_as_its_forward():
    """Autograd may run a backward in a thread of its own (CUDA: one per device), which set no policy and records
    nothing: there the backward takes its forward's policy and recorders. (Simulated on the CPU by calling
    backward from a fresh thread; a thread that set its own state keeps it, see the compile gate's count test.)"""
    x, v, a, b = make(H=128, device="cpu" if DEVICE == "cpu" else DEVICE)  # 64-row regions: several chunks
    x.requires_grad_(True)
    with ops.record_launches() as default:
        context_cluster(x, v, a, b, impl="triton", **KW)
    assert default[0].grid[1] > 1
    with ops.launch_policy(target_programs=1):
        with ops.record_launches() as rec:
            y = context_cluster(x, v, a, b, impl="triton", **KW)
    assert len(rec) == 3
    seen = {}
    t = threading.Thread(target=lambda: (y.sum().backward(), seen.setdefault("policy", ops.policy())))
    t.start()
    t.join(60)
    assert len(rec) == 6 and all(r.grid[1] == 1 for r in rec)  # the backward's 3, one chunk as the forward had
    assert seen["policy"].target_programs is None and x.grad is not None  # the default policy: its own target


# ------------------------------------------------------------------------------------ 4, 5. fake and symbolic
@pytest.mark.skipif(DEVICE == "cuda", reason="CPU fake tensors through the interpreter")
def test_fake_tensors_take_the_fused_path_to_its_fake_implementation():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        x, v, a, b = (mode.from_tensor(t) for t in make(device="cpu"))
        x.requires_grad_(True)
        y = context_cluster(x, v, a, b, impl="triton", **KW)
        assert y.shape == v.shape and y.dtype == v.dtype
        y.sum().backward()
        assert x.grad.shape == x.shape
        assert cluster_assignment(x, a, b, impl="triton", **KW).shape == (1, 2, 8, 8)


def test_fake_cuda_tensors_without_a_driver():
    """FakeTensorMode makes CUDA tensors on a machine without a GPU: the op must not launch on them (forward and
    assignment maps; torch's own backward needs a driver for fake CUDA tensors, ``(x * 2).sum().backward()`` too,
    so the graph's backward node is checked instead)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x, v = (torch.randn(1, 8, 8, 8, device="cuda", requires_grad=True) for _ in range(2))
        a, b = torch.ones(1, device="cuda"), torch.zeros(1, device="cuda")
        y = context_cluster(x, v, a, b, impl="auto", **KW)
        assert y.shape == v.shape and y.device.type == "cuda" and y.grad_fn is not None
        assert cluster_assignment(x, a, b, impl="auto", **KW).shape == (1, 2, 8, 8)


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors through the interpreter")
def test_symbolic_tracing_of_the_fused_path():
    from torch.fx.experimental.proxy_tensor import make_fx
    x, v, a, b = make(device="cpu")

    def f(x, v, a, b):
        return context_cluster(x, v, a, b, impl="triton", **KW)

    gm = make_fx(f, tracing_mode="symbolic")(x, v, a, b)
    assert any("cluster_fwd" in str(n.target) for n in gm.graph.nodes)
    x2, v2, a2, b2 = make(H=16, W=12, device="cpu")
    torch.testing.assert_close(gm(x2, v2, a2, b2), context_cluster(x2, v2, a2, b2, impl="light", **KW),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(DEVICE == "cuda", reason="CPU tensors through the interpreter")
def test_opcheck_of_the_public_op_with_dynamic_shapes():
    from coc_kernels import context_cluster_op
    x, v, a, b = (t.requires_grad_() for t in make(device="cpu"))
    torch.library.opcheck(context_cluster_op, (x, v, a, b, 2, [2, 2], [2, 2], "triton", "similarity"),
                          test_utils=("test_aot_dispatch_dynamic",))


# ------------------------------------------------------------------------------------ 7. settings
@pytest.mark.parametrize("var,value,match", [
    ("COC_TARGET_PROGRAMS", "abc", "COC_TARGET_PROGRAMS"), ("COC_TARGET_PROGRAMS", "1e3", "COC_TARGET_PROGRAMS"),
    ("COC_TARGET_PROGRAMS", "0", "COC_TARGET_PROGRAMS"), ("COC_DOT_PRECISION", "fp8", "COC_DOT_PRECISION")])
def test_bad_environment_settings_are_named(monkeypatch, var, value, match):
    """(In a thread of its own: the suite runs every test inside a launch_policy block, whose policy stands.)"""
    monkeypatch.setenv(var, value)
    with pytest.raises(ValueError, match=match):
        _fresh_thread_policy()


def test_environment_settings_are_read_when_they_change(monkeypatch):
    """Set after the first call, a variable takes effect; an exported empty one means the default."""
    _fresh_thread_policy()
    monkeypatch.setenv("COC_TARGET_PROGRAMS", "7")
    monkeypatch.setenv("COC_DOT_PRECISION", "")
    p = _fresh_thread_policy()
    assert p.target_programs == 7 and p.precision == "split"
    monkeypatch.setenv("COC_DOT_PRECISION", "ieee")
    assert _fresh_thread_policy().precision == "ieee"
    assert _fresh_thread_policy() is _fresh_thread_policy()  # one object while nothing changes (the geometry
    # cache keys on it)


@pytest.mark.parametrize("change,match", [
    (dict(config_overrides={"asign": {"BLOCK_N": 32}}), "asign"),
    (dict(config_overrides={"assign": {"BLOCKN": 32}}), "BLOCKN"),
    (dict(config_overrides={"assign": {"STAGES": 0}}), "STAGES"),
    (dict(config_overrides={"assign": {"num_warps": 3}}), "num_warps"),
    (dict(config_overrides={"assign": {"BLOCK_N": 32.0}}), "BLOCK_N"),
    (dict(config_overrides={"assign": {"BLOCK_N": 24}}), "BLOCK_N"),
    (dict(config_overrides={"assign": None}), "assign"),
    (dict(config_overrides=[("assign", {})]), "config_overrides"),
    (dict(target_programs=True), "target_programs"),
    (dict(partial_block=True), "partial_block"),
    (dict(poison="yes"), "poison"),
])
def test_bad_policy_settings_are_named_where_they_are_set(change, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ops.LaunchPolicy(**change)
    with pytest.raises((ValueError, TypeError), match=match):
        with ops.launch_policy(**change):
            pass


def test_config_overrides_are_taken_as_they_were_given():
    """Changing the dict after the policy is made changes nothing (the geometry cache keys on the policy)."""
    overrides = {"assign": {"BLOCK_N": 64}}
    with ops.launch_policy(config_overrides=overrides):
        overrides["assign"]["BLOCK_N"] = 16
        assert ops.kernel_config("assign", 25, 32, 32)["BLOCK_N"] == 64


# ------------------------------------------------------------------------------------ 6, 8. limits, odd arguments
def test_a_python_float_alpha_is_a_type_error():
    x, v, a, b = make(device="cpu")
    with pytest.raises(TypeError, match="alpha must be a one-element tensor"):
        context_cluster(x, v, 1.0, b, impl="light", **KW)


def test_partials_past_the_32_bit_offsets_are_refused():
    """The (dalpha, dbeta) partials are addressed with 32-bit offsets: groups x chunks x 2 must stay below 2**31.
    Only one-pixel regions reach it (a dry run: nothing is allocated for real on the meta device)."""
    x = torch.empty(2 ** 15, 2 ** 15, 2, 1, device="meta")  # heads 2**15, folds 2x1: G = 2**31 groups
    with pytest.raises(ValueError, match="2\\*\\*31"):
        ops.Geometry(x, x, 2 ** 15, 1, 1, 2, 1)


def test_regions_past_the_pooling_adjoints_float_division_are_refused():
    """A point's pooling windows come from ``r * ph / rh`` estimated in fp32 (exact while ``rh * ph <= 2**24``):
    a 2**19-row region with 64 centre rows would pick wrong windows, silently; it is refused instead."""
    x = torch.empty(1, 1, 2 ** 19, 1, device="meta")
    ops.Geometry(torch.empty(1, 1, 2 ** 18, 1, device="meta"), None, 1, 64, 1, 1, 1)  # 2**24: still exact
    with pytest.raises(ValueError, match="2\\*\\*24"):
        ops.Geometry(x, None, 1, 64, 1, 1, 1)


def test_regions_past_the_pool_tables_32_bit_offsets_are_refused():
    """The pool kernel's window table (region points, columns rounded up to the tile width, x centre slots) is
    addressed with 32-bit offsets: a 2**13 x 2**12 region with 49 centres (64 slots) would reach 2**31 elements
    from an image of 2**25; it is refused, naming the table, before anything is made."""
    ops.Geometry(torch.empty(1, 1, 2 ** 13, 2 ** 12 - 16, device="meta"), None, 1, 7, 7, 1, 1)  # just below
    with pytest.raises(ValueError, match="window table.*2\\*\\*31.*impl='light'"):
        ops.Geometry(torch.empty(1, 1, 2 ** 13, 2 ** 12, device="meta"), None, 1, 7, 7, 1, 1)


def test_auto_takes_the_light_path_past_the_fused_size_limit(monkeypatch):
    """An image over the fused kernels' 32-bit element limit runs on the light path under impl='auto' (which has
    no such limit); impl='triton' says why it cannot. (Fake CUDA tensors: the choice, without a GPU.)"""
    import coc_kernels.functional as fn
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(1, 8, 8, 8, device="cuda")
        assert fn.resolve_impl("auto", x, 4) == "triton"
        monkeypatch.setattr(fn, "MAX_FUSED_IMAGE_ELEMENTS", 8 * 8 * 8 - 1)
        assert fn.resolve_impl("auto", x, 4) == "light"
        with pytest.raises(ValueError, match="elements"):
            fn.resolve_impl("triton", x, 4)


# ------------------------------------------------------------------------------------ 3, 8. norms
@pytest.mark.parametrize("dtype,big", [(torch.float32, 3e19), (torch.float64, 1e200)])
def test_large_finite_inputs_whose_squares_overflow(dtype, big):
    """A window of |x| ~ 3e19 (1e200 in float64): sums of squares overflow to inf, the values are finite. As
    F.normalize does, such a centre or point normalises to 0 (x / inf); no NaN, on any path, forward or backward.
    The reference is the dense path in float64 with those values at 1e200, whose squares overflow there alike (the
    same zeros): the fp32 paths' dalpha / dbeta are sums over every point in orders of their own (the dense fp32
    path's dbeta is 1e-6 off the float64 one, the fused path's 1e-8)."""
    x, v, a, b = make(B=1, C=8, H=8, W=8, dtype=dtype)
    x[:, 0:4, 0:2, 0:2] = big  # head 0, region (0, 0): one window's points and its centre
    ref_x = x.double()
    ref_x[:, 0:4, 0:2, 0:2] = 1e200
    ins = [t.detach().double().requires_grad_() for t in (ref_x, v, a, b)]
    y_ref = context_cluster(*ins, impl="dense", **KW)
    g_ref = torch.autograd.grad(y_ref, ins, torch.ones_like(y_ref))
    for impl in ("triton", "light", "dense"):
        ins = [t.detach().clone().requires_grad_() for t in (x, v, a, b)]
        y = context_cluster(*ins, impl=impl, **KW)
        g = torch.autograd.grad(y, ins, torch.ones_like(y))
        assert torch.isfinite(y).all() and all(torch.isfinite(t).all() for t in g), impl
        if impl == "dense":
            continue
        torch.testing.assert_close(y.double(), y_ref, rtol=1e-6, atol=1e-6)
        for got, want in zip(g, g_ref):
            torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(DEVICE == "cuda", reason="float64 kernels run in the interpreter")
def test_the_norm_clamp_is_exact_in_float64():
    """Zero-norm points take F.normalize's clamped branch, ``x / 1e-12``: in float64 the clamp is 1e-12 itself,
    not its fp32 rounding (which made gradients differ from the dense path by 4e-9 relative)."""
    x, v, a, b = make(B=1, C=8, H=8, W=8, dtype=torch.float64)
    x[:, 0:4, 1, 2] = 0
    x[:, 4:8, 5, 7] = 0
    outs = {}
    for impl in ("triton", "dense"):
        ins = [t.detach().clone().requires_grad_() for t in (x, v, a, b)]
        y = context_cluster(*ins, impl=impl, **KW)
        outs[impl] = torch.autograd.grad(y, ins, torch.ones_like(y))
    for got, want in zip(outs["triton"], outs["dense"]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
