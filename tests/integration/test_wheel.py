"""The package as a user installs it: the wheel built from pyproject.toml, installed into a fresh virtual
environment that sees torch (and what torch needs) and nothing else of this machine: no mmcv, mmdet, mmengine,
mmseg, timm, onnx, and not this checkout. There it imports, reports its version, runs the op on the CPU against
the dense form and builds and runs a backbone."""
import glob
import os
import os.path as osp
import subprocess
import sys
import sysconfig
import zipfile


from conftest import ROOT

#: distributions of the project's environment the fresh one must not see (the optional stacks and this package)
HIDDEN = ("mmcv", "mmdet", "mmengine", "mmseg", "timm", "onnx", "coc_det", "coc_kernels", "coc-det", "__editable__",
          "_coc", "pycocotools", "torchvision")

PROBE = r"""
import importlib.metadata as md, importlib.util, sys
import torch
import coc_kernels, coc_det
assert coc_kernels.__file__.startswith(sys.prefix), coc_kernels.__file__  # the installed copy, not the checkout
missing = [m for m in ("mmcv", "mmdet", "mmengine", "mmseg", "timm", "onnx") if importlib.util.find_spec(m)]
assert not missing, f"the fresh environment sees {missing}"
assert coc_kernels.__version__ == coc_det.__version__ == md.version("coc-det"), (
    coc_kernels.__version__, coc_det.__version__, md.version("coc-det"))
assert not coc_det.HAS_MMDET
from coc_kernels import context_cluster, context_cluster_dense
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 64, 8, 12, generator=g, dtype=torch.float64)
v = torch.randn(1, 64, 8, 12, generator=g, dtype=torch.float64)
a, b = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
y = context_cluster(x, v, a, b, heads=2, proposal=2, fold=2)
ref = context_cluster_dense(x, v, a, b, heads=2, proposal=(2, 2), fold=(2, 2))
assert (y - ref).abs().max().item() < 1e-12
from coc_det import ContextCluster
net = ContextCluster(arch="small", proposal=2).eval()
with torch.no_grad():
    outs = net(torch.randn(1, 3, 64, 64))
print("ok", coc_kernels.__version__, [tuple(o.shape) for o in outs])
"""


def _visible_site(tmp_path):
    """A folder of links to this environment's site-packages entries, less ``HIDDEN``: what the fresh environment
    gets on its path (torch, triton, numpy, sympy, the CUDA libraries ...)."""
    site = sysconfig.get_paths()["purelib"]
    farm = tmp_path / "torch_only"
    farm.mkdir()
    for name in os.listdir(site):
        low = name.lower()
        if low.endswith(".pth") or any(low.startswith(h) for h in HIDDEN):
            continue
        os.symlink(osp.join(site, name), farm / name)
    return farm


def test_wheel_installs_and_runs_beside_torch_alone(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(wheels), ROOT], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = glob.glob(str(wheels / "coc_det-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        tops = {n.split("/")[0] for n in z.namelist()}
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert {t for t in tops if not t.endswith(".dist-info")} == {"coc_kernels", "coc_det"}  # no tests, tools, configs
    assert "Requires-Dist: torch>=" in meta and 'extra == "det"' in meta and "Requires-Python: >=3.10" in meta

    env_dir = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    py = str(env_dir / "bin" / "python")
    purelib = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    with open(osp.join(purelib, "torch_only.pth"), "w") as f:
        f.write(str(_visible_site(tmp_path)) + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q",
                        wheel], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([py, "-c", PROBE], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.startswith("ok "), r.stdout[-3000:] + r.stderr[-3000:]
