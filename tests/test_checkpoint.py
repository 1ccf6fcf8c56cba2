"""Checkpoint reading: nothing in a file runs, a checkpoint that does not fit fails loudly, broken files are
named, and mmengine's own checkpoints load under torch's weights-only default wherever coc_det is imported."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from coc_det import ContextCluster
from coc_det.checkpoint import CheckpointError, read_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 16, 16], mlp_ratios=[2] * 4, heads=[1] * 4, head_dim=[8] * 4)


class Payload:
    """Unpickling this touches a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hostile_checkpoint_is_refused_and_its_payload_never_runs(tmp_path):
    marker = tmp_path / "PWNED"
    model = ContextCluster(TINY)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": model.state_dict(), "x": Payload(str(marker))}, path)
    with pytest.raises(CheckpointError, match="holds objects other than weights"):
        model.load_pretrained(str(path))
    with pytest.raises(CheckpointError):
        ContextCluster(TINY, init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()
    assert not marker.exists()


def test_hostile_checkpoint_through_the_visualizer_cli(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": Payload(str(marker))}, path)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "visualize_clusters.py"),
                           os.path.join(ROOT, "tests", "data", "shapes.png"), "--checkpoint", str(path), "--config",
                           os.path.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py"),
                           "--out", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "holds objects other than weights" in proc.stderr
    assert not marker.exists() and not (tmp_path / "out.png").exists()


def test_checkpoint_that_matches_nothing_fails_loudly(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, path)
    model = ContextCluster(TINY)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="weights are missing") as err:
        model.load_pretrained(str(path))
    assert "conv1.weight" in str(err.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left unchanged
    with pytest.raises(CheckpointError):
        ContextCluster(TINY, init_cfg=dict(type="Pretrained", checkpoint=str(path))).init_weights()


def test_checkpoint_of_another_arch_names_the_shapes(tmp_path):
    path = tmp_path / "small.pth"
    torch.save(ContextCluster("small").state_dict(), path)
    with pytest.raises(CheckpointError, match="weights are missing"):  # medium has more blocks
        ContextCluster("medium").load_pretrained(str(path))
    wider = dict(TINY, embed_dims=[8, 16, 16, 32])
    torch.save(ContextCluster(TINY).state_dict(), path)
    with pytest.raises(CheckpointError, match="differ in shape") as err:
        ContextCluster(wider).load_pretrained(str(path))
    assert "checkpoint (16,) vs model (32,)" in str(err.value)


@pytest.mark.parametrize("damage", ["truncated", "not_torch", "missing"])
def test_broken_files_are_named(tmp_path, damage):
    path = tmp_path / "ckpt.pth"
    if damage != "missing":
        torch.save(ContextCluster(TINY).state_dict(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello, not a checkpoint")
    err = FileNotFoundError if damage == "missing" else CheckpointError
    with pytest.raises(err, match=str(path)):
        read_checkpoint(str(path))


def test_mmengine_checkpoint_loads_weights_only_after_importing_coc_det(tmp_path):
    """What mmengine 0.10 pickles next to the weights (message hub: HistoryBuffer of numpy values, numpy
    scalars) loads with plain ``torch.load`` (weights_only by default) in a fresh interpreter that only
    imported coc_det, as mmdet's init_detector does; a stray object still does not."""
    from mmengine.logging.history_buffer import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(np.float64(1.5))
    buf.update(2.0)
    path = tmp_path / "mm.pth"
    torch.save({"meta": {"epoch": 1, "mmengine_version": "0.10.7"}, "state_dict": {"w": torch.ones(2)},
                "message_hub": {"log_scalars": {"train/loss": buf}, "runtime_info": {"iter": np.int64(3)}}}, path)
    code = ("import torch, coc_det; ck = torch.load({p!r}); "
            "print(ck['message_hub']['log_scalars']['train/loss'].mean())").format(p=str(path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "1.75"
    bare = subprocess.run([sys.executable, "-c", code.replace(", coc_det", "")], capture_output=True, text=True,
                          timeout=120)
    assert bare.returncode != 0 and "HistoryBuffer" in bare.stderr  # what the allowlist fixes
