"""Context Cluster models for MMDetection 3.x, MMSegmentation 1.x and timm.

``import coc_det`` gives the torch-only ``ContextCluster`` backbone and ``ContextClusterClassifier``
everywhere; where timm is installed the classifiers are timm models (``coc_small``...), and where mmdet is
installed the backbone (and the original repository's type names) is in mmdet's ``MODELS``, and likewise in
mmseg's where mmsegmentation is installed. Configs load it with
``custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)``.
Importing it changes nothing in ``torch.load`` (see :mod:`coc_det.checkpoint`).
"""
from coc_kernels import __version__  # one distribution, one version

from .backbone import ARCH_SETTINGS, ContextCluster
from .classifier import ContextClusterClassifier  # (and the timm models, where timm is installed)

try:
    from . import hooks  # noqa: F401  (EpochSeedHook, WeightsOnlyCheckpointHook: mmengine's HOOKS)
except ImportError:  # no mmengine
    pass

try:  # the mixer's flop handle in mmengine's complexity analysis (get_flops.py)
    from .flops import register as _register_flops
    _register_flops()
except ImportError:  # no mmengine
    pass

try:
    from mmdet.registry import MODELS as _DET_MODELS
except ImportError:  # torch-only machines (e.g. the GPU benchmark box)
    HAS_MMDET = False
else:
    from mmdet.registry import DATASETS as _DET_DATASETS

    from .datasets import register_det
    from .registry import register
    register(_DET_MODELS)
    register_det(_DET_DATASETS)
    HAS_MMDET = True

try:
    from mmseg.registry import MODELS as _SEG_MODELS
except ImportError:
    HAS_MMSEG = False
else:
    from mmseg.registry import DATASETS as _SEG_DATASETS
    from mmseg.registry import VISUALIZERS as _SEG_VISUALIZERS

    from .datasets import register_seg, register_seg_visualizer
    from .registry import register
    register(_SEG_MODELS)
    register_seg(_SEG_DATASETS)
    register_seg_visualizer(_SEG_VISUALIZERS)
    HAS_MMSEG = True

__all__ = ["__version__", "ContextCluster", "ContextClusterClassifier", "ARCH_SETTINGS", "HAS_MMDET", "HAS_MMSEG"]
