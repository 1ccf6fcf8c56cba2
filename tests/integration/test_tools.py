"""The command-line tools refuse bad arguments with a clear message, a non-zero exit and no partial output."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
import torch

from conftest import ROOT  # noqa: E402
TOOLS = osp.join(ROOT, "tools")
DEMO = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")
IMAGE = osp.join(ROOT, "tests", "data", "shapes.png")
sys.path.insert(0, TOOLS)


def run(tool, *args, timeout=300):
    return subprocess.run([sys.executable, osp.join(TOOLS, tool), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------ make_demo_data
def test_make_demo_data_refuses_to_overwrite_and_force_leaves_no_stale_images(tmp_path):
    import make_demo_data
    out = tmp_path / "d"
    make_demo_data.main(["--out", str(out), "--train", "3", "--val", "2"])
    with pytest.raises(SystemExit) as err:
        make_demo_data.main(["--out", str(out), "--train", "1", "--val", "1"])
    assert err.value.code != 0
    assert len(os.listdir(out / "train")) == 3  # untouched
    make_demo_data.main(["--out", str(out), "--train", "1", "--val", "1", "--force"])
    assert sorted(os.listdir(out / "train")) == ["train_00000.png"]
    ann = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert [im["file_name"] for im in ann["images"]] == ["train_00000.png"]


@pytest.mark.parametrize("args,msg", [(["--train", "-5"], "--train must be at least 1"),
                                      (["--val", "0"], "--val must be at least 1"),
                                      (["--size", "0"], "positive multiple of 32"),
                                      (["--size", "100"], "positive multiple of 32")])
def test_make_demo_data_bad_counts(tmp_path, args, msg):
    proc = run("make_demo_data.py", "--out", tmp_path / "d", *args)
    assert proc.returncode != 0 and msg in proc.stderr
    assert not (tmp_path / "d").exists()


# ------------------------------------------------------------------------------------ visualize_clusters
@pytest.mark.parametrize("args,msg", [(["--head", "7"], "has heads 0..1"), (["--head", "-1"], "has heads 0..1"),
                                      (["--size", "0"], "--size 0"), (["--stage", "4"], "no block"),
                                      (["--size", "100000"], "at most 4096"),
                                      (["--checkpoint", "missing.pth"], "does not exist")])
def test_visualize_clusters_bad_arguments(tmp_path, args, msg):
    out = tmp_path / "c.png"
    proc = run("visualize_clusters.py", IMAGE, "--config", DEMO, "--out", out, *args)
    assert proc.returncode != 0 and msg in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


# ------------------------------------------------------------------------------------ plot_log
def _scalars(path, records, truncated=""):
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + truncated)


def test_plot_log_joins_a_resumed_run_and_skips_a_truncated_line(tmp_path, capsys):
    import plot_log
    work = tmp_path / "work"
    first = [{"loss": 1.0 / i, "iter": i, "step": i} for i in range(1, 9)]  # killed during iteration 9
    _scalars(work / "20261126_100000" / "vis_data" / "scalars.json", first, truncated='{"loss": 0.1, "it')
    val = [{"coco/bbox_mAP": 0.5, "step": 1}]
    second = [{"loss": 0.5 / i, "iter": i, "step": i} for i in range(5, 13)]  # resumed from epoch 1 (iter 4)
    _scalars(work / "20261126_110000" / "vis_data" / "scalars.json", second + val)
    paths = plot_log.find_scalars(str(work))
    assert [osp.basename(osp.dirname(osp.dirname(p))) for p in paths] == ["20261126_100000", "20261126_110000"]
    train, got_val = plot_log.read_scalars(paths)
    assert [r["iter"] for r in train] == list(range(1, 13))
    assert [r["loss"] for r in train] == [1.0 / i for i in range(1, 5)] + [0.5 / i for i in range(5, 13)]
    assert got_val == val
    assert "incomplete last line" in capsys.readouterr().err
    plot_log.main([str(work), "--out", str(tmp_path / "c.png")])
    assert (tmp_path / "c.png").exists()


def test_plot_log_broken_middle_line_and_missing_dir(tmp_path):
    path = tmp_path / "run" / "vis_data" / "scalars.json"
    _scalars(path, [{"loss": 1.0, "iter": 1}])
    path.write_text(path.read_text() + "garbage\n" + json.dumps({"loss": 0.5, "iter": 2}) + "\n")
    proc = run("plot_log.py", tmp_path, "--out", tmp_path / "c.png")
    assert proc.returncode != 0 and "scalars.json:2 is not a JSON record" in proc.stderr
    proc = run("plot_log.py", tmp_path / "nothing", "--out", tmp_path / "c.png")
    assert proc.returncode != 0 and "neither a work dir" in proc.stderr
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("line", ["[1, 2]", "3", '"loss"'])
def test_plot_log_names_a_line_that_is_not_a_record(tmp_path, capsys, line):
    import plot_log
    path = tmp_path / "run" / "vis_data" / "scalars.json"
    _scalars(path, [{"loss": 1.0, "iter": 1}])
    path.write_text(path.read_text() + line + "\n" + json.dumps({"loss": 0.5, "iter": 2}) + "\n")
    with pytest.raises(SystemExit) as err:
        plot_log.main([str(tmp_path / "run"), "--out", str(tmp_path / "c.png")])
    assert err.value.code == 2 and "scalars.json:2 is a JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:  # --out in a missing folder: before reading anything
        plot_log.main([str(tmp_path / "run"), "--out", str(tmp_path / "nope" / "c.png")])
    assert err.value.code == 2 and "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()


# ------------------------------------------------------------------------------------ train.py
def test_train_py_names_bad_options_a_file_work_dir_and_a_broken_resume(tmp_path, capsys):
    """In one line, before anything is built: a ``--cfg-options`` item without ``=``, a ``--work-dir`` that is a
    file, and a latest checkpoint that is empty or truncated (a run killed while saving: the newest intact
    checkpoint is offered)."""
    import train
    with pytest.raises(SystemExit) as err:
        train.main([DEMO, "--cfg-options", "garbage"])
    assert err.value.code == 2 and "takes key=value pairs" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit, match="is a file, not a folder"):
        train.main([DEMO, "--work-dir", str(tmp_path / "afile")])
    work = tmp_path / "work"
    work.mkdir()
    torch.save({"state_dict": {"w": torch.ones(1)}}, work / "epoch_1.pth")
    for broken in (b"", (work / "epoch_1.pth").read_bytes()[:300]):
        (work / "epoch_2.pth").write_bytes(broken)
        (work / "last_checkpoint").write_text(str(work / "epoch_2.pth"))
        with pytest.raises(SystemExit, match=r"epoch_2.pth, (is empty|is truncated).*--resume .*epoch_1.pth"):
            train.main([DEMO, "--work-dir", str(work), "--resume"])
        with pytest.raises(SystemExit, match="epoch_2.pth, (is empty|is truncated)"):
            train.main([DEMO, "--work-dir", str(work), "--resume", str(work / "epoch_2.pth")])
    assert sorted(os.listdir(work)) == ["epoch_1.pth", "epoch_2.pth", "last_checkpoint"]


# ------------------------------------------------------------------------------------ test.py
@pytest.mark.parametrize("case", ["bad_out", "truncated", "missing", "hostile"])
def test_test_py_checks_arguments_before_building_anything(tmp_path, case):
    from coc_det import ContextCluster
    ckpt = tmp_path / "c.pth"
    torch.save({"state_dict": ContextCluster("tiny").state_dict()}, ckpt)
    out = "r.json" if case == "bad_out" else "r.pkl"
    if case == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:1000])
    elif case == "missing":
        ckpt = tmp_path / "nope.pth"
    elif case == "hostile":
        torch.save({"state_dict": {}, "x": torch.nn.ReLU()}, ckpt)  # an arbitrary class: refused, not built
    work = tmp_path / "work"
    proc = run("test.py", DEMO, ckpt, "--work-dir", work, "--out", tmp_path / out)
    msg = {"bad_out": "--out must be a .pkl", "truncated": "not a readable torch checkpoint",
           "missing": "does not exist", "hostile": "holds objects other than weights"}[case]
    assert proc.returncode != 0 and msg in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not work.exists() and not (tmp_path / out).exists()


# ------------------------------------------------------------------------------------ backbone arguments
@pytest.mark.parametrize("kw,msg", [(dict(frozen_stages=5), "frozen_stages"), (dict(frozen_stages=-2), "frozen_stages"),
                                    (dict(mixer_impl="bogus"), "mixer_impl"),
                                    (dict(denominator="bogus"), "denominator")])
def test_backbone_rejects_bad_settings_at_construction(kw, msg):
    from coc_det import ContextCluster
    with pytest.raises(ValueError, match=msg):
        ContextCluster("tiny", **kw)


def _demo_weights():
    from mmengine.config import Config
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import coc_det  # noqa: F401
    register_all_modules()
    return MODELS.build(Config.fromfile(DEMO).model).state_dict()


@pytest.mark.parametrize("damage", ["other_backbone", "missing_head"])
def test_test_py_refuses_a_checkpoint_that_does_not_fit(tmp_path, damage):
    """A detector checkpoint with another backbone's shapes (or without part of the model) is refused before
    anything is built or written, naming the keys; scoring it would evaluate a partly random model."""
    state = _demo_weights()
    if damage == "other_backbone":
        state["backbone.network.0.0.mlp.fc1.weight"] = torch.zeros(7, 32)
        want = "backbone.network.0.0.mlp.fc1.weight: checkpoint (7, 32) vs model"
    else:
        state = {k: v for k, v in state.items() if not k.startswith("roi_head.mask_head.")}
        want = "weights are missing (e.g. ['roi_head.mask_head."
    ckpt = tmp_path / "c.pth"
    torch.save({"state_dict": state}, ckpt)
    work = tmp_path / "work"
    proc = run("test.py", DEMO, ckpt, "--work-dir", work)
    assert proc.returncode != 0 and "does not fit the model" in proc.stderr and want in proc.stderr, proc.stderr[-3000:]
    assert "--allow-partial" in proc.stderr and "Traceback" not in proc.stderr
    assert not work.exists()


# ------------------------------------------------------------------------------------ files that are not images
@pytest.mark.parametrize("tool", ["classify.py", "visualize_clusters.py"])
def test_image_tools_name_a_file_that_is_not_an_image(tmp_path, tool):
    fake = tmp_path / "photo.jpg"
    fake.write_text("not an image")
    out = tmp_path / "o.png"
    extra = ["--model", "coc_tiny"] if tool == "classify.py" else ["--config", DEMO, "--out", out]
    proc = run(tool, fake, *extra)
    assert proc.returncode == 2 and "is not an image PIL can read" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()


def test_visualize_clusters_writes_the_file_it_is_given(tmp_path):
    for name in ("x.png", "y.jpg"):
        proc = run("visualize_clusters.py", IMAGE, "--config", DEMO, "--out", tmp_path / name, "--size", 64)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png", "y.jpg"]


def test_publish_model_into_a_missing_folder(tmp_path):
    ckpt = tmp_path / "c.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {}}, ckpt)
    proc = run("publish_model.py", ckpt, tmp_path / "nope" / "m.pth")
    assert proc.returncode == 2 and "output folder" in proc.stderr and "does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["c.pth"]


# ------------------------------------------------------------------------------------ validate_imagenet.py
def _imagenet_subset(root, wnids, per_class=1):
    from PIL import Image
    for w in wnids:
        os.makedirs(root / w)
        for i in range(per_class):
            Image.new("RGB", (40, 30), (40 * i, 90, 160)).save(root / w / f"{i}.png")


def test_validate_imagenet_scores_a_subset_against_the_imagenet_classes(tmp_path):
    """Folders n01440764 (ImageNet class 0) and n02112350 (class 261 in timm's ImageNet order): a model that
    always answers class 261 is right on exactly the second folder's images. ImageFolder's own numbering
    (0, 1) would score it 0 %."""
    from timm.data import ImageNetInfo

    from coc_det.classifier import create_classifier
    wnids = ImageNetInfo().label_names()
    target = wnids.index("n02112350")
    model = create_classifier("coc_tiny")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.bias[target] = 10.0
    ckpt = tmp_path / "always.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    root = tmp_path / "val"
    _imagenet_subset(root, ["n01440764", "n02112350"], per_class=2)
    proc = run("validate_imagenet.py", root, "--model", "coc_tiny", "--checkpoint", ckpt, "--batch-size", 4,
               "--workers", 0, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on 4 images of 2 classes" in proc.stdout and "top-1 50.00 %" in proc.stdout, proc.stdout


@pytest.mark.parametrize("case", ["empty", "unknown_names"])
def test_validate_imagenet_refuses_folders_it_cannot_score(tmp_path, case):
    root = tmp_path / "val"
    root.mkdir()
    if case == "unknown_names":
        _imagenet_subset(root, ["n01440764", "cats"])
    proc = run("validate_imagenet.py", root, "--model", "coc_tiny", "--workers", 0)
    msg = "not ImageNet-1k WordNet ids (e.g. ['cats'])" if case == "unknown_names" else "class folder"
    assert proc.returncode == 2 and msg in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ runner probes
def _built(config):
    """``(cfg, model)`` of a config, the model built in the config's registry scope (random weights)."""
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    import coc_det  # noqa: F401
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    return cfg, MODELS.build(cfg.model)


def _weights_for(config, path):
    torch.save({"meta": {}, "state_dict": _built(config)[1].state_dict()}, path)


def _probe_runner(monkeypatch, method, load=False):
    """Replace Runner.<method> by a probe that hands the runner back (nothing is trained or tested; with
    ``load`` it first loads the checkpoint as the runner's own test/train would)."""
    from mmengine.runner import Runner
    seen = {}

    def probe(runner):
        if load:
            runner.load_or_resume()
        seen["runner"] = runner
        return {}

    monkeypatch.setattr(Runner, method, probe)
    return seen


@pytest.mark.parametrize("override", [False, True], ids=["switched", "overridden"])
@pytest.mark.parametrize("made_by", ["mmdet 2.25.1", "mmseg 0.30.0"])
def test_test_py_runs_original_checkpoints_with_the_count_denominator(tmp_path, monkeypatch, made_by, override):
    """A checkpoint of the original code (mmdet 2.x / mmseg 0.x in its meta) is evaluated by a model whose
    backbone computes as the public model with ``denominator='count'`` does (float64, same weights); with
    ``--cfg-options model.backbone.denominator=similarity`` as the public model does today. The runner's
    test loop is replaced by a probe that loads the checkpoint as the runner does and hands its model back."""
    import test as test_tool
    from coc_det.backbone import Cluster
    from original_coc import random_public_model
    lib = made_by.split()[0]
    config = DEMO if lib == "mmdet" else osp.join(ROOT, "configs", "demo", "fpn_coc-demo_shapes.py")
    cfg, model = _built(config)
    bb = cfg.model.backbone
    settings = dict(bb.arch, proposals=[bb.proposal] * 4, folds=list(bb.fold))
    # one seed: both oracles hold the same weights
    oracles = {d: random_public_model(settings, fork_feat=True, denominator=d)[0] for d in ("count", "similarity")}
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state.update({f"backbone.{k}": v.float() for k, v in oracles["count"].state_dict().items()})
    ckpt = tmp_path / "original.pth"
    torch.save({"meta": {f"{lib}_version": made_by.split()[1]}, "state_dict": state}, ckpt)

    seen = _probe_runner(monkeypatch, "test", load=True)
    extra = ["--cfg-options", "model.backbone.denominator=similarity"] if override else []
    test_tool.main([config, str(ckpt), "--work-dir", str(tmp_path / "work"), *extra])
    backbone = seen["runner"].model.backbone.double().eval()
    want = "similarity" if override else "count"
    assert {m.denominator for m in backbone.modules() if isinstance(m, Cluster)} == {want}
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        for got, ref in zip(backbone(x), oracles[want](x)):
            torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("iters", [1, 2, 10, 50, 100, 101])
def test_run_demo_seg_iters_gives_a_schedule_that_runs(iters):
    """``run_demo.py --seg --iters N`` for any N >= 1 (N <= 50 crashed: the poly decay began at the config's
    50-iteration warm-up): mmengine builds the schedulers, and over N iterations the LR rises, then falls."""
    import argparse

    from mmengine.optim.scheduler import _ParamScheduler  # noqa: F401  (registers the schedulers)
    from mmengine.registry import PARAM_SCHEDULERS

    import run_demo
    from _config import load_config
    cfg = load_config(argparse.Namespace(config=run_demo.SEG_CONFIG, cfg_options=None, work_dir="unused",
                                         launcher="none", local_rank=0))
    run_demo.set_seg_iters(cfg, iters)
    assert cfg.train_cfg.max_iters == iters == cfg.default_hooks.checkpoint.interval
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheds = [PARAM_SCHEDULERS.build(dict(s, optimizer=opt)) for s in cfg.param_scheduler]
    lrs = []
    for _ in range(iters):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        for s in scheds:
            s.step()
    peak = lrs.index(max(lrs))
    assert lrs[:peak + 1] == sorted(lrs[:peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
    if iters >= 4:
        assert lrs[0] < lrs[peak] and lrs[-1] < lrs[peak]  # a warm-up and a decay
    if iters >= 100:
        assert cfg.param_scheduler[0].end == 50  # long runs keep the config's warm-up


@pytest.mark.parametrize("args,msg", [(["--seg", "--iters", "0"], "--iters must be at least 1"),
                                      (["--iters", "5"], "--iters is for --seg")])
def test_run_demo_bad_counts(args, msg):
    proc = run("run_demo.py", *args)
    assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("kind", ["detector", "other_arch"])
def test_classify_names_a_checkpoint_that_is_not_this_classifier_in_one_line(tmp_path, kind):
    """A Mask R-CNN checkpoint (weights under backbone./neck./roi_head.) or a classifier of another arch:
    one line saying what it is and what takes it, no pages of key names, no traceback."""
    from coc_det import ContextCluster, ContextClusterClassifier
    if kind == "detector":
        state = {f"backbone.{k}": v for k, v in ContextCluster("tiny").state_dict().items()}
        state["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 32, 1, 1)
        want = "is a detector or segmentor checkpoint"
    else:
        state = ContextClusterClassifier("small").state_dict()
        want = "does not fit this classifier"
    ckpt = tmp_path / "c.pth"
    torch.save({"meta": {}, "state_dict": state}, ckpt)
    proc = run("classify.py", IMAGE, "--model", "coc_tiny", "--checkpoint", ckpt)
    assert proc.returncode == 2 and want in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-3000:]
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr[-3000:]
    if kind == "detector":
        assert "tools/test.py" in proc.stderr


def test_torch_floor_is_not_above_the_torch_tested_here():
    """pyproject.toml states the torch minimum (the oldest version the tests ran on); the torch CI installs must
    satisfy it, or the claim is untested."""
    import re

    from packaging.version import Version
    text = open(osp.join(ROOT, "pyproject.toml")).read()
    floor = re.search(r'"torch>=([0-9.]+)"', text).group(1)
    assert Version(torch.__version__.split("+")[0]) >= Version(floor)
    readme = open(osp.join(ROOT, "README.md")).read()
    assert not re.search(r"torch >= ?[0-9]", readme), "the README restates a torch floor: point to pyproject.toml"


# ------------------------------------------------------------------------------------ the original README's commands
@pytest.mark.parametrize("seed", ["detection", "segmentation"])
def test_the_original_readmes_test_commands_as_typed(tmp_path, monkeypatch, capsys, seed):
    """``dist_test.sh configs/{config} CKPT 8 --out results.pkl --eval bbox segm`` (detection README) and
    ``... --out results.pkl --eval mIoU`` (segmentation README), with the public repository's config names:
    the arguments test.py receives, verbatim, reach a runner of our config with those metrics and a pickle
    of the predictions."""
    import test as test_tool
    if seed == "detection":
        config, metrics = "configs/mask_rcnn_coc_small_5_fpn_1x_coco.py", ["bbox", "segm"]
        ours = "mask-rcnn_coc-small-25_fpn_1x_coco.py"
    else:
        config, metrics = "configs/sem_fpn/fpn_coc_small_5_ade20k_80k.py", ["mIoU"]
        ours = "segmentation/fpn_coc-small-25_ade20k-512x512_80k.py"
    ckpt = tmp_path / "checkpoint_file.pth"
    _weights_for(osp.join(ROOT, "configs", ours), ckpt)
    seen = _probe_runner(monkeypatch, "test")
    # the README's relative paths: configs/ here; the test loop (built when test.py adds the pickle dump) reads
    # the COCO annotation file and lists ADE20K's folders (one entry each, never read)
    (tmp_path / "configs").symlink_to(osp.join(ROOT, "configs"))
    ann = tmp_path / "data" / "coco" / "annotations" / "instances_val2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "1.jpg", "height": 800, "width": 1333}],
                               "annotations": [], "categories": []}))
    for sub, ext in (("images", "jpg"), ("annotations", "png")):
        folder = tmp_path / "data" / "ade" / "ADEChallengeData2016" / sub / "validation"
        folder.mkdir(parents=True)
        (folder / f"1.{ext}").write_bytes(b"")  # listed, never read
    monkeypatch.chdir(tmp_path)
    test_tool.main([config, str(ckpt), "--out", "results.pkl", "--eval", *metrics, "--work-dir", str(tmp_path / "w")])
    runner = seen["runner"]
    assert runner.cfg.filename == osp.join(ROOT, "configs", ours)
    first, *rest = runner.test_evaluator.metrics
    assert list(first.metrics) == metrics
    assert [type(m).__name__ for m in rest] == ["DumpDetResults" if seed == "detection" else "DumpResults"]
    assert rest[0].out_file_path == "results.pkl"
    out = capsys.readouterr().out
    assert "original repository's name" in out and "--eval is the mmdet 2.x / mmseg 0.x flag" in out


def test_the_original_readmes_train_command_and_mmdet2_train_flags(tmp_path, monkeypatch, capsys):
    """``dist_train.sh configs/{config} 8`` passes train.py the config name (plus --launcher, tested by the
    gloo runs); mmdet 2.x's --gpu-ids (one id), --no-validate, --options and --resume-from are taken."""
    import train as train_tool
    seen = _probe_runner(monkeypatch, "train")
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    train_tool.main(["configs/mask_rcnn_coc_small_5_fpn_1x_coco.py", "--work-dir", str(tmp_path / "w"),
                     "--gpu-ids", "0", "--no-validate", "--options", "train_cfg.max_epochs=3",
                     "--resume-from", "some/epoch_4.pth"])
    cfg = seen["runner"].cfg
    assert cfg.filename.endswith("mask-rcnn_coc-small-25_fpn_1x_coco.py")
    assert cfg.train_cfg.max_epochs == 3 and cfg.val_cfg is None and cfg.val_dataloader is None
    assert cfg.resume is True and cfg.load_from == "some/epoch_4.pth"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert capsys.readouterr().out.count("note: ") == 5


@pytest.mark.parametrize("tool,args,msg", [
    ("train.py", ["--gpus", "2"], "run tools/dist_train.sh"),
    ("train.py", ["--gpu-ids", "0", "1"], "run tools/dist_train.sh"),
    ("test.py", ["CKPT", "--eval", "mAP"], "CocoMetric evaluates bbox, segm"),
])
def test_mmdet2_flags_that_have_no_meaning_now_are_named(tmp_path, tool, args, msg):
    ckpt = tmp_path / "c.pth"
    _weights_for(DEMO, ckpt) if "CKPT" in args else None
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    proc = run(tool, DEMO, *args, "--work-dir", tmp_path / "w")
    assert proc.returncode != 0 and msg in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "w").exists()
