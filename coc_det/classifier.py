"""Context Cluster image classifiers: the backbone's stages plus the public models' classifier, and their
registration in timm (``coc_tiny``, ``coc_tiny2``, ``coc_tiny_plain``, ``coc_small``, ``coc_medium``,
``coc_base_dim64``, ``coc_base_dim96``), so that

    timm.create_model('coc_small', pretrained=False, checkpoint_path='coc_small.pth.tar')

loads a public ImageNet checkpoint with its head (state-dict keys ``patch_embed``, ``network``, ``norm``,
``head``, as published). The blocks and the op are those of :class:`~coc_det.backbone.ContextCluster`; the
classifier adds only ``norm`` (GroupNorm on the last stage) and ``head`` (Linear on its spatial mean).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbone import ARCH_SETTINGS, ContextCluster, GroupNorm

#: timm names -> arch (``coc_<arch>``)
TIMM_MODELS = {f"coc_{arch}": arch for arch in ARCH_SETTINGS}

#: the public models' evaluation transform (timm ``pretrained_cfg``): 224 px, crop 0.9, bicubic
PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
                      interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      first_conv="patch_embed.proj", classifier="head")


class ContextClusterClassifier(ContextCluster):
    """``ContextCluster`` stages -> GroupNorm -> global average -> Linear. ``[B, 3, H, W] -> [B, num_classes]``.

    Takes the backbone's arguments (``arch``, ``proposal``, ``fold``, ``mixer_impl``, ``denominator``,
    ``drop_path_rate``, ``with_cp``...) except ``out_indices``; ``num_classes=0`` gives pooled features.
    ``drop_rate`` is dropout before the head (timm's argument).
    """

    def __init__(self, arch="small", num_classes: int = 1000, drop_rate: float = 0.0, in_chans: int = 3, **kwargs):
        if in_chans != 3:
            raise ValueError(f"Context Cluster models take RGB images (in_chans=3), got in_chans={in_chans}")
        for key in ("out_indices", "init_cfg"):
            if key in kwargs:
                raise ValueError(f"{key} is a backbone argument; the classifier has no output norms to choose")
        super().__init__(arch=arch, out_indices=(), **kwargs)
        self.num_classes = num_classes
        self.num_features = self.embed_dims[-1]
        self.drop_rate = drop_rate
        self.norm = GroupNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_linear)
        self.pretrained_cfg = dict(PRETRAINED_CFG, num_classes=num_classes)

    # the timm model interface
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool=None):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_linear)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C_last, H/32, W/32]`` (after the final norm)."""
        return self.norm(self.forward_stages(x)[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((-2, -1))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, checkpoint: str, prefix=None):  # noqa: D102 - the backbone's loader drops heads
        raise NotImplementedError("classifiers load whole checkpoints: timm.create_model(..., checkpoint_path=) "
                                  "or coc_det.classifier.load_classifier_checkpoint")


def load_classifier_checkpoint(model: ContextClusterClassifier, path: str) -> None:
    """Load a public CoC ImageNet checkpoint (weights under ``model``/``state_dict`` or bare) into a classifier,
    strictly (every key, every shape), weights only (see :mod:`coc_det.checkpoint`)."""
    from .checkpoint import read_checkpoint, state_dict_of
    load_classifier_state(model, state_dict_of(read_checkpoint(path)), path)


def load_classifier_state(model: ContextClusterClassifier, state: dict, path: str) -> None:
    """The strict load of :func:`load_classifier_checkpoint` for weights already read from ``path``; a
    :class:`~coc_det.checkpoint.CheckpointError` names what does not fit, in one line."""
    from .checkpoint import CheckpointError, compare_state_dicts
    missing, unexpected, wrong = compare_state_dicts(model.state_dict(), state)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path} does not fit this classifier: missing {missing[:3]} ({len(missing)}), "
                              f"unexpected {unexpected[:3]} ({len(unexpected)}), shapes {wrong[:3]} ({len(wrong)})")
    model.load_state_dict(state)


def create_classifier(name: str, checkpoint: str | None = None, **kwargs) -> ContextClusterClassifier:
    """``coc_<arch>`` by name, optionally with a checkpoint (without timm)."""
    if name not in TIMM_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(TIMM_MODELS)}")
    model = ContextClusterClassifier(TIMM_MODELS[name], **kwargs)
    if checkpoint:
        load_classifier_checkpoint(model, checkpoint)
    return model


def _register_timm():
    """Register every ``coc_<arch>`` as a timm model (where timm is installed)."""
    from timm.models import register_model

    def entrypoint(name, arch):
        def fn(pretrained: bool = False, **kwargs):
            if pretrained:
                raise ValueError(f"{name}: no download location is registered for the public weights; pass "
                                 "pretrained=False, checkpoint_path=<the published .pth.tar>")
            for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
                kwargs.pop(key, None)
            return ContextClusterClassifier(arch, **kwargs)
        fn.__name__ = name
        fn.__qualname__ = name
        fn.__module__ = __name__
        fn.__doc__ = f"Context Cluster {arch} (ImageNet classifier; see coc_det.classifier)."
        return fn

    for name, arch in TIMM_MODELS.items():
        globals()[name] = register_model(entrypoint(name, arch))


try:
    import timm  # noqa: F401
except ImportError:  # pragma: no cover - timm is optional for the detection stack
    HAS_TIMM = False
else:
    _register_timm()
    HAS_TIMM = True
