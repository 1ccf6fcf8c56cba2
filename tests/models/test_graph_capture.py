"""The models where Python does not run: TorchScript, torch.fx, torch.jit.trace, the meta device.

Each records the mixer as the one operator ``torch.ops.coc_kernels.context_cluster``; outputs and gradients must
equal the eager model's (float64, so that the hard assignment has no near-ties to flip)."""
import pytest
import torch

from coc_det import ContextCluster
from coc_det.classifier import ContextClusterClassifier
from coc_kernels import context_cluster, context_cluster_op

ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[16, 24, 32, 40], mlp_ratios=[2, 2, 2, 2], heads=[2, 2, 2, 2],
            head_dim=[8, 8, 8, 8], proposals=[(2, 3), (3, 2), 2, 2], folds=[2, 2, 1, 1])


def _model(**kw):
    torch.manual_seed(0)
    return ContextClusterClassifier(ARCH, num_classes=7, **kw).double().eval()


def _x(batch=2, side=64):
    return torch.randn(batch, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _op_nodes(graph):
    return [n for n in graph.nodes() if n.kind() == "coc_kernels::context_cluster"]


def test_torchscript_classifier_equals_eager_and_saves(tmp_path):
    model, x = _model(), _x()
    scripted = torch.jit.script(model)
    assert len(_op_nodes(scripted.inlined_graph)) == 4  # one mixer per block
    torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)
    torch.jit.save(scripted, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    torch.testing.assert_close(loaded(_x(1, 96)), model(_x(1, 96)), rtol=0, atol=0)  # other sizes, same graph


def test_fx_trace_of_classifier_and_backbone_equals_eager_with_gradients():
    model, x = _model().train(), _x().requires_grad_()
    gm = torch.fx.symbolic_trace(model)
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.coc_kernels.context_cluster]
    assert len(ops) == 4
    out = gm(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), [x, *model.parameters()])
    want = torch.autograd.grad(model(x).sum(), [x, *model.parameters()])
    for g, w in zip(grads, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    backbone = ContextCluster(ARCH).double().eval()
    feats = torch.fx.symbolic_trace(backbone)(_x())
    for f, w in zip(feats, backbone(_x())):
        torch.testing.assert_close(f, w, rtol=0, atol=0)


def test_jit_trace_records_the_operator():
    model, x = _model(), _x()
    traced = torch.jit.trace(model, x)
    assert len(_op_nodes(traced.inlined_graph)) == 4
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_the_operator_against_the_python_op():
    """Values, gradients (its backward recomputes through the op's autograd) and the fake kernel's shapes."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 8, 12, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(2, 6, 8, 12, dtype=torch.float64, generator=g, requires_grad=True)
    a = torch.tensor([1.3], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([-0.2], dtype=torch.float64, requires_grad=True)
    for denominator in ("similarity", "count"):
        y = torch.ops.coc_kernels.context_cluster(x, v, a, b, 2, [2, 3], [2, 2], "dense", denominator)
        want = context_cluster(x, v, a, b, heads=2, proposal=(2, 3), fold=2, impl="dense", denominator=denominator)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
        dy = torch.randn_like(y)
        for got, exp in zip(torch.autograd.grad(y, (x, v, a, b), dy), torch.autograd.grad(want, (x, v, a, b), dy)):
            torch.testing.assert_close(got, exp, rtol=0, atol=0)
    torch.library.opcheck(context_cluster_op, (x, v, a, b, 2, [2, 3], [2, 2], "light", "similarity"))
    with pytest.raises(ValueError, match="not divisible by fold"):  # the op's own checks
        torch.ops.coc_kernels.context_cluster(x, v, a, b, 2, [2, 2], [3, 3], "light", "similarity")


def test_meta_device_construction_and_forward_and_the_head_follows_the_model():
    model = ContextClusterClassifier(ARCH, num_classes=7, device="meta", dtype=torch.bfloat16)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert {t.dtype for t in model.parameters()} == {torch.bfloat16}
    out = model(torch.empty(1, 3, 64, 64, device="meta", dtype=torch.bfloat16))
    assert out.shape == (1, 7) and out.dtype == torch.bfloat16 and out.device.type == "meta"
    cpu = _model()
    cpu.to(torch.float32)
    cpu.reset_classifier(3)
    assert cpu.head.weight.dtype == torch.float32 and not cpu.head.training  # like the model: eval, float32
