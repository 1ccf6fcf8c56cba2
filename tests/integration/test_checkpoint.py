"""Checkpoint reading: nothing in a file runs (a real exploit file, through every loader, with and without
our code in the process), ``import coc_det`` allowlists nothing in torch.load, a checkpoint that does not fit
fails loudly, broken files are named, and the checkpoints our training writes load under torch's default."""
import argparse
import io
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from coc_det import ContextCluster
from coc_det.checkpoint import CheckpointError, read_checkpoint

from conftest import ROOT  # noqa: E402
EXPLOIT_KEY = "patch_embed.proj.weight"
TINY = dict(layers=[1, 1, 1, 1], embed_dims=[8, 16, 16, 16], mlp_ratios=[2] * 4, heads=[1] * 4, head_dim=[8] * 4)


class Payload:
    """Unpickling this touches a file: the proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _unicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def exploit_pickle(code: str) -> bytes:
    """The pickle of a "weights-only" checkpoint that runs ``code`` where ``getattr`` is allowlisted: a
    ``Namespace(shape=code)`` stands where a tensor belongs, then ``getattr(getattr, '__self__')`` (the builtins
    module) gets ``tuple`` replaced by ``exec``, so the next ``tuple(v.shape)`` runs the code."""
    glob = lambda mod, name: b"c" + f"{mod}\n{name}\n".encode()  # noqa: E731
    put, get = (lambda i: b"q" + bytes([i])), (lambda i: b"h" + bytes([i]))  # memo
    p = b"\x80\x02}"  # protocol 2, the checkpoint dict
    p += _unicode("state_dict") + b"}" + _unicode(EXPLOIT_KEY) + glob("argparse", "Namespace") + b")\x81"
    p += b"}" + _unicode("shape") + _unicode(code) + b"sb" + b"ss"  # Namespace(shape=code) built, stored
    p += _unicode("a") + glob("builtins", "getattr") + put(0) + b"s"
    p += _unicode("b") + get(0) + b"(" + get(0) + _unicode("__self__") + b"tR" + put(1) + b"s"  # builtins
    p += _unicode("c") + get(0) + b"(" + get(1) + _unicode("__dict__") + b"tR"  # builtins.__dict__ ...
    p += _unicode("tuple") + get(0) + b"(" + get(1) + _unicode("exec") + b"tR" + b"s" + b"s."  # ['tuple'] = exec
    return p


def write_exploit(path, marker) -> None:
    """A torch zip checkpoint whose data.pkl is :func:`exploit_pickle` creating the file ``marker``."""
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = exploit_pickle(f"open({str(marker)!r}, 'w').close()")
            out.writestr(info.filename, data)


def _python(code: str, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_the_exploit_file_is_real(tmp_path):
    """Control: where ``getattr`` is allowlisted (as coc_det used to do on import) the file runs its code."""
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    write_exploit(path, marker)
    proc = _python(f"""
import argparse, torch
torch.serialization.add_safe_globals([getattr, argparse.Namespace])
ck = torch.load({str(path)!r})
try:
    tuple(ck['state_dict'][{EXPLOIT_KEY!r}].shape)
except TypeError:
    pass
""")
    assert marker.exists(), proc.stderr[-2000:]


def test_import_coc_det_allowlists_nothing():
    """``import coc_det`` (and its hooks, timm and mmdet registrations) adds nothing of ours to torch's
    process-wide safe globals: what appears meanwhile are torch's own classes of lazily imported torch
    modules (DTensor...), never a callable that is not a class, and nothing from numpy/mmengine/builtins."""
    proc = _python("""
import torch
before = list(torch.serialization.get_safe_globals())
import coc_det, coc_det.hooks, coc_det.classifier
from coc_det.backbone import ContextCluster
added = [g for g in torch.serialization.get_safe_globals() if not any(g is b for b in before)]
for g in added:
    obj = g[0] if isinstance(g, tuple) else g
    print('ADDED', getattr(obj, '__module__', '?'), getattr(obj, '__qualname__', repr(obj)), isinstance(obj, type))
print('DONE')
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    added = [line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("ADDED")]
    assert "DONE" in proc.stdout
    assert all(mod.startswith("torch.") and is_class == "True" for mod, _, is_class in added), added


LOADERS = {  # every way into a checkpoint in a process that imported coc_det (one interpreter, in this order)
    "torch.load": "torch.load(P)",
    "read_checkpoint": "read_checkpoint(P)",
    "load_pretrained": "ContextCluster(TINY).load_pretrained(P)",
    "init_cfg": "ContextCluster(TINY, init_cfg=dict(type='Pretrained', checkpoint=P)).init_weights()",
    "classifier": "load_classifier_checkpoint(create_classifier('coc_tiny'), P)",
    # last: a user's own allowlist of a plain class stays as it was, and does not open the file either
    "user_allowlist_kept": "torch.serialization.add_safe_globals([argparse.Namespace]); read_checkpoint(P)",
}


def test_exploit_never_runs_in_a_process_that_imported_coc_det(tmp_path):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    write_exploit(path, marker)
    calls = "".join(f"""
try:
    {call}
    print({how!r}, 'LOADED')
except (CheckpointError, pickle.UnpicklingError) as err:
    print({how!r}, 'REFUSED', type(err).__name__, str(err).splitlines()[0][:300].replace(' ', '_'))
print({how!r}, 'TUPLE', builtins.__dict__['tuple'] is type((1,)), 'MARKER', os.path.exists(P_MARK),
      'NAMESPACE', argparse.Namespace in torch.serialization.get_safe_globals())
""" for how, call in LOADERS.items())
    proc = _python(f"""
import argparse, builtins, os, pickle, torch
import coc_det
from coc_det import ContextCluster
from coc_det.checkpoint import CheckpointError, read_checkpoint
from coc_det.classifier import create_classifier, load_classifier_checkpoint
P, P_MARK, TINY = {str(path)!r}, {str(marker)!r}, {TINY!r}
""" + calls)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = {line.split()[0].strip("'"): line for line in proc.stdout.splitlines() if "TUPLE" in line}
    refused = {line.split()[0].strip("'"): line for line in proc.stdout.splitlines() if "REFUSED" in line}
    assert sorted(out) == sorted(LOADERS) and sorted(refused) == sorted(LOADERS), proc.stdout
    for how in LOADERS:
        assert "TUPLE True MARKER False" in out[how], (how, proc.stdout)
        assert ("NAMESPACE True" if how == "user_allowlist_kept" else "NAMESPACE False") in out[how]
        if how != "torch.load":
            assert "getattr" in refused[how]  # named in our message
    assert not marker.exists()


def test_exploit_never_runs_through_mmdets_init_detector(tmp_path):
    """The same file given to mmdet's own loader (``init_detector``) with our config, which imports coc_det."""
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    write_exploit(path, marker)
    cfg = os.path.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")
    proc = _python(f"""
import builtins
from mmdet.apis import init_detector
try:
    init_detector({cfg!r}, {str(path)!r}, device='cpu')
except Exception as err:
    print('REFUSED', type(err).__name__)
print('TUPLE', builtins.__dict__['tuple'] is type((1,)))
""", cwd=str(tmp_path))
    assert "REFUSED" in proc.stdout and "TUPLE True" in proc.stdout, proc.stdout + proc.stderr[-3000:]
    assert not marker.exists()


def test_exploit_never_runs_through_the_tools(tmp_path):
    marker, path = tmp_path / "PWNED", tmp_path / "evil.pth"
    write_exploit(path, marker)
    demo = os.path.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")
    for cmd in (["tools/test.py", demo, str(path), "--work-dir", str(tmp_path / "w")],
                ["tools/publish_model.py", str(path), str(tmp_path / "out.pth")],
                ["tools/visualize_clusters.py", os.path.join(ROOT, "tests", "data", "shapes.png"), "--config", demo,
                 "--checkpoint", str(path), "--out", str(tmp_path / "v.png")]):
        proc = subprocess.run([sys.executable, os.path.join(ROOT, cmd[0]), *cmd[1:]], capture_output=True, text=True,
                              timeout=300, cwd=str(tmp_path))
        assert proc.returncode != 0 and "holds objects other than weights" in proc.stderr, (cmd, proc.stderr[-2000:])
        assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pth"]  # no work dir, no output


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
    with pytest.raises(err, match=str(path)) as caught:
        read_checkpoint(str(path))
    assert "weights_only=False" not in str(caught.value)  # never suggested for a file that is no checkpoint


def test_random_bytes_are_not_a_checkpoint_and_get_no_unpickling_advice(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(CheckpointError, match="is not a torch checkpoint") as caught:
        read_checkpoint(str(path))
    assert "weights_only=False" not in str(caught.value) and "objects other than weights" not in str(caught.value)


@pytest.mark.parametrize("content, msg", [
    ({"state_dict": {"patch_embed.proj.weight": 3}}, "holds a int under 'patch_embed.proj.weight' where a tensor"),
    ({"state_dict": {7: torch.ones(1)}}, "has a key 7 of type int"),
    ([torch.ones(1)], "must be a dict of tensors, got list"),
])
def test_checkpoint_of_other_values_is_named(tmp_path, content, msg):
    path = tmp_path / "odd.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=msg):
        ContextCluster(TINY).load_pretrained(str(path))


def test_folder_as_checkpoint_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        read_checkpoint(str(tmp_path))


def test_timm_training_checkpoint_reads_and_leaves_no_allowlist(tmp_path):
    """The public ImageNet checkpoints hold timm's ``argparse.Namespace`` of training arguments: our loader
    reads it for its own call only."""
    path = tmp_path / "coc_tiny.pth.tar"
    torch.save({"state_dict": ContextCluster(TINY).state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 3},
               path)
    ck = read_checkpoint(str(path))
    assert ck["args"].lr == 1e-3 and ck["epoch"] == 3
    assert argparse.Namespace not in torch.serialization.get_safe_globals()
    ContextCluster(TINY).load_pretrained(str(path))


def test_saved_checkpoints_load_under_torchs_default_and_resume_their_history(tmp_path):
    """WeightsOnlyCheckpointHook: what mmengine pickles next to the weights (message hub: HistoryBuffer of numpy
    values, numpy scalars) is stored as tensors / plain values, read back by a bare ``torch.load`` in an
    interpreter that imports nothing of ours, and turned back into equal HistoryBuffers on load (--resume)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    from coc_det.hooks import WeightsOnlyCheckpointHook
    buf = HistoryBuffer()
    for v in (np.float64(1.5), 2.0, 4.25):
        buf.update(v)
    raw = {"meta": {"epoch": 1, "seed": np.int64(7), "dataset_meta": {"palette": np.array([[1, 2, 3]])}},
           "state_dict": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
           "message_hub": {"log_scalars": {"train/loss": buf}, "runtime_info": {"iter": np.int64(3)},
                           "resumed_keys": {"train/loss": True, "iter": True}}}
    path = tmp_path / "epoch_1.pth"
    with pytest.raises(Exception, match="HistoryBuffer|numpy"):  # what the hook is for
        torch.save(raw, path)
        torch.load(path)
    hook = WeightsOnlyCheckpointHook()
    hook.before_save_checkpoint(None, raw)
    torch.save(raw, path)
    proc = _python(f"""
import sys, torch
ck = torch.load({str(path)!r})
assert 'coc_det' not in sys.modules and 'mmengine' not in sys.modules
print(ck['meta']['seed'], ck['message_hub']['runtime_info']['iter'], ck['state_dict']['w'].tolist())
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["7", "3", "[1.0,", "1.0]"]
    loaded = torch.load(path)
    hook.after_load_checkpoint(None, loaded)
    back = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(back, HistoryBuffer) and back.max_length == buf.max_length
    for got, want in zip(back.data, buf.data):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert back.mean() == buf.mean() == 2.5833333333333335
