"""Context Cluster models for MMDetection 3.x, MMSegmentation 1.x and timm.

``import coc_det`` gives the torch-only ``ContextCluster`` backbone and ``ContextClusterClassifier``
everywhere; where timm is installed the classifiers are timm models (``coc_small``...), and where mmdet is
installed the backbone (and the original repository's type names) is in mmdet's ``MODELS``, and likewise in
mmseg's where mmsegmentation is installed. Configs load it with
``custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)``.
Importing it changes nothing in ``torch.load`` (see :mod:`coc_det.checkpoint`).
"""
from .backbone import ARCH_SETTINGS, ContextCluster
from .classifier import ContextClusterClassifier  # (and the timm models, where timm is installed)

try:
    from . import hooks  # noqa: F401  (EpochSeedHook, WeightsOnlyCheckpointHook: mmengine's HOOKS)
except ImportError:  # no mmengine
    pass

try:
    from mmdet.registry import MODELS as _DET_MODELS
except ImportError:  # torch-only machines (e.g. the GPU benchmark box)
    HAS_MMDET = False
else:
    from .registry import register
    register(_DET_MODELS)
    HAS_MMDET = True

try:
    from mmseg.registry import MODELS as _SEG_MODELS
except ImportError:
    HAS_MMSEG = False
else:
    from .registry import register
    register(_SEG_MODELS)
    HAS_MMSEG = True

__all__ = ["ContextCluster", "ContextClusterClassifier", "ARCH_SETTINGS", "HAS_MMDET", "HAS_MMSEG"]
