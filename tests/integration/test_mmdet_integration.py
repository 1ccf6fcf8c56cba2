"""coc_det inside MMDetection: registry names, the shipped configs, one Mask R-CNN training step, a
2-process gloo run of tools/dist_train.sh, and tools/test.py producing COCO bbox/segm metrics."""
import glob
import math
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import coc_det  # noqa: F401  (registers the backbone)
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

from conftest import ROOT  # noqa: E402
CONFIGS = sorted(glob.glob(osp.join(ROOT, "configs", "mask-rcnn_coc-*_fpn_1x_coco.py")))
DEMO = osp.join(ROOT, "configs", "demo", "mask-rcnn_coc-demo_fpn_shapes.py")
register_all_modules()


def test_registry_names():
    from coc_det.backbone import ContextCluster
    assert MODELS.get("ContextCluster") is ContextCluster
    for arch in ("small", "medium"):
        for p in (2, 5, 7):
            m = MODELS.build(dict(type=f"context_cluster_{arch}_feat{p}", style="pytorch"))
            assert isinstance(m, ContextCluster)
            assert m.proposals == [p] * 4 and len(m.network[4]) == (6 if arch == "small" else 12)


def test_six_configs_follow_the_public_recipe():
    assert [osp.basename(c) for c in CONFIGS] == sorted(
        f"mask-rcnn_coc-{a}-{m}_fpn_1x_coco.py" for a in ("small", "medium") for m in (4, 25, 49))
    for path in CONFIGS:
        cfg = Config.fromfile(path)
        arch, centres = osp.basename(path).split("_")[1].split("-")[1:]
        bb = cfg.model.backbone
        assert (bb.type, bb.arch, bb.proposal ** 2) == ("ContextCluster", arch, int(centres))
        assert bb.mixer_impl == "triton"  # GPU recipes: the fused kernels, or a clear error
        assert cfg.model.neck.in_channels == [64, 128, 320, 512]
        assert cfg.optim_wrapper.optimizer == dict(type="AdamW", lr=2e-4, weight_decay=1e-4)
        assert cfg.optim_wrapper.get("clip_grad") is None
        assert cfg.train_cfg.max_epochs == 12
        assert [s for s in cfg.param_scheduler if s.type == "MultiStepLR"][0].milestones == [8, 11]
        assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 32
        assert cfg.model.data_preprocessor.pad_size_divisor == 32


def test_mask_rcnn_coc_training_step():
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromfile(osp.join(ROOT, "configs", "mask-rcnn_coc-small-25_fpn_1x_coco.py"))
    # the memory-light torch mixer: the fused one runs the interpreter on the CPU (minutes for this model);
    # it goes through mmdet and DDP in test_dist_train_fused_mixer_two_processes
    cfg.model.backbone.mixer_impl = "light"
    model = MODELS.build(cfg.model)
    model.init_weights()  # Pretrained with checkpoint=None: random init, logged
    model.train()
    packed = demo_mm_inputs(2, [[3, 128, 128], [3, 96, 128]], num_items=[3, 2], num_classes=80, with_mask=True)
    data = model.data_preprocessor(packed, True)  # pads to /32
    losses = model(**data, mode="loss")
    total = sum(v.sum() if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert math.isfinite(total.item())
    total.backward()
    mixer = model.backbone.network[0][0].token_mixer
    for p in (mixer.f.weight, mixer.v.weight, mixer.sim_alpha, model.backbone.patch_embed.proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """8 training / 4 validation images of the demo set, and a 2-process CPU training run on them."""
    root = tmp_path_factory.mktemp("demo")
    data = root / "data"
    subprocess.run([sys.executable, osp.join(ROOT, "tools", "make_demo_data.py"), "--out", str(data),
                    "--train", "8", "--val", "4"], check=True)
    work = root / "work"
    d = str(data) + "/"
    opts = [f"train_dataloader.dataset.data_root={d}", f"val_dataloader.dataset.data_root={d}",
            f"test_dataloader.dataset.data_root={d}",
            f"val_evaluator.ann_file={d}annotations/instances_val.json",
            f"test_evaluator.ann_file={d}annotations/instances_val.json",
            "train_dataloader.batch_size=2", "train_cfg.max_epochs=1", "train_cfg.val_interval=2",
            "default_hooks.logger.interval=1", "default_hooks.checkpoint.interval=1"]
    env = dict(os.environ, PORT="29531", PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", osp.join(ROOT, "tools", "dist_train.sh"), DEMO, "2", "--work-dir", str(work),
                           "--cfg-options", *opts], env=env, capture_output=True, text=True, timeout=900)
    return dict(proc=proc, work=work, opts=opts, env=env)


def test_dist_train_two_processes_gloo(tiny_demo):
    proc = tiny_demo["proc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Distributed training: True" in log and "GPU number: 2" in log  # mmengine's words for world size
    assert "Epoch(train) [1][2/2]" in log  # 8 images / (2 processes x 2 per batch) = 2 iterations
    assert osp.exists(tiny_demo["work"] / "epoch_1.pth")


def test_dist_train_fused_mixer_two_processes(tiny_demo, tmp_path):
    """The fused path through DDP: the Triton kernels (interpreter on the CPU), the autograd Function, two
    processes; the backbone says which mixer it runs. One image per process (the interpreter takes ~40 ms a
    program, ~2,400 programs per image and step of the demo backbone)."""
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    opts = [o for o in tiny_demo["opts"] if not o.startswith(("train_cfg.val_interval", "train_dataloader.batch_size"))]
    proc = subprocess.run(["bash", osp.join(ROOT, "tools", "dist_train.sh"), DEMO, "2", "--work-dir",
                           str(tmp_path / "work"), "--cfg-options", *opts, "model.backbone.mixer_impl=triton",
                           "train_cfg.val_interval=10", "default_hooks.checkpoint.interval=10",
                           "train_dataloader.batch_size=1", "train_dataloader.dataset.indices=2"],
                          env=dict(tiny_demo["env"], PORT="29533"), capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "ContextCluster: mixer implementation 'triton'" in log
    assert "Epoch(train) [1][1/1]" in log and "GPU number: 2" in log


def test_test_py_reports_bbox_and_segm(tiny_demo, tmp_path):
    assert tiny_demo["proc"].returncode == 0
    out = tmp_path / "results.pkl"
    proc = subprocess.run([sys.executable, osp.join(ROOT, "tools", "test.py"), DEMO,
                           str(tiny_demo["work"] / "epoch_1.pth"), "--work-dir", str(tmp_path / "test"),
                           "--out", str(out), "--cfg-options", *tiny_demo["opts"]],
                          capture_output=True, text=True, timeout=600, env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "coco/bbox_mAP" in log and "coco/segm_mAP" in log
    with open(out, "rb") as f:
        results = pickle.load(f)
    assert len(results) == 4 and "pred_instances" in results[0]


def test_plot_log_from_training_run(tiny_demo, tmp_path):
    sys.path.insert(0, osp.join(ROOT, "tools"))
    import plot_log
    from PIL import Image
    assert tiny_demo["proc"].returncode == 0
    train, val = plot_log.read_scalars(plot_log.find_scalars(str(tiny_demo["work"])))
    assert len(train) == 2 and all("loss_mask" in r and "loss" in r for r in train)
    assert len(val) == 1 and "coco/bbox_mAP" in val[0] and "coco/segm_mAP" in val[0]
    out = tmp_path / "curves.png"
    plot_log.main([str(tiny_demo["work"]), "--out", str(out)])
    assert Image.open(out).size == (1100, 400)


def test_resume_continues_from_last_checkpoint(tiny_demo, tmp_path):
    """--resume reads mmengine's own checkpoint (under torch's weights_only default) and goes on."""
    import shutil
    assert tiny_demo["proc"].returncode == 0
    work = tmp_path / "resume"
    shutil.copytree(tiny_demo["work"], work)
    opts = [o for o in tiny_demo["opts"] if not o.startswith("train_cfg.max_epochs")] + ["train_cfg.max_epochs=2"]
    proc = subprocess.run([sys.executable, osp.join(ROOT, "tools", "train.py"), DEMO, "--work-dir", str(work),
                           "--resume", "--cfg-options", *opts, "train_dataloader.batch_size=4"],
                          capture_output=True, text=True, timeout=600, env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "resumed epoch: 1" in log.lower() or "resumed epoch 1" in log.lower(), log[-3000:]
    assert "Epoch(train) [2][2/2]" in log and osp.exists(work / "epoch_2.pth")


def _losses(work):
    sys.path.insert(0, osp.join(ROOT, "tools"))
    import plot_log
    train, _ = plot_log.read_scalars(plot_log.find_scalars(str(work)))
    return {r["iter"]: r["loss"] for r in train}


def test_resumed_run_reproduces_the_uninterrupted_losses(tiny_demo, tmp_path):
    """A run killed after epoch 1 and resumed from its checkpoint (fixed seed) logs exactly the losses of the
    run that went on: EpochSeedHook reseeds flips / drop path / loader seeds per (seed, epoch, rank)."""
    import shutil
    opts = [o for o in tiny_demo["opts"] if not o.startswith(("train_cfg.max_epochs", "train_cfg.val_interval"))]
    opts += ["train_cfg.max_epochs=2", "train_cfg.val_interval=10", "randomness.seed=3",
             "model.backbone.drop_path_rate=0.2"]
    cmd = [sys.executable, osp.join(ROOT, "tools", "train.py"), DEMO]
    full = tmp_path / "full"
    proc = subprocess.run(cmd + ["--work-dir", str(full), "--cfg-options", *opts], capture_output=True, text=True,
                          timeout=600, env=tiny_demo["env"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / "epoch_1.pth", resumed / "epoch_1.pth")  # what the killed run left
    proc = subprocess.run(cmd + ["--work-dir", str(resumed), "--resume", str(resumed / "epoch_1.pth"),
                                 "--cfg-options", *opts], capture_output=True, text=True, timeout=600,
                          env=tiny_demo["env"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    want, got = _losses(full), _losses(resumed)
    assert sorted(got) == [5, 6, 7, 8] and sorted(want) == list(range(1, 9))  # 8 images / batch 2 = 4 per epoch
    assert {i: want[i] for i in got} == got


def test_test_py_switches_original_mmdet2_checkpoints_to_count(tiny_demo, tmp_path):
    """A detector checkpoint of the original CoC code (mmdet 2.x: its key names, meta with mmdet_version and
    config) loads key for key, and tools/test.py evaluates it with denominator='count', saying so; an explicit
    --cfg-options wins."""
    from mmengine.config import Config
    from mmdet.registry import MODELS as DET
    cfg = Config.fromfile(DEMO)
    model = DET.build(cfg.model)
    # the mmdet 2.x names of Mask R-CNN's parts (mmdet/models/{necks/fpn,dense_heads/rpn_head,roi_heads/...}.py
    # in 2.x), written out here rather than read off the 3.x model
    names = [f"neck.{kind}.{i}.conv.{w}" for kind in ("lateral_convs", "fpn_convs") for i in range(4)
             for w in ("weight", "bias")]
    names += [f"rpn_head.rpn_{p}.{w}" for p in ("conv", "cls", "reg") for w in ("weight", "bias")]
    names += [f"roi_head.bbox_head.{p}.{w}" for p in ("fc_cls", "fc_reg", "shared_fcs.0", "shared_fcs.1")
              for w in ("weight", "bias")]
    names += [f"roi_head.mask_head.{p}.{w}" for p in ("convs.0.conv", "convs.1.conv", "upsample", "conv_logits")
              for w in ("weight", "bias")]
    ours = model.state_dict()
    backbone = [k for k in ours if k.startswith("backbone.")]
    assert sorted(set(ours) - set(backbone)) == sorted(names)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ours.items()}
    model.load_state_dict(state, strict=True)
    ckpt = tmp_path / "coc_mask_rcnn_mmdet2.pth"
    torch.save({"meta": {"mmdet_version": "2.25.1", "config": cfg.pretty_text, "CLASSES": ("circle",) * 3,
                         "epoch": 12, "iter": 100}, "state_dict": state}, ckpt)
    from coc_det.checkpoint import original_code_version
    assert original_code_version(torch.load(ckpt)) == "mmdet 2.25.1"
    assert original_code_version({"meta": {"mmdet_version": "3.3.0"}}) is None
    base = [sys.executable, osp.join(ROOT, "tools", "test.py"), DEMO, str(ckpt), "--cfg-options", *tiny_demo["opts"]]
    proc = subprocess.run(base[:4] + ["--work-dir", str(tmp_path / "t1")] + base[4:], capture_output=True,
                          text=True, timeout=600, env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "trained with mmdet 2.25.1" in log and "model.backbone.denominator='count'" in log
    assert "Epoch(test) [1/1]" in log, log[-3000:]  # random weights: no detections, so no AP lines
    assert "missing keys" not in log and "unexpected key" not in log, log[-3000:]
    proc = subprocess.run(base[:4] + ["--work-dir", str(tmp_path / "t2")] + base[4:] +
                          ["model.backbone.denominator=similarity"], capture_output=True, text=True, timeout=600,
                          env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "trained with mmdet 2.25.1" not in log, log[-4000:]


def test_training_checkpoints_load_under_torchs_default_without_our_code(tiny_demo):
    """What a run writes (weights, optimizer, schedulers, message hub) is read by a bare ``torch.load`` (weights
    only, torch's default) in an interpreter with nothing of ours or mmengine's imported."""
    assert tiny_demo["proc"].returncode == 0
    code = f"""
import sys, torch
ck = torch.load({str(tiny_demo["work"] / "epoch_1.pth")!r})
assert not any(m.split('.')[0] in ('coc_det', 'mmengine', 'mmdet') for m in sys.modules)
print(sorted(ck), sorted(ck['message_hub']['log_scalars'])[:2], len(ck['state_dict']) > 100)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "['message_hub', 'meta', 'optimizer', 'param_schedulers', 'state_dict']" in proc.stdout
    assert "'train/" in proc.stdout and proc.stdout.strip().endswith("True")


def test_test_py_allow_partial_evaluates_a_checkpoint_that_does_not_fit(tiny_demo, tmp_path):
    assert tiny_demo["proc"].returncode == 0
    ck = torch.load(tiny_demo["work"] / "epoch_1.pth")
    ck["state_dict"] = {k: v for k, v in ck["state_dict"].items() if not k.startswith("roi_head.mask_head.")}
    path = tmp_path / "partial.pth"
    torch.save(ck, path)
    proc = subprocess.run([sys.executable, osp.join(ROOT, "tools", "test.py"), DEMO, str(path), "--allow-partial",
                           "--work-dir", str(tmp_path / "t"), "--cfg-options", *tiny_demo["opts"]],
                          capture_output=True, text=True, timeout=600, env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "--allow-partial: 8 of the model's weights are missing (e.g. ['roi_head.mask_head." in log
    assert "coco/bbox_mAP" in log


def test_checkpoints_work_in_mmdets_own_inference_apis(tiny_demo, tmp_path):
    """A published checkpoint of ours through mmdet.apis (init_detector / inference_detector / DetInferencer)
    in a fresh interpreter that imports nothing of ours itself (the config's custom_imports loads coc_det, which
    changes nothing in torch.load: the checkpoint needs no allowlist)."""
    assert tiny_demo["proc"].returncode == 0
    proc = subprocess.run([sys.executable, osp.join(ROOT, "tools", "publish_model.py"),
                           str(tiny_demo["work"] / "epoch_1.pth"), str(tmp_path / "demo.pth")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    published = glob.glob(str(tmp_path / "demo-*.pth"))
    assert len(published) == 1
    code = f"""
import sys
from mmdet.apis import DetInferencer, inference_detector, init_detector
assert 'coc_det' not in sys.modules
model = init_detector({DEMO!r}, {published[0]!r}, device='cpu')
res = inference_detector(model, {osp.join(ROOT, 'tests', 'data', 'shapes.png')!r})
assert 'coc_det' in sys.modules
print('INIT', type(model.backbone).__name__, model.dataset_meta['classes'], len(res.pred_instances))
inf = DetInferencer(model={DEMO!r}, weights={published[0]!r}, device='cpu')
out = inf({osp.join(ROOT, 'tests', 'data', 'shapes.png')!r}, out_dir={str(tmp_path / 'vis')!r}, no_save_pred=False)
print('INFER', len(out['predictions']), sorted(out['predictions'][0]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "INIT ContextCluster ('circle', 'square', 'triangle')" in log
    assert "INFER 1 ['bboxes', 'labels', 'masks', 'scores']" in log
    assert glob.glob(str(tmp_path / "vis" / "vis" / "*.png")) and glob.glob(str(tmp_path / "vis" / "preds" / "*.json"))


MMDET_TOOLS = osp.join(osp.dirname(__import__("mmdet").__file__), ".mim", "tools", "analysis_tools")


def test_mmdets_get_flops_counts_the_mixer(tiny_demo):
    """mmdet's own get_flops.py on the demo config: the mixer is one counted operator, not an unsupported one."""
    proc = subprocess.run([sys.executable, osp.join(MMDET_TOOLS, "get_flops.py"), DEMO, "--num-images", "1",
                           "--cfg-options", *tiny_demo["opts"]], capture_output=True, text=True, timeout=600,
                          env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Flops: " in log and "Input shape: (128, 128)" in log
    unsupported = [line for line in log.splitlines() if "Unsupported operator" in line]
    assert unsupported and not [line for line in unsupported if "coc" in line or "Cluster" in line], unsupported


@pytest.mark.parametrize("task", ["dataloader", "dataset"])
def test_mmdets_benchmark_tool_on_the_demo_config(tiny_demo, task):
    """mmdet's benchmark.py (psutil from the set-up); its 'inference' task calls .cuda() and needs a GPU. The
    dataloader task needs --max-iter batches in the set (4 images here: batch size 1)."""
    proc = subprocess.run([sys.executable, osp.join(MMDET_TOOLS, "benchmark.py"), DEMO, "--task", task,
                           "--max-iter", "3", "--num-warmup", "1", "--log-interval", "1", "--cfg-options",
                           *tiny_demo["opts"], "test_dataloader.batch_size=1"],
                          capture_output=True, text=True, timeout=600, env=tiny_demo["env"])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "Overall fps" in log, log[-3000:]
    if task == "dataloader":  # psutil's process memory, which the dataloader task reports
        assert "mem_used" in log, log[-3000:]
