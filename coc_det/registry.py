"""Registers the backbone in the OpenMMLab model registries present: mmdet's ``MODELS`` and mmseg's ``MODELS``
(called by ``coc_det`` for each library that is installed; neither is needed by the backbone itself).

``backbone.py`` must import without them (GPU benchmark machines, timm users), so the registry decorator
is applied here, to the one ``ContextCluster`` class, rather than above its definition.

Besides ``ContextCluster`` it registers the original repository's type names
(``context_cluster_{small,medium}_feat{2,5,7}``) so configs written for it keep working; those accept
and ignore the ``style`` key those configs pass, and map a ``pretrained`` path to ``init_cfg``.
"""
from .backbone import PROPOSAL_OF_CENTRES, ContextCluster


def _legacy(arch: str, proposal: int):
    def __init__(self, style=None, pretrained=None, init_cfg=None, **kwargs):
        if pretrained is not None and init_cfg is None:
            init_cfg = dict(type="Pretrained", checkpoint=pretrained)
        ContextCluster.__init__(self, arch=arch, proposal=proposal, init_cfg=init_cfg, **kwargs)

    name = f"context_cluster_{arch}_feat{proposal}"
    return name, type(name, (ContextCluster,), {
        "__init__": __init__, "__module__": __name__,
        "__doc__": f"``ContextCluster(arch={arch!r}, proposal={proposal})`` under the original repository's name."})


LEGACY = dict(_legacy(a, p) for a in ("small", "medium") for p in sorted(PROPOSAL_OF_CENTRES.values()))


def register(models) -> None:
    """Put ``ContextCluster`` and the legacy names into one ``MODELS`` registry."""
    models.register_module(force=True)(ContextCluster)
    for name, cls in LEGACY.items():
        models.register_module(name=name, force=True)(cls)
