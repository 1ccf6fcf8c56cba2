"""ONNX export: the export formulation of the mixer against the dense oracle (float64), and
``tools/export_onnx.py`` on a small backbone: standard ops only, a graph that does not grow with the batch or
the heads, symbolic batch / height / width, and onnxruntime equal to torch at sizes other than the traced one."""
import os.path as osp
import sys

import pytest
import torch
import torch.nn.functional as F

from coc_det import ContextCluster
from coc_kernels import context_cluster
from coc_kernels.reference import adaptive_avg_pool_matmul, context_cluster_dense, context_cluster_export

from conftest import ROOT  # noqa: E402
sys.path.insert(0, osp.join(ROOT, "tools"))

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

#: a two-stage model small enough to export in seconds: regions of 4x4 (fold 2) then the whole map
SMALL = dict(layers=[1, 1], embed_dims=[16, 32], mlp_ratios=[2, 2], heads=[2, 4], head_dim=[8, 8],
             proposals=(2, 3), folds=(2, 1))


@pytest.mark.parametrize("n,out", [(13, 4), (22, 6), (7, 7), (5, 1), (9, 2)])
def test_pool_as_matmul_is_adaptive_avg_pool(n, out):
    t = torch.randn(2, 3, n, n + 3, dtype=torch.float64)
    torch.testing.assert_close(adaptive_avg_pool_matmul(t, (out, out)), F.adaptive_avg_pool2d(t, (out, out)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("denominator", ["similarity", "count"])
@pytest.mark.parametrize("B,heads,H,W,proposal,fold", [
    (2, 2, 12, 18, (2, 3), (2, 3)),  # regions 6x6, overlapping-free windows
    (1, 3, 10, 14, (3, 2), (2, 2)),  # regions 5x7: overlapping adaptive windows
    (3, 1, 8, 8, (2, 2), (1, 1)),
])
def test_export_math_equals_the_dense_oracle(B, heads, H, W, proposal, fold, denominator):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, heads * 5, H, W, generator=g, dtype=torch.float64)
    v = torch.randn(B, heads * 3, H, W, generator=g, dtype=torch.float64)
    a, b = torch.tensor([1.7], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64)
    kw = dict(heads=heads, proposal=proposal, fold=fold, denominator=denominator)
    torch.testing.assert_close(context_cluster_export(x, v, a, b, **kw), context_cluster_dense(x, v, a, b, **kw),
                               rtol=1e-9, atol=1e-9)


def test_the_op_records_the_export_math_inside_onnx_export(monkeypatch):
    """Inside torch.onnx.export the op computes context_cluster_export whatever impl says (also 'triton' on the
    CPU, which would otherwise refuse): planted as a marker, it is what runs."""
    import coc_kernels.functional as functional
    calls = []
    monkeypatch.setattr(functional, "context_cluster_export", lambda *a, **k: calls.append(1) or a[1])
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    x = torch.randn(1, 4, 4, 4)
    for impl in ("auto", "reference", "dense", "triton"):
        context_cluster(x, x, torch.ones(1), torch.zeros(1), heads=2, proposal=2, fold=1, impl=impl)
    assert len(calls) == 4


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The tool's command line on the small backbone (its builder replaced): export, verify, print the table."""
    import contextlib
    import io

    import export_onnx
    torch.manual_seed(0)
    model = ContextCluster(SMALL, out_indices=(0, 1)).eval()
    path = str(tmp_path_factory.mktemp("onnx") / "small.onnx")
    text = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(text):
        mp.setattr(export_onnx, "build", lambda target, ckpt: (model, model.size_divisor, ["feat0", "feat1"], "bb"))
        rc = export_onnx.main(["small", "--out", path, "--shape", "16", "24", "--no-optimize", "--repeat", "1"])
    return model, path, rc, text.getvalue()


def test_cli_exports_verifies_and_prints_the_table(exported):
    import export_onnx
    _, path, rc, text = exported
    assert rc == 0 and osp.isfile(path), text
    assert "onnxruntime equals torch" in text and "| 2x3x16x24 |" in text and "| 1x3x24x40 |" in text, text
    with pytest.raises(SystemExit, match="multiples of 32"):  # the real small arch, before any export
        export_onnx.main(["small", "--out", path, "--shape", "12", "16"])


def test_exported_graph_is_standard_ops_and_does_not_unroll(exported):
    """Only the default ONNX domain; no op count that grows with the batch or the heads (the chunked light
    path unrolls a loop over images x heads: tens of thousands of nodes for a real model)."""
    path = exported[1]
    graph = onnx.load(path).graph
    onnx.checker.check_model(onnx.load(path))
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}
    ops = {n.op_type for n in graph.node}
    assert {"ArgMax", "ScatterElements", "GatherElements", "MatMul", "Conv"} <= ops, ops
    assert not ops & {"Loop", "If", "Scan"}
    argmax = sum(n.op_type == "ArgMax" for n in graph.node)
    assert argmax == 2, argmax  # one assignment per mixer, for every image and head at once
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]  # batch, H, W symbolic


def test_onnxruntime_equals_torch_at_other_sizes(exported):
    """Traced at batch 2, 16x24: run at other batches and sizes (multiples of the size divisor 8)."""
    import export_onnx
    model, path = exported[:2]
    rows = export_onnx.verify(model, path, [(2, 3, 16, 24), (1, 3, 40, 16), (3, 3, 8, 32)], repeat=1)
    for shape, err, _, _ in rows:
        assert err <= export_onnx.RTOL, (shape, err)




def test_mmseg_upsample_becomes_a_symbolic_one_with_the_same_output(tmp_path):
    """mmseg's Upsample(scale_factor=2) sizes its output with int(): traced, the example's size is a constant
    and the segmentor's logits are wrong at every other size. The tool swaps it for nn.Upsample: equal in torch,
    and right in onnxruntime at a size other than the traced one."""
    import copy

    import export_onnx
    from mmseg.models.utils import Upsample
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Upsample(scale_factor=2, mode="bilinear",
                                                                   align_corners=False)).eval()
    original = copy.deepcopy(model)
    assert export_onnx._scale_upsampling(model) == 1 and isinstance(model[1], torch.nn.Upsample)
    path = str(tmp_path / "up.onnx")
    export_onnx.export(model, 8, path, (16, 24), ["y"], optimize=False)
    x = torch.randn(1, 3, 40, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), original(x), rtol=0, atol=0)
    rows = export_onnx.verify(original, path, [(1, 3, 40, 16), (2, 3, 8, 32)], repeat=1)
    assert all(err <= export_onnx.RTOL for _, err, _, _ in rows), rows
