"""No tool deletes or overwrites a user's file: the demo never touches dataset folders it did not make, the
exporter never writes over its inputs (and leaves --out as it was when it fails), the publisher's temporary
file is never an input."""
import json
import os
import os.path as osp
import sys

import pytest
import torch

from conftest import ROOT  # noqa: E402
sys.path.insert(0, osp.join(ROOT, "tools"))


def _tree(root):
    """``{relative path: bytes}`` of every file under root."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = osp.join(d, f)
            out[osp.relpath(p, root)] = open(p, "rb").read()
    return out


# ------------------------------------------------------------------------------------ the demo's data
@pytest.mark.parametrize("layout,files", [
    ("coco", {"annotations/instances_val2017.json": b"{}", "train/000.jpg": b"jpeg", "val/001.jpg": b"jpeg"}),
    ("ade", {"annotations/training/a.png": b"png", "images/training/a.jpg": b"jpeg"}),
])
def test_run_demo_leaves_a_dataset_it_did_not_make_untouched(tmp_path, layout, files):
    """A real COCO / ADE20K folder as --data: the demo refuses (naming the folders), and every file stays."""
    import make_demo_data
    import run_demo
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    before = _tree(tmp_path)
    assert make_demo_data.dataset_state(str(tmp_path), layout) == "foreign"
    with pytest.raises(SystemExit, match="did not make"):
        run_demo.ensure_demo_data(str(tmp_path), layout)
    with pytest.raises(SystemExit):  # even when told to replace a dataset: it is not the tool's own
        make_demo_data.main(["--layout", layout, "--out", str(tmp_path), "--force", "--train", "1", "--val", "1"])
    assert _tree(tmp_path) == before


def test_demo_data_replaces_only_its_own_sets(tmp_path):
    """Its own set, interrupted (the marker says incomplete), is replaced; the other layout's set is not."""
    import make_demo_data
    out = str(tmp_path / "d")
    make_demo_data.main(["--out", out, "--train", "2", "--val", "1"])
    assert make_demo_data.dataset_state(out, "coco") == "complete"
    assert json.load(open(osp.join(out, make_demo_data.MARKER))) == {"layout": "coco", "complete": True}
    assert make_demo_data.dataset_state(out, "ade") == "foreign"  # annotations/ is the coco set's
    with pytest.raises(SystemExit):
        make_demo_data.main(["--layout", "ade", "--out", out, "--force", "--train", "1", "--val", "1"])
    make_demo_data._mark(out, "coco", complete=False)  # as an interrupted generation leaves it
    assert make_demo_data.dataset_state(out, "coco") == "partial"
    make_demo_data.main(["--out", out, "--force", "--train", "1", "--val", "1"])
    assert sorted(os.listdir(osp.join(out, "train"))) == ["train_00000.png"]


def test_run_demo_resolves_relative_paths_where_it_was_run(tmp_path, monkeypatch):
    import run_demo
    seen = {}

    def stop(data, layout):
        seen["data"] = data
        raise SystemExit(0)

    monkeypatch.setattr(run_demo, "ensure_demo_data", stop)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        run_demo.main(["--data", "mydata", "--work-dir", "wd"])
    assert seen["data"] == str(tmp_path / "mydata")
    (tmp_path / "afile").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        run_demo.main(["--work-dir", "afile"])
    assert err.value.code == 2


# ------------------------------------------------------------------------------------ export_onnx
def _tiny_onnx(path, opset=18):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["y"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)


@pytest.fixture
def fake_export(monkeypatch):
    """export_onnx with the model build and the export itself replaced (a one-node ONNX file): what is
    tested is what the tool does with its files."""
    import export_onnx
    model = torch.nn.Identity()
    monkeypatch.setattr(export_onnx, "build", lambda target, ckpt: (model, 8, ["y"], "bb"))
    written = {"opset": 18}
    monkeypatch.setattr(export_onnx, "export", lambda m, d, out, side, names, optimize, opset:
                        _tiny_onnx(out, written["opset"]) or 0.1)
    return export_onnx, written


def test_export_refuses_to_write_over_its_checkpoint(tmp_path, fake_export):
    export_onnx, _ = fake_export
    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"weights")
    for out in (ckpt, tmp_path / "." / "ckpt.pth"):
        with pytest.raises(SystemExit) as err:
            export_onnx.main(["small", "--checkpoint", str(ckpt), "--out", str(out)])
        assert err.value.code == 2
    assert _tree(tmp_path) == {"ckpt.pth": b"weights"}


@pytest.mark.parametrize("failure", ["nan", "error", "opset"])
def test_a_failed_export_leaves_out_as_it_was(tmp_path, fake_export, monkeypatch, capsys, failure):
    """Non-finite outputs, too large an error, or another opset than asked for: rc 1, an existing --out
    untouched, no temporary file left."""
    export_onnx, written = fake_export
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the user's earlier export")
    if failure == "opset":
        written["opset"] = 19
    err = {"nan": float("inf"), "error": 1e-2, "opset": 0.0}[failure]
    monkeypatch.setattr(export_onnx, "verify", lambda m, p, shapes, repeat: [(s, err, 1.0, 1.0) for s in shapes])
    assert export_onnx.main(["small", "--out", str(out), "--shape", "16", "16"]) == 1
    assert _tree(tmp_path) == {"model.onnx": b"the user's earlier export"}
    assert "FAILED" in capsys.readouterr().err


def test_a_verified_export_replaces_out_and_says_so(tmp_path, fake_export, monkeypatch, capsys):
    export_onnx, _ = fake_export
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    monkeypatch.setattr(export_onnx, "verify", lambda m, p, shapes, repeat: [(s, 0.0, 1.0, 1.0) for s in shapes])
    assert export_onnx.main(["small", "--out", str(out), "--shape", "16", "16"]) == 0
    assert "replaced" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"] and out.read_bytes() != b"old"


def test_non_finite_outputs_are_never_a_small_error():
    from export_onnx import relative_error
    ref = torch.ones(3)
    assert relative_error(ref.clone(), ref) == 0.0
    for bad in (float("nan"), float("inf")):
        got = ref.clone()
        got[1] = bad
        assert relative_error(got, ref) == float("inf") and relative_error(ref, got) == float("inf")
    assert relative_error(torch.full((3,), float("nan")), ref) == float("inf")


@pytest.mark.parametrize("args,msg", [
    (["--shape", "8", "16"], "at least 16"),  # one block on an axis: torch.export would fix it
    (["--shape", "0", "0"], "must be positive"), (["--shape", "-32", "-32"], "must be positive"),
    (["--verify-shape", "33", "33"], "multiples of 8"), (["--verify-shape", "0", "0"], "must be positive"),
    (["--repeat", "0"], "--repeat must be at least 1"), (["--opset", "9"], "opset 18 or newer"),
    (["--opset", "17"], "opset 18 or newer"),
])
def test_export_arguments_are_checked_before_the_export(tmp_path, fake_export, capsys, args, msg):
    export_onnx, _ = fake_export
    with pytest.raises(SystemExit) as err:
        export_onnx.main(["small", "--out", str(tmp_path / "m.onnx"), *args])
    assert msg in str(err.value.code) + capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_export_out_a_folder_or_unwritable(tmp_path, fake_export, capsys):
    export_onnx, _ = fake_export
    with pytest.raises(SystemExit) as err:
        export_onnx.main(["small", "--out", str(tmp_path)])
    assert err.value.code == 2 and "is a folder" in capsys.readouterr().err
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            return  # root writes anywhere: the check cannot be seen here
        with pytest.raises(SystemExit, match="cannot write"):
            export_onnx.main(["small", "--out", str(locked / "m.onnx")])
    finally:
        locked.chmod(0o700)


# ------------------------------------------------------------------------------------ publish_model
def test_publish_model_never_uses_an_input_as_its_temporary_file(tmp_path):
    """``publish_model.py x.tmp.pth x.pth``: the earlier temporary name was ``x.tmp.pth``, the input itself,
    deleted at the end."""
    import publish_model
    src = tmp_path / "x.tmp.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "meta": {}, "optimizer": {}}, src)
    before = src.read_bytes()
    final = publish_model.main([str(src), str(tmp_path / "x.pth")])
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == sorted(["x.tmp.pth", osp.basename(final)])


def test_publish_model_out_a_folder(tmp_path, capsys):
    import publish_model
    src = tmp_path / "c.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {}}, src)
    (tmp_path / "dir").mkdir()
    for out in (tmp_path / "dir", str(tmp_path / "dir") + "/"):
        with pytest.raises(SystemExit) as err:
            publish_model.main([str(src), str(out)])
        assert err.value.code == 2 and "is a folder" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["c.pth", "dir"] and os.listdir(tmp_path / "dir") == []


def test_export_names_a_checkpoint_of_another_arch_in_one_line(tmp_path):
    import export_onnx
    from coc_det import ContextCluster
    ckpt = tmp_path / "small.pth"
    torch.save({"state_dict": ContextCluster("small").state_dict()}, ckpt)
    with pytest.raises(SystemExit, match="cannot be loaded into tiny: .*does not fit"):
        export_onnx.main(["tiny", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m.onnx")])
    assert sorted(os.listdir(tmp_path)) == ["small.pth"]
