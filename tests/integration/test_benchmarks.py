"""The benchmark and GPU-check scripts run end to end (tiny shapes on the CPU, Triton via the interpreter),
so that the one-shot GPU script does not rot between GPU sessions."""
import json
import os.path as osp
import sys

import pytest
from PIL import Image

from conftest import ROOT  # noqa: E402
sys.path.insert(0, ROOT)


def test_check_correctness_script_passes_on_tiny_shapes(tmp_path):
    from benchmarks import check_correctness
    md = tmp_path / "c.md"
    with pytest.raises(SystemExit) as e:
        check_correctness.main(["--size", "128", "160", "--arch", "small", "--stages", "2", "4", "--centres", "4",
                                "--batch", "1", "--md", str(md)])
    assert e.value.code == 0
    rows = [line for line in md.read_text().splitlines() if line.startswith("| float32") or line.startswith("| bf")]
    assert len(rows) == 4 and all(r.endswith("| yes |") for r in rows)


def test_tie_gap_tells_a_near_tie_from_a_wrong_assignment():
    """The correctness check forgives a disagreeing pixel only if the float64 reference similarity of the
    two centres is (nearly) equal; a wrong centre id has a large gap."""
    import torch
    from benchmarks.check_correctness import TIE, tie_gap
    from coc_kernels import cluster_assignment
    x, a, b = torch.randn(1, 8, 8, 8), torch.ones(1), torch.zeros(1)
    ref = cluster_assignment(x, a, b, heads=2, proposal=2, fold=2, impl="dense")
    assert tie_gap(x, a, b, 2, 2, 2, ref, ref) == 0.0
    wrong = ref.clone()
    wrong[0, 1, 5, 2] = (wrong[0, 1, 5, 2] + 1) % 4
    assert tie_gap(x, a, b, 2, 2, 2, wrong, ref) > 100 * TIE
    x[0, 4:, 4:, 4:] = x[0, 4:, 4:, 4:].mean((1, 2), keepdim=True)  # head 1, region (1, 1): all points equal
    ref = cluster_assignment(x, a, b, heads=2, proposal=2, fold=2, impl="dense")
    tied = ref.clone()
    tied[0, 1, 6, 6] = 3  # every centre of that region equals every point: an exact tie
    assert ref[0, 1, 6, 6] != 3 and tie_gap(x, a, b, 2, 2, 2, tied, ref) <= TIE


def test_backbone_benchmark_writes_tables(tmp_path):
    from benchmarks import bench_backbone
    bench_backbone.main(["--size", "64", "64", "--variants", "small-4", "--reps", "1", "--warmup", "0",
                         "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["dense", "light"] and all(r["ms"] > 0 for r in rows)
    assert "| small-4 | light |" in (tmp_path / "b.md").read_text()


def test_benchmark_chart(tmp_path):
    from benchmarks import bench_mixer
    out = tmp_path / "chart.png"
    bench_mixer.main(["--size", "64", "96", "--centres", "4", "--stages", "1", "2", "--impls", "dense", "light",
                      "--reps", "1", "--warmup", "0", "--plot", str(out), "--json", str(tmp_path / "r.json")])
    img = Image.open(out)
    assert img.size[0] >= 600 and img.size[1] >= 300


def test_mixer_benchmark_md_holds_its_table(tmp_path):
    """The report writer keeps the table, not only its title (the H100 file of 2026-11-26 lost two)."""
    from benchmarks import bench_mixer
    md = tmp_path / "m.md"
    bench_mixer.main(["--size", "64", "96", "--centres", "4", "--stages", "1", "2", "--impls", "dense", "light",
                      "--reps", "1", "--warmup", "0", "--md", str(md)])
    lines = md.read_text().splitlines()
    assert lines[0].startswith("Mixer benchmark on")
    rows = [line for line in lines if line.startswith("| small |")]
    assert len(rows) == 4 and {r.split("|")[4].strip() for r in rows} == {"dense", "light"}
    for r in rows:  # GB/s: x, value and y (3 maps of [1, 128, 16, 24] fp32 at stage 1) over the forward's time
        cells = [c.strip() for c in r.split("|")]
        numel = 128 * (64 // 4 // 2 ** (int(cells[2]) - 1)) * (96 // 4 // 2 ** (int(cells[2]) - 1))
        assert abs(float(cells[-2]) - 3 * numel * 4 / (float(cells[5]) * 1e-3) / 1e9) < 0.01 * float(cells[-2])


TINY_ARCH = dict(layers=[1, 1, 1, 1], embed_dims=[16, 16, 16, 16], mlp_ratios=[2] * 4, heads=[1] * 4, head_dim=[8] * 4)


def test_backbone_benchmark_compiled_variants_side_by_side(tmp_path):
    """The GPU table's variants (original eager and compiled, fused eager and compiled) run and land in one
    table with both ratios; compile captured with aot_eager (inductor's code generation is slow here)."""
    from benchmarks import bench_backbone
    with pytest.raises(ValueError, match=r"implementation 'triton\+fast'"):
        bench_backbone.parse_impl("triton+fast")
    bench_backbone.main(["--size", "32", "32", "--variants", "small-4", "--reps", "1", "--warmup", "0",
                         "--impls", "dense", "dense+compile", "light", "--backend", "aot_eager",
                         "--json", str(tmp_path / "b.json"), "--md", str(tmp_path / "b.md")])
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["dense", "dense+compile", "light"]
    assert all(r["ms"] > 0 and r["first_call_ms"] > 0 for r in rows)
    md = (tmp_path / "b.md").read_text()
    assert "| small-4 | dense+compile |" in md and "x time |" in md


def test_train_benchmark_runs_end_to_end(tmp_path):
    """bench_train.py end to end on a tiny backbone at 64x64: mmdet's Mask R-CNN built from the COCO config,
    synthetic batch, optimizer steps and batch-1 inference; the original eager and the fused mixer in the
    compiled backbone (the fused eager step is the DDP test's in test_mmdet_integration.py; torch.compile of a
    backbone module, the dense+compile branch, is test_backbone_benchmark_compiled_variants_side_by_side's)."""
    from benchmarks import bench_train
    cfg = osp.join(ROOT, "configs", "mask-rcnn_coc-small-25_fpn_1x_coco.py")
    bench_train.main(["--configs", cfg, "--impls", "dense", "triton+compile",
                      "--batch", "1", "--size", "64", "64", "--iters", "1", "--warmup", "1", "--infer-iters", "1",
                      "--backend", "aot_eager", "--cfg-options", f"model.backbone.arch={TINY_ARCH!r}",
                      "model.backbone.fold=[1, 1, 1, 1]", "model.backbone.proposal=2",
                      "model.neck.in_channels=[16, 16, 16, 16]",
                      "--json", str(tmp_path / "t.json"), "--md", str(tmp_path / "t.md")])
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["impl"] for r in rows] == ["dense", "triton+compile"]
    assert all(r["ms_per_iter"] > 0 and r["infer_img_per_s"] > 0 for r in rows)
    assert "| mask-rcnn_coc-small-25_fpn_1x_coco.py | triton+compile |" in (tmp_path / "t.md").read_text()


def test_flops_table_adds_the_mixer_to_what_mmengine_counts_anyway(tmp_path):
    """benchmarks/flops.py: the classifier's count is mmengine's count of everything else plus the mixers' formula
    (counted here by hand for tiny at 64x64: 2x2 centres, per pixel C*4 + C + 3*C)."""
    from benchmarks import flops
    from mmengine.analysis import FlopAnalyzer

    import torch
    from coc_det import ARCH_SETTINGS
    from coc_det.classifier import ContextClusterClassifier
    row = flops.main(["--archs", "tiny", "--det-size", "64", "64", "--md", str(tmp_path / "f.md")])[0]
    assert "| `tiny` |" in (tmp_path / "f.md").read_text()
    a = ARCH_SETTINGS["tiny"]
    mixers = sum(n * (224 // 2 ** (i + 2)) ** 2 * (h * d) * (4 + 1 + 3)
                 for i, (n, h, d) in enumerate(zip(a["layers"], a["heads"], a["head_dim"])))
    analysis = FlopAnalyzer(ContextClusterClassifier("tiny").eval(), (torch.randn(1, 3, 224, 224),))
    others = sum(v for k, v in analysis.by_operator().items() if k != "context_cluster")
    assert abs(row["cls_224"] * 1e9 - (others + mixers)) < 1
    assert row["det_4"] < row["det_25"] < row["det_49"]
