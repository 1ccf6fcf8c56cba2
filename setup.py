import re
from pathlib import Path

from setuptools import find_packages, setup

# the one place the version is written: coc_kernels.__version__ (coc_det re-exports it)
VERSION = re.search(r'^__version__ = "([^"]+)"', (Path(__file__).parent / "coc_kernels" / "__init__.py").read_text(),
                    re.M).group(1)

setup(
    name="coc-det",
    version=VERSION,
    description="Context Clusters (CoC) with fused Triton kernels and an MMDetection 3.x backbone",
    packages=find_packages(include=["coc_kernels", "coc_kernels.*", "coc_det", "coc_det.*"]),
    python_requires=">=3.10",
    # torch/triton are the only hard requirements of the kernels; the detection stack
    # (mmengine, mmcv with ops, mmdet) and timm (the classifiers) are installed by tools/setup_env.sh.
    # torch: the oldest version the tests have run on (the GPU machines' 2.11 through benchmarks/gpu_check.sh,
    # 2026-11-26; CI runs the version tools/setup_env.sh installs). The README points here, not at a number.
    install_requires=["torch>=2.11", "numpy"],
    extras_require={"det": ["mmengine>=0.10.4,<0.11", "mmcv==2.1.0", "mmdet==3.3.0", "pycocotools", "psutil"],
                    "cls": ["timm>=1.0"],
                    "export": ["onnx>=1.23", "onnxscript>=0.7", "onnxruntime>=1.32"]},  # the versions tested
)
