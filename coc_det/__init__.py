"""Context Cluster backbone for MMDetection 3.x.

``import coc_det`` gives the torch-only ``ContextCluster`` module everywhere and, where mmdet is
installed, registers it (and the original repository's type names) in mmdet's ``MODELS``. Configs
load it with ``custom_imports = dict(imports=['coc_det'], allow_failed_imports=False)``.
"""
from .backbone import ARCH_SETTINGS, ContextCluster
from .checkpoint import allow_mmengine_checkpoints

allow_mmengine_checkpoints()  # mmengine checkpoints load under torch's weights_only default, anywhere

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

__all__ = ["ContextCluster", "ARCH_SETTINGS", "HAS_MMDET"]
