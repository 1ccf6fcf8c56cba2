"""``ContextCluster(compile=...)``: the whole backbone captured as one graph by torch.compile, with the fused op
opaque. On the CPU the capture is checked with ``backend="aot_eager"`` (inductor's code generation takes
minutes here; the GPU benchmarks exercise it): outputs and gradients equal eager, no graph break, and a
bounded number of graphs over the varying image sizes of detection training."""
import copy

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from coc_det import backbone
from coc_det.backbone import ContextCluster, conv2d_as_matmul

# two stages with few regions: the Triton interpreter runs every program of every launch in Python
ARCH = dict(layers=[1, 1], embed_dims=[8, 16], mlp_ratios=[2, 2], heads=[2, 2], head_dim=[4, 4], folds=[2, 1])


def _pair(impl, counter, **kw):
    torch.manual_seed(0)
    eager = ContextCluster(ARCH, proposal=2, out_indices=(0, 1), mixer_impl=impl, layer_scale_init_value=0.5,
                           **kw).double()
    comp = copy.deepcopy(eager)
    comp.compile_cfg = dict(fullgraph=True, dynamic=None, backend=counter)
    return eager, comp


def _step(model, x):
    x = x.clone().requires_grad_()
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outs).backward()
    params = getattr(model, "module", model).named_parameters()  # DDP: the wrapped module's names
    return outs, x.grad, {n: p.grad for n, p in params if p.grad is not None}


def _assert_same_step(got, want, eager):
    """Outputs, input gradient and every parameter's gradient of two :func:`_step` results agree (float64)."""
    for g, w in zip(got[0], want[0]):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-12)
    assert set(got[2]) == set(want[2]) and len(want[2]) == len(list(eager.parameters()))
    for n in want[2]:
        torch.testing.assert_close(got[2][n], want[2][n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("impl", ["triton", "dense"])  # the memory-light path: its loops make tracing 30 s here
def test_compiled_backbone_equals_eager_in_one_graph(impl):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    eager, comp = _pair(impl, counter)
    x = torch.randn(2, 3, 32, 48, dtype=torch.float64)
    _assert_same_step(_step(comp, x), _step(eager, x), eager)
    assert counter.frame_count == 1  # one graph: the whole backbone


@pytest.mark.parametrize("impl", ["triton", "light", "dense"])
def test_varying_image_sizes_reuse_one_graph(impl):
    """Padded detection batches change size every iteration: after the first graph, sizes are symbolic and
    no other size recompiles (three sizes here, 5 in an earlier version of this test), on every mixer path
    (the light path's chunk loop once made each size a graph); batch 1 (inference) is one more graph for all
    its sizes, as torch specialises sizes of 1 (so does an image axis whose last stage is 1 pixel)."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager" if impl == "triton" else "eager")
    _, comp = _pair(impl, counter)
    comp.eval()
    with torch.no_grad():
        for h, w in [(32, 32), (48, 32), (32, 80)]:  # regions 4 to 10 points a side
            outs = comp(torch.randn(2, 3, h, w, dtype=torch.float64))
            assert outs[0].shape == (2, 8, h // 4, w // 4)
        assert counter.frame_count == 1
        comp(torch.randn(1, 3, 32, 48, dtype=torch.float64))
        comp(torch.randn(1, 3, 48, 48, dtype=torch.float64))
    assert counter.frame_count == 2


def test_compiled_with_cp_frozen_stages_and_autocast(monkeypatch):
    """with_cp (activation checkpointing inside the graph), frozen stages and bf16 autocast: the same
    results as eager with the same settings and the graph's form of the convolutions (bf16 products of another
    order would flip near-tie assignments), in one graph."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    eager, comp = _pair("dense", counter, with_cp=True, frozen_stages=1)  # dense: the fastest to trace here
    eager, comp = eager.float().train(), comp.float().train()
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with monkeypatch.context() as m:
            m.setattr(backbone, "_CONV_FREE", True)
            want = _step(eager, x)
        got = _step(comp, x)
    assert counter.frame_count == 1
    for w, g in zip(want[0], got[0]):
        assert g.dtype == w.dtype
        torch.testing.assert_close(g, w)
    assert set(got[2]) == set(want[2]) and not any(n.startswith("patch_embed") for n in got[2])  # frozen
    # The gradients are bf16 products summed in another order: the graph takes a product's weight gradient as
    # one product over the batch, eager autograd sums the images' rounded bf16 products (measured: 1 bf16 unit
    # of the largest entry, e.g. 0.0625 of 17.75). So: equal within bf16's resolution of each tensor's scale.
    for n in want[2]:
        scale = want[2][n].abs().max().item()
        torch.testing.assert_close(got[2][n], want[2][n], rtol=2 ** -7, atol=2 ** -7 * scale, msg=n)


def test_compile_switch_arguments():
    kw = dict(out_indices=(0, 1))
    assert ContextCluster(ARCH, **kw).compile_cfg is None
    assert ContextCluster(ARCH, compile=True, **kw).compile_cfg == dict(fullgraph=True, dynamic=None)
    assert ContextCluster(ARCH, compile=dict(mode="max-autotune"), **kw).compile_cfg == dict(
        fullgraph=True, dynamic=None, mode="max-autotune")
    with pytest.raises(ValueError, match="compile must be a bool or a dict"):
        ContextCluster(ARCH, compile="yes", **kw)
    # refused when built, naming the key (torch.compile itself refuses these only at the first forward)
    for bad, match in [(dict(bogus=1), "unknown torch.compile argument 'bogus'"),
                       (dict(backend="no_such_backend"), "backend 'no_such_backend' is not one of"),
                       (dict(mode="fastest"), "mode must be one of"),
                       (dict(mode="max-autotune", options={"trace.enabled": False}), "mode or options, not both")]:
        with pytest.raises(ValueError, match=match):
            ContextCluster(ARCH, compile=bad, **kw)
    assert ContextCluster(ARCH, compile=dict(backend="aot_eager"), **kw).compile_cfg["backend"] == "aot_eager"
    model = ContextCluster(ARCH, compile=True, **kw)
    assert "compile" not in str(list(model.state_dict()))
    copy.deepcopy(model)  # nothing compiled is stored on the module
    assert callable(model.compile)  # nn.Module.compile stays the method it is


def test_compiled_backbone_inside_ddp(tmp_path):
    """DistributedDataParallel (gloo, one process: the reducer's hooks and buckets are real) around the
    compiled backbone: the same loss gradients as the eager backbone, in one graph."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    eager, comp = _pair("triton", counter)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        want, got = _step(eager, x), _step(DDP(comp), x)
    finally:
        dist.destroy_process_group()
    assert counter.frame_count == 1
    for n in want[2]:
        torch.testing.assert_close(got[2][n], want[2][n], rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("impl", ["light", "triton"])  # the CPU default, and the fused op through the interpreter
def test_inductor_training_step_one_graph_for_all_sizes(impl):
    """The switch as users run it: inductor, a training step (forward and backward) at two image sizes. It once
    stopped in inductor's lowering ("cannot determine truth value of Relational": a stride order of symbolic
    sizes), and with that fixed, compiled a graph per size (the convolutions' backward and the adaptive pooling
    pinned the sizes). Now: outputs and gradients equal eager's (float64: no near-tie flips the assignment),
    one graph for both sizes."""
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    eager, comp = _pair(impl, counter)
    eager.train(), comp.train()
    for h, w in [(32, 48), (48, 32)]:
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        _assert_same_step(_step(comp, x), _step(eager, x), eager)
    assert counter.frame_count == 1


@pytest.mark.parametrize("kernel,stride,padding,size", [(4, 4, 0, (16, 24)), (3, 2, 1, (8, 12)), (3, 2, 1, (2, 2)),
                                                        (1, 1, 0, (5, 7))])
def test_conv2d_as_matmul_equals_conv2d(kernel, stride, padding, size):
    """The graph's form of the backbone's convolutions (stem 4/4/0, reducers 3/2/1, the mixers' 1x1): F.conv2d's
    output and gradients, float64."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 5, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    want = torch.nn.functional.conv2d(x, w, b, stride, padding)
    got = conv2d_as_matmul(x, w, b, stride, padding)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g),
                               rtol=1e-12, atol=1e-12)
