"""Registers the backbone in mmdet's ``MODELS`` (imported by ``coc_det`` only where mmdet is installed).

``backbone.py`` must import without mmdet (GPU benchmark machines, timm users), so the registry decorator
is applied here, to the one ``ContextCluster`` class, rather than above its definition.

Besides ``ContextCluster`` it registers the original repository's type names
(``context_cluster_{small,medium}_feat{2,5,7}``) so configs written for it keep working; those accept
and ignore the ``style`` key those configs pass, and map a ``pretrained`` path to ``init_cfg``.
"""
from mmdet.registry import MODELS

from .backbone import PROPOSAL_OF_CENTRES, ContextCluster

MODELS.register_module(force=True)(ContextCluster)


def _legacy(arch: str, proposal: int):
    def __init__(self, style=None, pretrained=None, init_cfg=None, **kwargs):
        if pretrained is not None and init_cfg is None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        ContextCluster.__init__(self, arch=arch, proposal=proposal, init_cfg=init_cfg, **kwargs)

    name = f"context_cluster_{arch}_feat{proposal}"
    cls = type(name, (ContextCluster,), {"__init__": __init__, "__doc__": f"``ContextCluster(arch={arch!r}, "
                                         f"proposal={proposal})`` under the original repository's name."})
    MODELS.register_module(name=name, force=True)(cls)
    return cls


LEGACY = {f"context_cluster_{a}_feat{p}": _legacy(a, p) for a in ("small", "medium")
          for p in sorted(PROPOSAL_OF_CENTRES.values())}
