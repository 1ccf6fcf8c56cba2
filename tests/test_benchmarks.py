"""The benchmark and GPU-check scripts run end to end (tiny shapes on the CPU, Triton via the interpreter),
so that the one-shot GPU script does not rot between GPU sessions."""
import json
import os.path as osp
import sys

import pytest
from PIL import Image

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
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
    assert [r["impl"] for r in rows] == ["dense", "reference"] and all(r["ms"] > 0 for r in rows)
    assert "| small-4 | reference |" in (tmp_path / "b.md").read_text()


def test_benchmark_chart(tmp_path):
    from benchmarks import bench_mixer
    out = tmp_path / "chart.png"
    bench_mixer.main(["--size", "64", "96", "--centres", "4", "--stages", "1", "2", "--impls", "dense", "reference",
                      "--reps", "1", "--warmup", "0", "--plot", str(out), "--json", str(tmp_path / "r.json")])
    img = Image.open(out)
    assert img.size[0] >= 600 and img.size[1] >= 300
