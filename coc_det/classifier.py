"""Context Cluster image classifiers: the backbone's stages plus the public models' classifier, and their
registration in timm (``coc_tiny``, ``coc_tiny2``, ``coc_tiny_plain``, ``coc_small``, ``coc_medium``,
``coc_base_dim64``, ``coc_base_dim96``), so that

    timm.create_model('coc_small', pretrained=False, checkpoint_path='coc_small.pth.tar')

loads a public ImageNet checkpoint with its head (state-dict keys ``patch_embed``, ``network``, ``norm``,
``head``, as published). The blocks and the op are those of :class:`~coc_det.backbone.ContextCluster`; the
classifier adds only ``norm`` (GroupNorm on the last stage) and ``head`` (Linear on its spatial mean).
"""
import numpy as np
import torch
import torch.nn as nn

from .backbone import ARCH_SETTINGS, ContextCluster, GroupNorm, size_divisor

#: timm names -> arch (``coc_<arch>``)
TIMM_MODELS = {f"coc_{arch}": arch for arch in ARCH_SETTINGS}

#: the public models' evaluation transform (timm ``pretrained_cfg``): 224 px, crop 0.9, bicubic. The public code
#: defines crop 0.9 ('model_small') and 0.95 ('model_medium') but gives every model, medium included,
#: 'model_small': its published accuracies were measured with 0.9.
PRETRAINED_CFG = dict(num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.9,
                      interpolation="bicubic", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      first_conv="patch_embed.proj", classifier="head", license="mit",
                      origin_url="https://github.com/ma-xu/Context-Cluster", paper_ids="arXiv:2303.01494")

#: ``global_pool`` values: ``'avg'`` (spatial mean, the public models) or ``''`` (no pooling: the normed
#: last-stage map, or with a head its logits at every position, the head's Linear applied per pixel)
GLOBAL_POOLS = ("avg", "")


def pretrained_cfg(arch: str) -> dict:
    """The timm ``pretrained_cfg`` of ``coc_<arch>``: :data:`PRETRAINED_CFG` with the arch's smallest input
    (its size divisor: 32, or 224 for tiny2's folds of 7)."""
    side = size_divisor(ARCH_SETTINGS[arch]["folds"])
    return dict(PRETRAINED_CFG, min_input_size=(3, side, side))


def _take_indices(n: int, indices) -> tuple[list, int]:
    """timm's index rule: None -> all n stages, int k -> the last k, a sequence -> those (negative from the
    end). Returns (sorted absolute indices, the largest)."""
    if indices is None:
        indices = n
    if isinstance(indices, (bool, np.bool_)) or not isinstance(indices, (int, np.integer, list, tuple)):
        raise TypeError(f"indices must be None, an int (the last k stages) or a list/tuple of stage indices, "
                        f"got {type(indices).__name__} {indices!r}")
    if isinstance(indices, (int, np.integer)):
        indices = int(indices)
        if not 0 < indices <= n:
            raise ValueError(f"take the last k stages with 1 <= k <= {n}, got {indices}")
        take = list(range(n - indices, n))
    else:
        bad = [i for i in indices if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
        if bad:
            raise TypeError(f"stage indices must be ints, got {bad[0]!r} in {list(indices)}")
        take = [int(i) + n if i < 0 else int(i) for i in indices]
        if not take or any(not 0 <= i < n for i in take):
            raise ValueError(f"stage indices {list(indices)} out of range for {n} stages")
    return sorted(set(take)), max(take)


class ContextClusterClassifier(ContextCluster):
    """``ContextCluster`` stages -> GroupNorm -> global average -> Linear. ``[B, 3, H, W] -> [B, num_classes]``.

    Takes the backbone's arguments (``arch``, ``proposal``, ``fold``, ``mixer_impl``, ``denominator``,
    ``drop_path_rate``, ``with_cp``...) except ``out_indices``; ``num_classes=0`` gives pooled features,
    ``num_classes=0, global_pool=''`` the normed last-stage map (``global_pool=''`` with a head: logits
    ``[B, num_classes, H/32, W/32]``, the head per position). ``drop_rate`` is dropout before the head.

    timm's model interface: ``forward_features`` / ``forward_head(pre_logits=)``, ``get_classifier`` /
    ``reset_classifier``, ``forward_intermediates`` / ``prune_intermediate_layers`` (used by
    ``features_only=True``), ``set_grad_checkpointing``, ``feature_info``, ``num_features``, ``pretrained_cfg``.
    """

    def __init__(self, arch="small", num_classes: int = 1000, drop_rate: float = 0.0, in_chans: int = 3,
                 global_pool: str = "avg", **kwargs):
        if in_chans != 3:
            raise ValueError(f"Context Cluster models take RGB images (in_chans=3), got in_chans={in_chans}")
        if "out_indices" in kwargs:
            raise ValueError("out_indices chooses feature maps: timm.create_model(name, features_only=True, "
                             "out_indices=...) or model.forward_intermediates(x, indices=...); for detection use "
                             "coc_det.ContextCluster")
        if "init_cfg" in kwargs:
            raise ValueError("init_cfg is a backbone argument; classifiers load whole checkpoints "
                             "(timm.create_model(..., checkpoint_path=) or load_classifier_checkpoint)")
        super().__init__(arch=arch, out_indices=(), **kwargs)
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = self.embed_dims[-1]
        self.drop_rate = drop_rate
        self.feature_info = [dict(num_chs=c, reduction=4 * 2 ** i, module=f"network.{2 * i}")
                             for i, c in enumerate(self.embed_dims)]
        self.norm = GroupNorm(self.num_features, device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        self.reset_classifier(num_classes, global_pool)
        self.pretrained_cfg = self.default_cfg = dict(pretrained_cfg(arch) if isinstance(arch, str) else
                                                      PRETRAINED_CFG, num_classes=num_classes)

    # the timm model interface
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None):
        """A new (randomly initialised) ``Linear(num_features, num_classes)`` head; 0 removes it.
        ``global_pool``: ``'avg'`` or ``''`` (no pooling, only without a head); None keeps the current."""
        global_pool = getattr(self, "global_pool", "avg") if global_pool is None else global_pool
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.num_classes, self.global_pool = num_classes, global_pool
        like = next(self.parameters(), None)  # the new head where (and in the dtype) the model's weights are
        dd = dict(device=like.device, dtype=like.dtype) if like is not None else {}
        self.head = nn.Linear(self.num_features, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_linear)
        self.head.train(self.training)

    def set_grad_checkpointing(self, enable: bool = True):
        """Activation checkpointing of every block in training (the backbone's ``with_cp``)."""
        self.with_cp = enable

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C_last, H/32, W/32]`` (after the final norm)."""
        return self.norm(self.forward_stages(x)[-1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w] -> [B, num_classes]`` (``[B, C]`` with ``pre_logits``); with ``global_pool=''``
        unpooled: ``[B, num_classes, h, w]`` (``[B, C, h, w]``)."""
        if self.global_pool == "avg":
            x = x.mean((-2, -1))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        if pre_logits:
            return x
        if self.global_pool == "":  # unpooled: the head's Linear at every position
            return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's feature API: the outputs of the stages in ``indices`` (None: all; int k: the last k; a list,
        negative from the end), each ``[B, embed_dims[i], H/2**(i+2), W/2**(i+2)]``. ``norm`` applies the final
        norm to the last stage's; ``stop_early`` skips the stages after the last one taken. Returns the list,
        or ``(forward_features(x), list)`` unless ``intermediates_only``. Runs eagerly (not through ``compile``).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"Context Cluster feature maps are NCHW, got output_fmt={output_fmt!r}")
        n = len(self.network) // 2 + 1
        take, last = _take_indices(n, indices)
        self._check_input(x)
        feats = self._stages(x, last if stop_early else None)
        inter = [self.norm(feats[i]) if norm and i == n - 1 else feats[i] for i in take]
        if intermediates_only:
            return inter
        return (self.norm(feats[-1]) if len(feats) == n else feats[-1]), inter

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list:
        """Drop the stages after the last of ``indices`` (and the norm / head: see timm); returns the indices."""
        n = len(self.network) // 2 + 1
        take, last = _take_indices(n, indices)
        self.network = self.network[:2 * last + 1]
        if prune_norm or last < n - 1:
            self.norm = nn.Identity()
        if last < n - 1:
            self.num_features = self.head_hidden_size = self.embed_dims[last]
        if prune_head or last < n - 1:
            self.reset_classifier(0, "")
        return take

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


def filter_pretrained(state: dict, model: ContextClusterClassifier) -> dict:
    """timm's ``pretrained_filter_fn``: the weights timm loads into a ``coc_*`` model. A detector's or
    segmentor's checkpoint (keys under ``backbone.``) gives its backbone's stages (its output norms are not
    the classifier's, and it has no classifier ``norm``/``head``: those keep their initial values, as the
    features-only model does not use them). Either way every weight of the stages must be there with its shape:
    with ``features_only`` timm loads non-strictly, and a checkpoint none of whose keys fit would otherwise
    leave the model random behind a warning."""
    from .checkpoint import CheckpointError, compare_state_dicts
    own = model.state_dict()
    detector = any(k.startswith("backbone.") for k in state)
    if detector:
        state = {k[len("backbone."):]: v for k, v in state.items()
                 if k.startswith("backbone.") and k[len("backbone."):] in own}
    missing, _unexpected, wrong = compare_state_dicts(own, state)
    body = [k for k in missing if k.split(".")[0] not in ("norm", "head")]
    if body or wrong:
        what = f"{len(body)} of its {len(own)} weights are missing (e.g. {body[:3]})" if body \
            else f"{len(wrong)} weights differ in shape (e.g. {wrong[:3]})"
        raise CheckpointError(f"the pretrained weights do not fit {type(model).__name__}"
                              f": {what}; keys given: {list(state)[:3]}")
    return state


def create_classifier(name: str, checkpoint: str | None = None, **kwargs) -> ContextClusterClassifier:
    """``coc_<arch>`` by name, optionally with a checkpoint (without timm)."""
    if name not in TIMM_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(TIMM_MODELS)}")
    model = ContextClusterClassifier(TIMM_MODELS[name], **kwargs)
    if checkpoint:
        load_classifier_checkpoint(model, checkpoint)
    return model


def _register_timm():
    """Register every ``coc_<arch>`` as a timm model (where timm is installed), built by timm's
    ``build_model_with_cfg``: its ``pretrained_cfg`` from :func:`pretrained_cfg`, and ``features_only=True``
    (``out_indices``, ``feature_info.channels()/reduction()``) through :meth:`forward_intermediates`."""
    from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
    from timm.models._registry import get_pretrained_cfg

    globals()["default_cfgs"] = generate_default_cfgs(
        {name: pretrained_cfg(arch) for name, arch in TIMM_MODELS.items()})

    def entrypoint(name, arch):
        def fn(pretrained: bool = False, **kwargs):
            overlay = kwargs.get("pretrained_cfg_overlay") or {}
            if pretrained and not (overlay.get("file") or overlay.get("state_dict") is not None
                                   or get_pretrained_cfg(name).has_weights):
                raise ValueError(f"{name}: no download location is registered for the public weights; pass "
                                 "pretrained=False, checkpoint_path=<the published .pth.tar>, or (also with "
                                 "features_only=True) pretrained=True, pretrained_cfg_overlay=dict(file=<it>)")
            return build_model_with_cfg(ContextClusterClassifier, name, pretrained, arch=arch,
                                        pretrained_filter_fn=filter_pretrained,
                                        feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"), **kwargs)
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
