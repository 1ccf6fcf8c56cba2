"""Context Cluster backbone for MMDetection 3.x.

``import coc_det`` gives the torch-only ``ContextCluster`` backbone and ``ContextClusterClassifier``
everywhere; where timm is installed the classifiers are timm models (``coc_small``...), and where mmdet is
installed the backbone (and the original repository's type names) is in mmdet's ``MODELS``. Configs
load it with ``custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)``.
"""
from .backbone import ARCH_SETTINGS, ContextCluster
from .checkpoint import allow_checkpoint_metadata

allow_checkpoint_metadata()  # mmengine / timm checkpoints load under torch's weights_only default, anywhere

from .classifier import ContextClusterClassifier  # noqa: E402  (and the timm models, where timm is installed)

try:
    from . import hooks  # noqa: F401  (EpochSeedHook, in mmengine's HOOKS)
except ImportError:  # no mmengine
    pass

try:
    import mmdet  # noqa: F401
except ImportError:  # torch-only machines (e.g. the GPU benchmark box)
    HAS_MMDET = False
else:
    from . import registry  # noqa: F401
    HAS_MMDET = True

__all__ = ["ContextCluster", "ContextClusterClassifier", "ARCH_SETTINGS", "HAS_MMDET"]
